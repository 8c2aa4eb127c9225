"""`continual`: stages of data trained one after another on one model, and what each costs the others.

A stage is a domain: `prose` (Python's help text, the `pydoc` data), `python` (source
files of Python's own standard library), `man` (manual pages of section 1, as their
roff source) or `digits:CLASSES` (scikit-learn's 8×8 handwritten digits of those
classes, e.g. `digits:01`, as token sequences: see `Digits`). A text domain's text is
the last `--stage-bytes` bytes of its files in sorted order (pydoc's help topics in key
order), split as every data set is (nldsl/data.py: the last 10% held out) and
tokenized with the run's tokenizer. Taking the end keeps `prose`'s held-out part
inside pydoc's own held-out part, which a run trained on pydoc has never seen.

The model of the run is trained on `--stages` in turn, `--stage-steps` steps each, and
after each stage (and once before the first) scored on every stage's held-out data:
the mean next-token loss over the scored targets (every token of text, the label of a
digit) and the share of them whose greedy prediction is right. Row i of the stage ×
task matrix is the model after stage i, column j task j, trained at stage j.
`transfer` reduces a matrix to average forgetting (Chaudhry et al. 2018) and backward
transfer (Lopez-Paz & Ranzato 2017, GEM) over the tasks before the last.

Training is the project's own, not a copy of it: the spec's outer optimizer
(`configure_optimizer`), its learning-rate settings (nldsl/training.py, as `nldsl
train` takes them) and `nldsl train`'s step (`train._train_step`: precision, gradient
scaling, accumulation, clipping, a non-finite loss refused), over a stream of batches
that changes domain every `--stage-steps` steps: the run `nldsl train --steps S·N`
would make on such data, with one optimizer and one schedule for the whole sequence.
`train()` itself is not called per stage: it builds its model from a spec and resumes
only on the data a run began with, while a stage starts from the weights the last one
left. Each stage's batches are drawn like any corpus's (a function of a seed and the
step), its seed a function of `--seed` and the stage's place in the sequence. The
run's weights are put back afterwards: the checkpoint is never changed.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import torch

from ..data import HELDOUT, PYDOC, Corpus, DataError, read_bytes
from ..run import IGNORE, RunError, grad_scaler, model_device
from ..tokenizer import BYTE_TOKENIZER
from . import Context, Option, Task, heatmap, register

STAGES = ("prose", "python", "man")
STAGE_STEPS = 100
STAGE_BYTES = 1 << 18
MAN = Path("/usr/share/man/man1")
MAX_PAGE_BYTES = 1 << 22  # a decompressed manual page is read no further
PIXELS = 64  # an 8×8 digit


class Absent(Exception):
    """A domain this machine has no text for: its stage is skipped with a note."""


def pydoc_parts():
    yield read_bytes(PYDOC)


def python_parts():
    for path in sorted(Path(os.__file__).parent.glob("*.py"), reverse=True):
        if path.is_file():
            yield path.read_bytes()


def man_parts():
    for path in sorted(MAN.glob("*.gz"), reverse=True):
        try:
            with gzip.open(path) as page:
                yield page.read(MAX_PAGE_BYTES)
        except (OSError, EOFError):  # a dangling link or a damaged page: the next one
            continue


# each domain's parts from the last in sorted order on, and what they are (where they are read when asked)
DOMAINS = {"prose": (pydoc_parts, lambda: "Python's help topics (pydoc)"),
           "python": (python_parts, lambda: f"the standard library's *.py ({Path(os.__file__).parent})"),
           "man": (man_parts, lambda: f"manual pages, roff source ({MAN}/*.gz)")}


def tail(parts, budget: int) -> bytes:
    """The last `budget` bytes of the concatenation of the parts, given from the last one back."""
    taken, size = [], 0
    for part in parts:
        if size >= budget:
            break
        taken.append(part)
        size += len(part)
    return b"".join(reversed(taken))[-budget:] if budget else b""


class Digits:
    """The images of some classes of scikit-learn's 8×8 handwritten digits (1,797 images, shipped
    with it) as token sequences: the 64 pixel intensities (0 to 16) are the input tokens and
    the prediction at the last pixel is scored against the label's token (`0` to `9`, the
    bytes 48 to 57); every other target is IGNORE. The last 10% of each class's images (in
    the data set's order) are held out. Classes trained in separate stages make the
    class-incremental setting: the label is predicted among every token, never among the
    stage's classes alone."""

    def __init__(self, classes: list[int], tokenizer):
        if tokenizer is not BYTE_TOKENIZER:
            raise RunError(f"the digits stages are made of byte tokens: they need a byte-level run, not one of the "
                           f"tokenizer {tokenizer.name}")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise RunError("the digits stages need scikit-learn (pip install scikit-learn)") from None
        data = load_digits()
        self.pixels = torch.from_numpy(data.data.astype("int64"))
        self.labels = torch.from_numpy(data.target.astype("int64")) + ord("0")
        train, heldout = [], []
        for c in classes:
            rows = (self.labels == ord("0") + c).nonzero().flatten()
            cut = len(rows) - int(len(rows) * HELDOUT)
            train.append(rows[:cut])
            heldout.append(rows[cut:])
        self.train, self.heldout = torch.cat(train), torch.cat(heldout)
        self.tokenizer = BYTE_TOKENIZER
        chosen = torch.cat([self.train, self.heldout])
        self.sha256 = hashlib.sha256(torch.cat([self.pixels[chosen].flatten(), self.labels[chosen]])
                                     .numpy().tobytes()).hexdigest()

    def windows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.full((len(rows), PIXELS), IGNORE, dtype=torch.long)
        y[:, -1] = self.labels[rows]
        return self.pixels[rows], y

    def require(self, context: int) -> None:
        if context < PIXELS:
            raise DataError(f"a digit is {PIXELS} tokens: the digits stages need a context of {PIXELS} or more, "
                            f"not {context}")

    def batch(self, seed: int, step: int, batch: int, context: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return self.windows(self.train[torch.randint(len(self.train), (batch,), generator=g)])

    def heldout_windows(self, n: int, context: int):
        """Every held-out image, whatever `n`: the set is small and fixed."""
        return self.windows(self.heldout)


def parse_stages(text: str | None) -> list[str]:
    names = [s.strip() for s in (text or ",".join(STAGES)).split(",") if s.strip()]
    for name in names:
        kind, _, classes = name.partition(":")
        if kind == "digits" and classes.isdigit() and classes.isascii() and len(set(classes)) == len(classes):
            continue
        if name not in DOMAINS:
            raise RunError(f"--stages: no stage `{name}` (the stages: {', '.join(DOMAINS)}, and digits:CLASSES "
                           f"such as digits:01)")
    if not names:
        raise RunError("--stages: name at least one stage, e.g. prose,python")
    if len(set(names)) < len(names):
        raise RunError(f"--stages {text}: each stage once (a stage is also a task of the matrix)")
    return names


def stage_data(name: str, tokenizer, budget: int):
    """The data of the stage `name`: a Corpus of its text, or `Digits`. Absent where this
    machine has no text of the domain."""
    kind, _, classes = name.partition(":")
    if kind == "digits":
        return Digits([int(c) for c in classes], tokenizer), f"scikit-learn's 8×8 digits of the classes {classes}"
    parts, about = DOMAINS[name]
    raw = tail(parts(), budget)
    if not raw:
        raise Absent(f"no text: {about()} holds none on this machine")
    return Corpus(raw, name, tokenizer), about()


@torch.no_grad()
def measure(ctx: Context, data, batches: int) -> tuple[float, float]:
    """The mean loss (nats per scored target) on `data`'s fixed held-out windows, `batches`
    batches of the model's (a digits stage: every held-out image), and the share of scored
    targets that the greedy prediction gets right."""
    x, y = data.heldout_windows(batches * ctx.batch, ctx.context)
    total, right = 0.0, 0
    for start, logits in ctx.outputs(x):
        yb = y[start:start + logits.shape[0]]
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), yb, reduction="sum",
                                                         ignore_index=IGNORE))
        scored = yb != IGNORE
        right += int((logits[..., :ctx.tokenizer.vocab_size].argmax(-1)[scored] == yb[scored]).sum())
    n = int((y != IGNORE).sum())
    return total / n, right / n


