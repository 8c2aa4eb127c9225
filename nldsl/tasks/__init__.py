"""Evaluations of the paper's kind, run by `nldsl eval --task NAME` (docs/evaluation.md).

A task is one module of this package holding one `Task`, registered by name in
`TASKS`: what it measures (`evaluate`, a dict that JSON can hold), how the result is
drawn (`plot`) and said (`lines`), the `nldsl eval` options it reads, and the data a
model is trained on for it (`data`: `pydoc`, or a synthetic set this package makes,
such as `mqar`, which `nldsl train --task NAME` trains on). `run` is the one runner:
it evaluates a model, writes `eval-NAME.json` and `eval-NAME.png` into the run folder
and prints the summary. Every draw of a task comes from a generator seeded by
`--seed` (and the cell it fills), so the same checkpoint and seed give the same file.

A cell a model cannot reach (a length past the `context` of a model with a learned
position table, a length too short for a task's example) is skipped with a one-line
note and recorded in the JSON under `skipped`, never a traceback.
"""
from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import atomic_write
from ..run import RunError, autocast, model_device
from ..tokenizer import BYTE_TOKENIZER, Tokenizer

FORMAT = "nldsl-eval/1"


@dataclass(frozen=True)
class Option:
    """A flag of `nldsl eval` that some tasks read (`--NAME`, argparse's keywords)."""
    name: str
    help: str
    type: type | object = int
    metavar: str = "N"
    choices: tuple | None = None


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RunError(f"`{text}`: give whole numbers separated by commas, e.g. 64,128") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RunError(f"`{text}`: give numbers separated by commas, e.g. 0,0.5,1") from None


# options more than one task reads; each task's own are in its module
LENGTHS = Option("lengths", "context lengths in tokens, e.g. 64,128 (default: per task, from the model's context)",
                 str, "N,N")
SAMPLES = Option("samples", "examples per cell of the grid (default 16)")


@dataclass
class Context:
    """What a task is given: the model (in eval mode), its run, and the options."""
    model: torch.nn.Module
    tokenizer: Tokenizer = BYTE_TOKENIZER
    seed: int = 0
    options: dict = field(default_factory=dict)  # the eval flags the task reads; None where not given
    precision: str = "fp32"
    ckpt: object = None  # the run's Checkpoint, or None for a model built here
    data: str | None = None  # --data
    eval_batches: int | None = None
    skipped: list = field(default_factory=list)

    @property
    def context(self) -> int:
        return int(self.model.settings["context"])

    @property
    def batch(self) -> int:
        return int(self.model.settings["batch"])

    def option(self, name: str, default=None):
        value = self.options.get(name)
        return default if value is None else value

    def skip(self, cell: dict, reason: str) -> None:
        """A cell left out, with why: said once on standard error and kept in the JSON."""
        self.skipped.append({**cell, "reason": reason})
        where = ", ".join(f"{k} {v}" for k, v in cell.items())
        print(f"note: skipped {where}: {reason}", file=sys.stderr)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor):
        """The model's float32 logits for the token windows `x` [B, n], each from fresh fast
        state, a batch of the model's own size at a time: yields (first row, logits on the CPU)."""
        where = model_device(self.model)
        with autocast(where, self.precision):
            for start in range(0, x.shape[0], self.batch):
                yield start, self.model(x[start:start + self.batch].to(where))[0].float().cpu()

    def within(self, length: int, measure, *args):
        """`measure(*args)` on inputs of `length` tokens, or None when the model cannot take
        that many (a position past a learned table's rows, `reaches`): the length is then
        noted as skipped, and the caller leaves the rest of that length out."""
        try:
            return measure(*args)
        except IndexError as e:
            why = reaches(e)
            if why is None:
                raise
            self.skip({"length": length}, f"the model cannot be evaluated past its context {self.context}: {why}")
            return None

    def generator(self, *cell: int) -> torch.Generator:
        """A generator for one cell of a grid: a function of the seed and the cell alone, so
        that adding a length or a depth leaves the other cells' examples as they were."""
        key = self.seed
        for v in cell:
            key = (key * 1_000_003 + int(v)) % (1 << 62)
        return torch.Generator().manual_seed(key)


def reaches(error: BaseException) -> str | None:
    """Why a model cannot run a sequence this long, if that is what `error` says, else None."""
    from ..runtime.errors import PositionError
    return str(error) if isinstance(error, PositionError) else None


class Task:
    """One evaluation. Subclasses set the class attributes and write `evaluate`, `plot`
    and `lines`."""
    name: str
    summary: str  # one line: what it measures
    options: tuple[Option, ...] = ()
    data = "pydoc"  # what a model is trained on for it (`nldsl train --task NAME`, `eval --steps`): nldsl/sources.py
    heldout = False  # whether it reads a run's held-out data (`--data`, `--eval-batches`)
    comparison_plot: str | None = None  # NAME.png of `plot_comparison` in an `nldsl compare` report; None: none

    def evaluate(self, ctx: Context) -> dict:
        raise NotImplementedError

    def plot(self, result: dict, fig) -> None:
        raise NotImplementedError

    def lines(self, result: dict) -> list[str]:
        raise NotImplementedError

    def scores(self, record: dict) -> dict[str, float | None]:
        """The few numbers of a result that `nldsl compare` puts in its table, by name (None
        where a result has none): unless a task says otherwise, its top-level floats."""
        return {k: v for k, v in record.items() if isinstance(v, float) and k not in RECORD}

    def plot_comparison(self, records: dict[str, list[dict]], fig) -> None:
        """Several models' results on one figure (`comparison_plot`): each model's name with
        the records of its seeds."""
        raise NotImplementedError


