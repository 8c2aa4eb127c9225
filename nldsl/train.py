"""Train, evaluate and sample byte-level language models compiled from specs.

A run lives in one folder: `model.safetensors` (the weights, the optimizer's state and
the run's metadata, rewritten atomically), `losses.csv`, `loss.png` and `sample.txt`.
`resume` continues from the checkpoint and reproduces the uninterrupted run exactly:
batches are a function of (seed, step) (see data.py) and the checkpoint holds the rest.
Only the interface of `nldsl.compile` is used: `model(tokens, state) -> (logits, state)`,
`model.settings` and `model.configure_optimizer()`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import PYDOC, Corpus, DataError
from .files import atomic_write

CHECKPOINT = "model.safetensors"
FORMAT = "nldsl-run/1"
TEMPERATURE = 0.8  # samples: a little sharper than the model's distribution


class TrainError(Exception):
    """A mistake in what was asked (no checkpoint, an optimizer for a model) or a diverged run."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's or the data's doing: one `error:` line, no traceback."""
    return (TrainError, DataError, *_nonfinite_errors())


def _nonfinite_errors() -> tuple[type[BaseException], ...]:
    """The backend's error for NaN/Inf inside an inner update, where the backend has one."""
    try:
        from .runtime import errors
    except ImportError:
        return ()
    cls = getattr(errors, "NonFiniteError", None)
    return (cls,) if cls is not None else ()


@dataclass
class History:
    train: list[float] = field(default_factory=list)  # train[i]: the loss of step i + 1
    heldout: dict[int, float] = field(default_factory=dict)  # after that many steps


@dataclass
class Checkpoint:
    step: int
    spec_path: str
    spec_text: str
    overrides: dict
    seed: int
    data: str
    eval_batches: int
    history: History
    model: dict[str, torch.Tensor]
    optimizer: dict


def bits(loss: float) -> float:
    """Nats per byte to bits per byte."""
    return loss / math.log(2)


def describe(loss: float) -> str:
    return f"loss {loss:.4f} nats, {bits(loss):.4f} bits/byte"


def parse_overrides(items: list[str] | None) -> dict | None:
    """`--set dim=64` items as settings; None when none were given."""
    if items is None:
        return None
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TrainError(f"--set `{item}`: write a setting as key=value, e.g. --set dim=64")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            try:
                out[key.strip()] = float(value)
            except ValueError:
                raise TrainError(f"--set `{item}`: `{value}` is not a number") from None
    return out


def default_out(spec_path: str | Path) -> Path:
    return Path("runs") / Path(spec_path).stem


# --- the model ---------------------------------------------------------------------

def build(source: str | Path, overrides: dict, seed: int):
    """The first model of a spec (a path or its text), initialised from `seed`."""
    import nldsl
    program = nldsl.check(source, **overrides)  # a spec with errors raises NLError here
    if not program.models:
        where = source if isinstance(source, Path) else "the checkpoint's spec"
        names = ", ".join(f"`{o.name}`" for o in program.optimizers)
        what = f"only the optimizer {names}" if names else "nothing"
        raise TrainError(f"{where} defines {what}, no model: train a model whose `optimizer` line uses it")
    if not hasattr(nldsl, "compile"):
        raise TrainError("this nldsl cannot build models yet: nldsl.compile (the PyTorch backend) is missing")
    torch.manual_seed(seed)
    model = nldsl.compile(source, **overrides)
    if int(model.settings["vocab"]) < 256:
        raise TrainError(f"byte-level training needs vocab 256 or more; `{program.models[0].name}` "
                         f"has vocab {int(model.settings['vocab'])}")
    return model