def transfer(matrix: list[list[float | None]], higher_is_better: bool = False) -> dict:
    """Average forgetting and backward transfer of a stage × task matrix (row i: after stage
    i; column j: task j, trained at stage j), over the tasks j before the last, T stages:

    - forgetting of j: how much worse the final row is than the best of rows j … T−2 (after
      j was learnt, before the last stage): final − min for a loss, max − final for an
      accuracy, so that it is positive when the task was forgotten (Chaudhry et al. 2018);
    - backward transfer of j: final − row j (right after learning j), in the metric's own
      terms (Lopez-Paz & Ranzato 2017): positive for a loss, negative for an accuracy,
      when learning later tasks hurt j.

    `average` is the mean of the final row over every task (GEM's ACC, for an accuracy). A task
    with a value missing (None) is left out of the means; None where no task is left."""
    t = len(matrix)
    if any(len(row) != t for row in matrix):
        raise ValueError(f"a stage × task matrix is square, not {t} rows of {[len(r) for r in matrix]}")
    forgetting, backward = [], []
    for j in range(t - 1):
        column = [matrix[i][j] for i in range(j, t)]
        if any(v is None for v in column):
            forgetting.append(None)
            backward.append(None)
            continue
        final, earlier = column[-1], column[:-1]
        forgetting.append(max(earlier) - final if higher_is_better else final - min(earlier))
        backward.append(final - column[0])

    def mean(values):
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None
    return {"average": mean(matrix[-1]) if t else None, "forgetting": mean(forgetting),
            "backward_transfer": mean(backward), "forgetting_by_task": forgetting,
            "backward_transfer_by_task": backward}