# the fields `run` writes into every record besides the task's own results
RECORD = ("format", "task", "run", "step", "trained_on", "model", "settings", "seed", "options", "skipped")
TASKS: dict[str, Task] = {}


def register(cls):
    task = cls()
    TASKS[task.name] = task
    return cls


def get(name: str) -> Task:
    if name not in TASKS:
        raise RunError(f"--task {name}: no such task (the tasks: {', '.join(TASKS)})")
    return TASKS[name]


def all_options() -> dict[str, tuple[Option, list[str]]]:
    """Every task's options by name, each with the tasks that read it."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for task in TASKS.values():
        for opt in task.options:
            out.setdefault(opt.name, (opt, []))[1].append(task.name)
    return out


def add_arguments(parser) -> None:
    """The tasks' options as flags of `nldsl eval`, each saying which tasks read it."""
    group = parser.add_argument_group("options of the tasks (docs/evaluation.md)")
    for name, (opt, users) in all_options().items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"task_{name}", type=opt.type, metavar=opt.metavar,
                           choices=opt.choices, help=f"{opt.help} [{', '.join(users)}]")


def given_options(task: Task, args) -> dict:
    """The options of `task` from the parsed flags; a flag of another task is a mistake."""
    mine = {o.name for o in task.options}
    for name, (_, users) in all_options().items():
        if name not in mine and getattr(args, f"task_{name}", None) is not None:
            raise RunError(f"--{name.replace('_', '-')} is an option of the {' and '.join(users)} task"
                           f"{'s' if len(users) > 1 else ''}, not of {task.name}")
    return {name: getattr(args, f"task_{name}", None) for name in mine}


def task_out(file: str, task: str) -> Path:
    """The run folder of FILE for `task`: `runs/<FILE's name>` where the task's data is
    text, `runs/<FILE's name>-TASK` where the task makes its own, so a spec's runs of
    both kinds lie side by side."""
    from ..train import default_out
    out = default_out(str(file).partition(":")[0])
    return out if get(task).data == "pydoc" else out.with_name(f"{out.name}-{task}")


def run(task: Task, ctx: Context, out: Path, about: dict | None = None) -> dict:
    """Evaluate, then write `out/eval-NAME.json` and `out/eval-NAME.png` and print the summary.
    `about` says what was evaluated (the run folder, its step), kept in the JSON."""
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        result = task.evaluate(ctx)
    finally:
        ctx.model.train(was_training)
    record = {"format": FORMAT, "task": task.name, **(about or {}), "model": getattr(ctx.model, "name", None),
              "settings": {k: int(v) if float(v).is_integer() else v for k, v in ctx.model.settings.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)},
              "seed": ctx.seed, "options": {k: v for k, v in ctx.options.items() if v is not None},
              **result, "skipped": ctx.skipped}
    check_finite(record)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"eval-{task.name}.json", out / f"eval-{task.name}.png"
    atomic_write(json_path, (json.dumps(record, indent=1) + "\n").encode())
    atomic_write(png_path, figure(task, record))
    for line in task.lines(record):
        print(line)
    print(f"wrote {json_path}, {png_path}")
    return record


def evaluate_run(task: Task, ckpt_dir: Path, out: Path, *, file=None, seed: int = 0, options: dict | None = None,
                 device: str = "auto", precision: str = "fp32", data: str | None = None,
                 eval_batches: int | None = None) -> dict:
    """`run` on the model of the run folder `ckpt_dir` (built from `file` if given, else from
    the spec its checkpoint holds), with the run's tokenizer: `nldsl eval --task`'s and
    `nldsl compare`'s evaluation of a run."""
    from ..train import load_run, run_tokenizer
    model, ckpt = load_run(ckpt_dir, file, device)
    ctx = Context(model, run_tokenizer(ckpt, ckpt_dir), seed=seed, options=options or {}, precision=precision,
                  ckpt=ckpt, data=data, eval_batches=eval_batches)
    return run(task, ctx, out, about={"run": str(ckpt_dir), "step": ckpt.step, "trained_on": ckpt.data})


def check_finite(obj, where: str = "") -> None:
    """A result holding NaN or Inf is the model's outputs not being finite: one line."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise RunError(f"the evaluation's `{where.lstrip('.')}` is {obj}: the model's outputs are not finite")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def figure(task: Task, record: dict) -> bytes:
    """The task's plot as PNG bytes (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    task.plot(record, fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def heatmap(fig, grid: list[list[float | None]], rows: list, cols: list, row_label: str, col_label: str,
            title: str, label: str = "accuracy", limits: tuple[float, float] = (0, 1), ax=None) -> None:
    """A value per cell (accuracy, 0 to 1, unless `label` and `limits` say otherwise), each
    cell written in; a cell left out is grey. Drawn on `ax`, else on the whole figure."""
    import numpy as np
    ax = ax or fig.add_subplot()
    lo, hi = limits
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    cmap = __import__("matplotlib").colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(values, vmin=lo, vmax=hi, cmap=cmap, aspect="auto", origin="upper")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set(xlabel=col_label, ylabel=row_label, title=title)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            bright = v is not None and (v - lo) > 0.6 * (hi - lo)  # viridis is light at its top
            ax.text(j, i, "–" if v is None else f"{v:.2f}", ha="center", va="center",
                    color="black" if bright else "white" if v is not None else "0.4")
    fig.colorbar(im, ax=ax, label=label)


from . import lm, mqar, niah, continual  # noqa: E402,F401  (each registers its task)