def _size(model, name: str) -> int:
    return int(model.settings[name])


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _loss(model, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits, _ = model(x.to(_device(model)))  # every window starts fresh
    return F.cross_entropy(logits.flatten(0, 1).float(), y.to(logits.device).flatten(), reduction=reduction)


@torch.no_grad()
def evaluate(model, corpus: Corpus, batches: int) -> float:
    """Mean next-byte loss, in nats, over the same held-out windows every time."""
    if batches < 1:
        raise TrainError(f"evaluation needs at least one held-out batch, not {batches}")
    batch, context = _size(model, "batch"), _size(model, "context")
    x, y = corpus.heldout_windows(batches * batch, context)
    was_training = model.training
    model.eval()
    try:
        total = sum(_loss(model, xb, yb, "sum").item() for xb, yb in zip(x.split(batch), y.split(batch)))
    finally:
        model.train(was_training)
    return total / y.numel()


@torch.no_grad()
def generate(model, prompt: bytes, n: int, temperature: float = TEMPERATURE, top_k: int | None = None,
             seed: int = 0) -> bytes:
    """`n` bytes after `prompt`: the prompt is fed once, then one byte at a time, carrying the
    model's state instead of feeding the context again. Temperature 0 picks the likeliest byte."""
    if not prompt:
        raise TrainError("the prompt is empty: give at least one byte to start from")
    g = torch.Generator().manual_seed(seed)
    device = _device(model)
    logits, state = model(torch.tensor([list(prompt)], device=device))
    out = bytearray()
    while len(out) < n:
        out.append(_pick(logits[0, -1], temperature, top_k, g))
        if len(out) < n:
            logits, state = model(torch.tensor([[out[-1]]], device=device), state=state)
    return bytes(out)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, g: torch.Generator) -> int:
    logits = logits[:256].float().cpu()  # only bytes, whatever the vocab
    if temperature <= 0:
        return int(logits.argmax())
    if top_k:
        kth = torch.topk(logits, min(top_k, len(logits))).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))


# --- checkpoints -------------------------------------------------------------------
# safetensors holds tensors and string metadata. The optimizer's state (nested dicts,
# lists, numbers and tensors) is stored as its tensors under `optimizer.N` and the rest
# as JSON, where {"__tensor__": key}, {"__tuple__": [...]} and {"__items__": [[k, v]...]}
# (a dict whose keys are not all strings, like `state`'s parameter ids) keep their types.