@register
class Continual(Task):
    name = "continual"
    summary = "continual learning: stages trained in turn, each stage's held-out loss after each, forgetting and " \
              "backward transfer"
    options = (Option("stages", f"the stages in order: {', '.join(DOMAINS)} or digits:CLASSES such as digits:01 "
                                f"(default {','.join(STAGES)})", str, "NAME,NAME"),
               Option("stage_steps", f"training steps per stage (default {STAGE_STEPS})"),
               Option("stage_bytes", f"bytes of text per text stage (default {STAGE_BYTES})"))

    def evaluate(self, ctx: Context) -> dict:
        from .. import training
        from ..train import _NonFiniteLoss, _nonfinite_errors, _train_step
        names = parse_stages(ctx.option("stages"))
        steps, budget = ctx.option("stage_steps", STAGE_STEPS), ctx.option("stage_bytes", STAGE_BYTES)
        if steps < 0:
            raise RunError(f"--stage-steps {steps}: the number of steps cannot be negative")
        if budget < 1:
            raise RunError(f"--stage-bytes {budget}: give 1 or more")
        stages, data = [], []
        for name in names:
            try:
                corpus, about = stage_data(name, ctx.tokenizer, budget)
            except Absent as e:
                ctx.skip({"stage": name}, str(e))
                continue
            corpus.require(ctx.context)
            data.append(corpus)
            unit = corpus.tokenizer.unit if isinstance(corpus, Corpus) else "image"  # the sizes' unit
            stages.append({"name": name, "data": about, "sha256": corpus.sha256, "unit": unit,
                           "train": len(corpus.train), "heldout": len(corpus.heldout)})
        if not stages:
            raise RunError(f"--stages {','.join(names)}: none of the stages has data on this machine")
        batches = ctx.eval_batches or (ctx.ckpt.eval_batches if ctx.ckpt is not None else 8)

        def every_task() -> tuple[list[float], list[float]]:
            loss, right = zip(*(measure(ctx, d, batches) for d in data))
            return list(loss), list(right)

        model = ctx.model
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the run's weights, put back after
        optimizer = model.configure_optimizer()
        plan = training.options({}, model.settings, steps * len(data))  # the spec's lr, warmup, clipping
        scheduler = training.scheduler(optimizer, plan)
        scaler = grad_scaler(model_device(model), ctx.precision)
        start_loss, start_accuracy = every_task()
        loss, accuracy = [], []
        try:
            for i, (stage, corpus) in enumerate(zip(stages, data)):
                # the stage's own batches, from --seed and its place; 31 bits, for batch() to mix with the step
                seed = ctx.generator(i).initial_seed() % (1 << 31)
                model.train()
                for step in range(1, steps + 1):
                    x, y = corpus.batch(seed, step, ctx.batch, ctx.context)
                    try:
                        _train_step(model, optimizer, x, y, ctx.precision, scaler, plan.accumulate, plan.grad_clip)
                    except (_NonFiniteLoss, *_nonfinite_errors()) as e:
                        raise RunError(f"training diverged at step {step} of the stage {stage['name']}: {e}") from None
                    if scheduler is not None:
                        scheduler.step()
                model.eval()
                row_loss, row_accuracy = every_task()
                loss.append(row_loss)
                accuracy.append(row_accuracy)
        finally:
            model.load_state_dict(kept)
            model.eval()
        return {"metric": "mean loss per scored target (nats), and the share of them predicted right (greedy)",
                "stage_steps": steps, "stage_bytes": budget, "eval_batches": batches, "stages": stages,
                "start_loss": start_loss, "start_accuracy": start_accuracy, "loss": loss, "accuracy": accuracy,
                "transfer": {"loss": transfer(loss), "accuracy": transfer(accuracy, higher_is_better=True)}}

    def scores(self, record: dict) -> dict[str, float | None]:
        """In loss terms: the mean over the tasks after the last stage, average forgetting and
        backward transfer (None with a single stage)."""
        t = record["transfer"]["loss"]
        return {"final loss": t["average"], "forgetting": t["forgetting"], "backward transfer": t["backward_transfer"]}

    def lines(self, record: dict) -> list[str]:
        names = [s["name"] for s in record["stages"]]
        width = max(8, *(len(n) for n in names))
        head = "after \\ loss on".ljust(width + 8) + " ".join(f"{n:>{width}}" for n in names)
        rows = [("start".ljust(width + 8), record["start_loss"])] + \
               [(n.ljust(width + 8), row) for n, row in zip(names, record["loss"])]
        out = [f"continual: {len(names)} stages of {record['stage_steps']} steps, held-out loss (nats per scored "
               f"target) after each:", head,
               *(label + " ".join(f"{v:>{width}.4f}" for v in row) for label, row in rows)]
        t = record["transfer"]["loss"]
        if t["forgetting"] is not None:
            out.append(f"average forgetting {t['forgetting']:+.4f} nats, backward transfer "
                       f"{t['backward_transfer']:+.4f} nats (> 0: the earlier stages got worse)")
        final = " ".join(f"{n} {v:.3f}" for n, v in zip(names, record["accuracy"][-1]))
        out.append(f"accuracy after the last stage (greedy, of the scored targets): {final}")
        return out

    def plot(self, record: dict, fig) -> None:
        names = [s["name"] for s in record["stages"]]
        rows = [record["start_loss"], *record["loss"]]
        lo, hi = min(v for row in rows for v in row), max(v for row in rows for v in row)
        left, right = fig.subplots(1, 2, width_ratios=(3, 2))
        heatmap(fig, rows, ["start", *(f"after {n}" for n in names)], names, "model", "held-out loss on",
                "loss after each stage", label="loss (nats)", limits=(lo, hi if hi > lo else lo + 1), ax=left)
        left.tick_params(axis="x", labelrotation=30)
        for j, name in enumerate(names):
            right.plot(range(len(rows)), [row[j] for row in rows], "o-", label=name)
        right.set_xticks(range(len(rows)), ["start", *names], rotation=30)
        right.set(xlabel="after stage", ylabel="held-out loss (nats)",
                  title=f"{record.get('model') or 'model'}: continual")
        right.grid(alpha=0.3)
        right.legend(fontsize="small")