def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy: safetensors refuses views and tensors that share memory."""
    return t.detach().cpu().clone(memory_format=torch.contiguous_format)


def _flatten(obj, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = f"optimizer.{len(tensors)}"
        tensors[key] = _own(obj)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} from the optimizer's state in a checkpoint")


def _unflatten(obj, tensors: dict):
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__items__"]}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def save_checkpoint(out: Path, model, optimizer, step: int, spec_path: Path, spec_text: str,
                    overrides: dict, seed: int, data: str, eval_batches: int, history: History) -> None:
    from safetensors.torch import save
    tensors = {f"model.{k}": _own(v) for k, v in model.state_dict().items()}
    opt = {}
    opt_json = _flatten(optimizer.state_dict(), opt)
    meta = {"format": FORMAT, "step": str(step), "seed": str(seed), "data": data, "eval_batches": str(eval_batches),
            "spec_path": str(spec_path.resolve()), "spec": spec_text,
            "overrides": json.dumps(overrides), "optimizer": json.dumps(opt_json),
            "history": json.dumps({"train": history.train, "heldout": sorted(history.heldout.items())})}
    atomic_write(out / CHECKPOINT, save({**tensors, **opt}, metadata=meta))


def load_checkpoint(out: str | Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"no checkpoint in {out}: {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise TrainError(f"cannot read the checkpoint {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise TrainError(f"{path} is not an nldsl checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    hist = json.loads(meta["history"])
    return Checkpoint(
        step=int(meta["step"]), spec_path=meta["spec_path"], spec_text=meta["spec"],
        overrides=json.loads(meta["overrides"]), seed=int(meta["seed"]), data=meta["data"],
        eval_batches=int(meta.get("eval_batches", 8)),
        history=History(hist["train"], {int(s): v for s, v in hist["heldout"]}),
        model={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer=_unflatten(json.loads(meta["optimizer"]), tensors))


def restore(model, ckpt: Checkpoint, where: str | Path, optimizer=None) -> None:
    """Load a checkpoint's weights (and optimizer state); a model that does not fit is the user's mistake."""
    try:
        model.load_state_dict(ckpt.model)
        if optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError) as e:
        # load_state_dict's message is a header line, then one line per mismatch: show the first
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise TrainError(f"the checkpoint in {where} does not fit this model: {detail[:200]}{more}") from None


def checkpoint_source(ckpt: Checkpoint, spec_path: str | Path | None = None) -> Path | str:
    """What to build a checkpoint's model from: `spec_path` if given, else the spec stored in
    it, read from its file while that is unchanged (so relative imports still resolve)."""
    if spec_path is not None:
        path = Path(spec_path)
        if path.is_file() and path.read_text(encoding="utf-8") != ckpt.spec_text:
            print(f"note: {path} has changed since this checkpoint was trained", file=sys.stderr)
        return path
    stored = Path(ckpt.spec_path)
    if stored.is_file() and stored.read_text(encoding="utf-8") == ckpt.spec_text:
        return stored
    return ckpt.spec_text


def load_run(ckpt_dir: str | Path, spec_path: str | Path | None = None):
    """A trained model and its checkpoint, ready to evaluate or sample."""
    ckpt = load_checkpoint(ckpt_dir)
    model = build(checkpoint_source(ckpt, spec_path), ckpt.overrides, ckpt.seed)
    restore(model, ckpt, ckpt_dir)
    model.eval()
    return model, ckpt


class _NonFiniteLoss(ArithmeticError):
    pass


def _train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One update on one batch; a NaN or Inf loss is refused before it reaches the weights."""
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(model, x, y)
    if not torch.isfinite(loss):
        raise _NonFiniteLoss(f"the loss is {loss.item()}")
    loss.backward()
    optimizer.step()
    return loss.item()


def _agree(ckpt: Checkpoint, seed, data, overrides) -> tuple[int, str, dict]:
    """A resumed run keeps its seed, data and overrides; asking for others is a mistake."""
    for flag, given, stored in (("--seed", seed, ckpt.seed), ("--data", data, ckpt.data),
                                ("--set", overrides, ckpt.overrides)):
        if given is not None and given != stored:
            raise TrainError(f"the run was trained with {flag} {stored!r}, not {given!r}: "
                             f"--resume keeps it (leave {flag} out)")
    return ckpt.seed, ckpt.data, ckpt.overrides


def train(spec_path: str | Path, data: str | None = None, steps: int = 1000, out_dir: str | Path | None = None,
          resume: bool = False, overrides: dict | None = None, seed: int | None = None,
          eval_every: int = 100, eval_batches: int = 8, ckpt_every: int = 100, sample: int = 200,
          quiet: bool = False, on_step=None, compile: bool = False) -> History:
    """Train the first model of `spec_path` on bytes for `steps` steps in all, into `out_dir`.

    `resume` continues the run in `out_dir` from its checkpoint. `on_step(step, loss)` is
    called after every step, once that step's checkpoint (if any) is written. `compile`
    runs the training steps through `torch.compile` (the first step compiles;
    docs/performance.md); evaluation, checkpoints and the sample use the model as is.
    """
    if steps < 0:
        raise TrainError(f"--steps {steps}: the number of steps cannot be negative")
    spec_path = Path(spec_path)
    out = Path(out_dir) if out_dir is not None else default_out(spec_path)
    if resume:
        ckpt = load_checkpoint(out)
        seed, data, overrides = _agree(ckpt, seed, data, overrides)
        start, history = ckpt.step, ckpt.history
        if steps < start:
            raise TrainError(f"the run in {out} is already at step {start}: ask for --steps {start} or more")
    else:
        if (out / CHECKPOINT).exists():
            raise TrainError(f"{out} already holds a run: --resume to continue it, or choose another --out")
        seed, data, overrides = seed if seed is not None else 0, data or PYDOC, overrides or {}
        start, history = 0, History()

    model = build(spec_path, overrides, seed)
    spec_text = spec_path.read_text(encoding="utf-8")
    corpus = Corpus.load(data)
    optimizer = model.configure_optimizer()
    if resume:
        if spec_text != ckpt.spec_text:
            print(f"note: {spec_path} has changed since step {start} of this run", file=sys.stderr)
        restore(model, ckpt, out, optimizer)
    batch, context = _size(model, "batch"), _size(model, "context")
    corpus.require(context)
    model.train()

    def save(step: int) -> None:
        save_checkpoint(out, model, optimizer, step, spec_path, spec_text, overrides, seed, data, eval_batches,
                        history)

    if start not in history.heldout:
        history.heldout[start] = evaluate(model, corpus, eval_batches)
    print(f"held-out at step {start}: {describe(history.heldout[start])}")

    stepper = torch.compile(model) if compile else model  # the same parameters either way
    saved = start if resume else None
    began = time.perf_counter()
    with tqdm(total=steps, initial=start, disable=quiet, unit="step", dynamic_ncols=True) as bar:
        for step in range(start + 1, steps + 1):
            try:
                history.train.append(_train_step(stepper, optimizer, *corpus.batch(seed, step, batch, context)))
            except (_NonFiniteLoss, *_nonfinite_errors()) as e:
                last = f"; the last checkpoint (step {saved}) is in {out}" if saved is not None else ""
                raise TrainError(f"training diverged at step {step}: {e}{last}") from e
            tokens_per_s = (step - start) * batch * context / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix_str(f"loss {history.train[-1]:.3f}, {tokens_per_s:,.0f} tok/s")
            bar.update()
            if eval_every and step % eval_every == 0 and step != steps:
                history.heldout[step] = evaluate(model, corpus, eval_batches)
                tqdm.write(f"held-out at step {step}: {describe(history.heldout[step])}")
            if ckpt_every and step % ckpt_every == 0 and step != steps:
                save(step)
                saved = step
            if on_step is not None:
                on_step(step, history.train[-1])

    if steps not in history.heldout:
        history.heldout[steps] = evaluate(model, corpus, eval_batches)
    save(steps)
    write_losses(out / "losses.csv", history)
    plot_losses(out / "loss.png", history, spec_path.stem)
    first, last = history.heldout[start], history.heldout[steps]
    if start != steps:
        print(f"held-out, step {start} -> {steps}: loss {first:.4f} -> {last:.4f} nats, "
              f"{bits(first):.4f} -> {bits(last):.4f} bits/byte")
    if sample:
        model.eval()
        prompt = corpus.prompt()
        text = (prompt + generate(model, prompt, sample, seed=seed)).decode("utf-8", errors="replace")
        atomic_write(out / "sample.txt", text.encode())
        print(f"sample:\n{text}")
    print(f"wrote {out}/: {CHECKPOINT}, losses.csv, loss.png{', sample.txt' if sample else ''}")
    return history


def write_losses(path: Path, history: History) -> None:
    """One row per step: the training loss of that step, the held-out loss where measured."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "train_loss", "heldout_loss"])
    for step in range(len(history.train) + 1):
        train = history.train[step - 1] if step else ""
        w.writerow([step, train, history.heldout.get(step, "")])
    atomic_write(path, buf.getvalue().encode())


def plot_losses(path: Path, history: History, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(history.train) + 1), history.train, lw=0.8, label="train")
    held = sorted(history.heldout.items())
    ax.plot([s for s, _ in held], [v for _, v in held], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="loss (nats per byte)", title=title)
    ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2))).set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
