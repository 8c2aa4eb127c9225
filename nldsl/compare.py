"""`nldsl compare`: specs trained on the same tokens and evaluated on the same tasks
(docs/evaluation.md, "Comparisons").

A comparison is a list of variants, each a spec with settings of its own
(`[NAME=]SPEC[,KEY=VALUE...]`), so an ablation is a variant rather than a copy of a
file. Before anything trains:

- **parameters are matched**: every variant's count of outer parameters (compiler/stats,
  from the checked spec, no torch model built) must be within `tolerance` of the target,
  `--params N` or else the first variant's. A variant outside it has its `dim` searched
  (multiples of its `heads`), and its `depth` too where dim alone cannot reach the
  target; a setting the variant gives itself is never changed;
- **tokens are equal**: each run trains `budget` tokens, rounded down to a multiple of
  every variant's step (batch × context), so that every variant takes a whole number of
  steps over the same number of tokens; held-out evaluations fall at the same token
  counts in every run;
- **data order is the seed's**: a run of seed s draws its batches from (s, step)
  (nldsl/data.py), the same for every variant.

Each (variant, seed, data) is a run folder of its own under `out/runs/`, trained by
`nldsl.train` and evaluated by the task registry (nldsl/tasks): one run on the text data
for the tasks that read it, one on each task's own synthetic data. Running the same
comparison again continues where it stopped: a finished run is not trained again (its
checkpoint is checked to be this comparison's), an interrupted one resumes from its
checkpoint, and an evaluation whose JSON is there for the run's last step, seed and
options is read rather than run. The report (report.md, compare.json, loss.png and each
task's comparison plot) is written from the run folders at the end.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .data import PYDOC
from .files import FileError, atomic_write, read_limited
from .run import RunError, parse_overrides, resolve_spec

FORMAT = "nldsl-compare/1"
TOLERANCE = 0.1
SEEDS = 3
EVALS = 10  # held-out evaluations per run, at the same token counts in every run
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
MATCHED = ("dim", "depth")  # the settings matching may change
MAX_DIM = 1 << 16  # the widest dim matching tries
MAX_RECORD_BYTES = 64 << 20


class CompareError(RunError):
    """A mistake in what a comparison was asked: one line, no traceback."""


def number(text: str, flag: str) -> int:
    """A positive whole number as a flag gives it: `2000000`, or with the spec language's
    decimal suffixes, `2M`, `500K`, `1.5G`."""
    scale = {"K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise CompareError(f"{flag} {text}: give a positive whole number, e.g. 2000000 or 2M")
    return int(value)


@dataclass
class Variant:
    """One spec of a comparison, with the settings it trains with."""
    name: str
    spec: str  # FILE[:MODEL] as given
    own: dict  # the settings the variant gives itself: never changed by matching
    settings: dict = field(default_factory=dict)  # every override its runs train with
    matched: dict = field(default_factory=dict)  # what matching changed
    params: int = 0
    batch: int = 0
    context: int = 0
    steps: int = 0

    @property
    def path(self) -> Path:
        return resolve_spec(self.spec)[0]

    @property
    def model(self) -> str | None:
        return resolve_spec(self.spec)[1]

    @property
    def step_tokens(self) -> int:
        return self.batch * self.context


def _items(text: str) -> list[str]:
    """`text` split at the commas outside brackets."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth <= 0:
            out.append(text[start:i])
            start = i + 1
    return out + [text[start:]]


def parse_variant(text: str) -> Variant:
    """`[NAME=]SPEC[,KEY=VALUE...]`: a spec (a file or an example's name, optionally
    FILE:MODEL), named NAME (default: the model's name if given, else the file's), with
    settings or edits of its own (a comma inside brackets is part of an edit's value)."""
    head, *items = _items(text)
    name, eq, spec = head.partition("=")
    if not eq:
        name, spec = None, head
    if not spec.strip():
        raise CompareError(f"variant `{text}`: give a spec, as [NAME=]SPEC[,KEY=VALUE...]")
    for item in items:
        if "=" not in item:
            raise CompareError(f"variant `{text}`: `{item}` is not a setting: write KEY=VALUE, e.g. "
                               f"{head},dim=64")
    try:
        path, model = resolve_spec(spec)
        own = parse_overrides(items) or {}
    except RunError as e:
        raise CompareError(f"variant `{text}`: {e}") from None
    name = name if name is not None else model or path.stem
    if not NAME.fullmatch(name):
        raise CompareError(f"variant `{text}`: the name `{name}` names a folder: use letters, digits, "
                           f"`_`, `.`, `+` and `-`")
    return Variant(name, spec, own)


# --- matching parameters ------------------------------------------------------------------

class Counter:
    """Outer parameters of a variant's model at some settings, from the checked spec
    (compiler/stats), as `nldsl train` would build it: a spec that states no vocab takes
    the data's tokenizer's size."""

    def __init__(self, data: str):
        self.data, self._vocab = data, None

    def vocab(self) -> int:
        if self._vocab is None:
            self._vocab = sources.load(self.data).tokenizer.vocab_size
        return self._vocab

    def spec(self, v: Variant, settings: dict):
        """The checked model spec (NLError for a spec or a setting in error)."""
        from .compiler.driver import check
        from .run import _stated_vocab
        if "vocab" not in settings and _stated_vocab(v.path, v.model) is None:
            settings = {**settings, "vocab": self.vocab()}
        program = check(v.path, **settings)
        models = [m for m in program.models if v.model in (None, m.name)]
        if not models:
            found = ", ".join(f"`{m.name}`" for m in program.models) or "none"
            raise CompareError(f"variant {v.name}: {v.path} has no model{f' `{v.model}`' if v.model else ''} "
                               f"(its models: {found})")
        return models[0]

    def count(self, v: Variant, settings: dict) -> int:
        from .compiler import passes
        from .compiler.stats import totals
        return totals(passes.run(self.spec(v, settings)))["params"]

    def trial(self, v: Variant, settings: dict) -> int | None:
        """The count at settings matching tries, or None where the spec refuses them."""
        from .compiler.diagnostics import NLError
        try:
            return self.count(v, settings)
        except NLError:
            return None


def off(n: int, target: int) -> float:
    return (n - target) / target


def closest_dim(counter: Counter, v: Variant, settings: dict, target: int, step: int) -> tuple[int, int] | None:
    """The multiple of `step` as `dim` whose count is closest to `target`, with that count:
    the count grows with dim, so the first dim at or above the target is found by
    doubling and bisection, and it or the one below it is the closest."""
    cache: dict[int, int | None] = {}

    def at(k: int) -> int | None:
        if k not in cache:
            cache[k] = counter.trial(v, {**settings, "dim": k * step})
        return cache[k]

    def valid(k: int, direction: int) -> int | None:
        """k, or the nearest multiple in `direction` the spec accepts (a few tried)."""
        for j in range(k, k + 8 * direction, direction):
            if 1 <= j <= MAX_DIM // step and at(j) is not None:
                return j
        return None

    lo, hi = 0, None  # at(lo) < target (0: nothing below), at(hi) >= target
    k = valid(1, 1)
    if k is None:
        return None
    while hi is None:
        if at(k) >= target:
            hi = k
        else:
            lo = k
            nxt = valid(2 * k, 1)
            if nxt is None or k >= MAX_DIM // step:
                return k * step, at(k)  # the largest dim tried falls short
            k = nxt
    while hi - lo > 1:
        mid = valid((lo + hi) // 2, 1)
        if mid is None or mid >= hi:
            break
        lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
    best = [j for j in (lo, hi) if j >= 1 and at(j) is not None]
    k = min(best, key=lambda j: (abs(at(j) - target), j))
    return k * step, at(k)



def match(variants: list[Variant], counter: Counter, target: int | None, tolerance: float) -> int:
    """Set each variant's `settings`, `matched` and `params` so that its count is within
    `tolerance` of `target` (None: the first variant's, which is kept as it is); returns
    the target."""
    for v in variants:
        own = counter.spec(v, v.settings).settings  # a mistake in the spec or a setting: its diagnostics
        v.params = counter.count(v, v.settings)
        if target is None:
            target = v.params
        if abs(off(v.params, target)) > tolerance:
            change, n = search(counter, v, own, target, tolerance)
            if abs(off(n, target)) > tolerance:
                fixed = all(k in v.own for k in MATCHED)
                closest = ", ".join(f"{k} {x}" for k, x in change.items())
                reach = "its dim and depth are its own" if fixed else \
                    f"the closest any dim and depth reach is {n:,} ({off(n, target):+.1%}" + \
                    (f", at {closest})" if closest else ")")
                raise CompareError(f"variant {v.name}: {v.params:,} parameters, {off(v.params, target):+.1%} from "
                                   f"the target {target:,} ({reach}): give a larger --tolerance, another --params, "
                                   f"or settings of its own (NAME=SPEC,dim=N)")
            v.matched, v.settings, v.params = change, {**v.settings, **change}, n
        final = counter.spec(v, v.settings).settings
        v.batch, v.context = int(final["batch"]), int(final["context"])
    return target


def search(counter: Counter, v: Variant, own: dict, target: int, tolerance: float) -> tuple[dict, int]:
    """The change of `dim` (a multiple of `heads`), else of `depth` and `dim`, that brings
    the variant's count within the tolerance, with that count: at its own depth if one
    does, else at the depth nearest it that does, else the closest found. Settings the
    variant gives itself stay."""
    dim, depth, heads = int(own["dim"]), int(own["depth"]), int(own.get("heads", 1))
    step = heads if dim % heads == 0 else 1
    depths = [depth]
    if "depth" not in v.own:
        deeper = counter.trial(v, {**v.settings, "depth": depth + 1})
        if deeper is not None and deeper != v.params:  # the spec's depth changes the model
            depths += sorted(set(range(1, 2 * depth + 3)) - {depth}, key=lambda d: (abs(d - depth), d))
    best = ({}, v.params)
    for d in depths:
        settings = {**v.settings, "depth": d}
        if "dim" in v.own:
            n, at = counter.trial(v, settings), dim
        else:
            got = closest_dim(counter, v, settings, target, step)
            n, at = (got[1], got[0]) if got is not None else (None, dim)
        if n is None:
            continue
        change = {k: x for k, x in (("dim", at), ("depth", d)) if x != int(own[k])}
        if abs(off(n, target)) <= tolerance:
            return change, n
        if abs(off(n, target)) < abs(off(best[1], target)):
            best = (change, n)
    return best


# --- the runs -----------------------------------------------------------------------------

@dataclass
class Run:
    variant: Variant
    seed: int
    data: str
    folder: Path
    tasks: list  # the tasks evaluated on this run


def plan_runs(variants: list[Variant], seeds: int, tasks: list, text: str, out: Path) -> list[Run]:
    """Seed by seed (a comparison stopped early has every variant at the first seeds),
    each variant's run on the text data and on each task's own data."""
    datas: dict[str, list] = {}
    for task in tasks:
        datas.setdefault(text if task.data == PYDOC else task.data, []).append(task)
    runs = []
    for seed in range(seeds):
        for v in variants:
            for data, on in datas.items():
                suffix = "" if data == text else f"-{data}"
                runs.append(Run(v, seed, data, out / "runs" / v.name / f"seed{seed}{suffix}", on))
    return runs


def existing(run: Run, steps: int, spec_text: str):
    """The checkpoint in the run's folder, checked to be of this comparison; None if none."""
    from .train import CHECKPOINT, load_checkpoint
    if not os.path.lexists(run.folder / CHECKPOINT):
        return None
    ckpt = load_checkpoint(run.folder)
    v = run.variant
    key = sources.data_key
    for what, stored, wanted in (("seed", ckpt.seed, run.seed), ("data", key(ckpt.data), key(run.data)),
                                 ("settings", ckpt.overrides, v.settings), ("model", ckpt.model_name, v.model),
                                 ("spec", ckpt.spec_text, spec_text)):
        if stored != wanted:
            said = "the spec's text has changed since" if what == "spec" else \
                f"its {what} are {stored!r}, not {wanted!r}" if what == "settings" else \
                f"its {what} is {stored!r}, not {wanted!r}"
            raise CompareError(f"{run.folder} holds a run of another comparison ({said}): choose another --out, "
                               f"or remove the folder to train it again")
    if ckpt.step > steps:
        raise CompareError(f"{run.folder} is already at step {ckpt.step}, past this budget's {steps} steps: "
                           f"give the budget it was trained with, or choose another --out")
    return ckpt


def train_run(run: Run, steps: int, eval_every: int, eval_batches: int, device: str, precision: str,
              quiet: bool):
    """Train the run up to `steps` (fresh, resumed, or not at all when done); its History."""
    from .train import _read_spec, train
    v = run.variant
    ckpt = existing(run, steps, _read_spec(v.path))
    where = f"{v.name}, seed {run.seed}, {run.data}"
    if ckpt is not None and ckpt.step == steps:
        print(f"{where}: trained ({steps} steps) in {run.folder}")
        return ckpt.history
    print(f"{where}: {'resuming at step ' + str(ckpt.step) if ckpt else 'training'} up to step {steps} "
          f"into {run.folder}")
    return train(v.spec, data=run.data, steps=steps, out_dir=run.folder, resume=ckpt is not None,
                 overrides=v.settings, seed=run.seed, eval_every=eval_every, eval_batches=eval_batches,
                 ckpt_every=eval_every, sample=0, quiet=quiet, device=device, precision=precision)


def finished(path: Path, run: Run, step: int, options: dict) -> dict | None:
    """The evaluation's record in `path` if it is of this run at `step`, with this seed and
    these options; None if it must be run."""
    from . import tasks
    if not path.is_file():
        return None
    try:
        record = json.loads(read_limited(path, MAX_RECORD_BYTES, "evaluation"))
    except (FileError, ValueError):  # unreadable or not JSON: evaluated again
        return None
    given = {k: x for k, x in options.items() if x is not None}
    same = isinstance(record, dict) and record.get("format") == tasks.FORMAT and record.get("run") == str(run.folder) \
        and record.get("step") == step and record.get("seed") == run.seed and record.get("options") == given
    return record if same else None


def evaluate_run(run: Run, task, step: int, options: dict, device: str, precision: str) -> dict:
    from . import tasks
    path = run.folder / f"eval-{task.name}.json"
    record = finished(path, run, step, options)
    if record is not None:
        print(f"{run.variant.name}, seed {run.seed}: {task.name} evaluated ({path})")
        return record
    return tasks.evaluate_run(task, run.folder, run.folder, seed=run.seed, options=options, device=device,
                              precision=precision)


# --- the comparison -----------------------------------------------------------------------

def compare(variants: list[str], budget: str | int, seeds: int = SEEDS, tasks: str = "lm", out: str | Path | None = None,
            overrides: dict | None = None, params: str | int | None = None, tolerance: float = TOLERANCE,
            options: dict | None = None, data: str | None = None, evals: int = EVALS, eval_batches: int = 8,
            device: str = "auto", precision: str = "fp32", quiet: bool = False,
            command: list[str] | None = None) -> dict:
    """Train each variant (`[NAME=]SPEC[,KEY=VALUE...]`) for `budget` tokens per run at
    matched parameters, `seeds` seeds each, evaluate every run on `tasks` (comma-separated
    names of nldsl/tasks, with `options`: the eval flags, by name, None where not given),
    and write the report into `out`. Returns what compare.json holds."""
    chosen = task_list(tasks)
    options = check_options(chosen, options or {})
    if not isinstance(seeds, int) or seeds < 1:
        raise CompareError(f"--seeds {seeds}: give 1 or more")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise CompareError(f"--tolerance {tolerance}: give a fraction of 0 or more, e.g. 0.1 for ±10%")
    if evals < 0 or eval_batches < 1:
        raise CompareError(f"--evals {evals} --eval-batches {eval_batches}: give 0 or more evaluations of 1 or "
                           f"more batches")
    budget = number(str(budget), "--budget")
    target = number(str(params), "--params") if params is not None else None
    found = [parse_variant(t) for t in variants]
    names = [v.name for v in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CompareError(f"two variants are named {', '.join(twice)}: name them, NAME=SPEC")
    for v in found:
        v.settings = {**(overrides or {}), **v.own}
    text = data or PYDOC
    target = match(found, Counter(text), target, tolerance)
    tokens, every = plan_tokens(found, budget, evals)
    out = Path(out) if out is not None else Path("runs") / f"compare-{'-'.join(names)}"
    print(describe(found, target, tolerance, tokens))
    if tokens < budget:
        print(f"note: --budget {budget:,} rounded down to {tokens:,} tokens, a whole number of steps of every variant")
    plan = plan_runs(found, seeds, chosen, text, out)
    records: dict[int, dict] = {}
    try:
        for i, run in enumerate(plan):
            v = run.variant
            print(f"[{i + 1}/{len(plan)}] ", end="")
            history = train_run(run, v.steps, every // v.step_tokens, eval_batches, device, precision, quiet)
            records[i] = {"history": history, "evals": {
                t.name: evaluate_run(run, t, v.steps, options[t.name], device, precision) for t in run.tasks}}
    except KeyboardInterrupt:
        print(f"\ninterrupted: the same command continues the comparison in {out}", file=sys.stderr)
        raise
    result = summarise(found, plan, records, chosen, config={
        "budget": budget, "tokens": tokens, "seeds": seeds, "tasks": [t.name for t in chosen],
        "options": {t.name: {k: x for k, x in options[t.name].items() if x is not None} for t in chosen},
        "data": text, "target_params": target, "tolerance": tolerance, "evals": evals, "eval_batches": eval_batches,
        "eval_every_tokens": every, "precision": precision, "command": command, **provenance()})
    write_report(out, result, chosen)
    return result


def task_list(text: str) -> list:
    from . import tasks
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CompareError("--tasks: name at least one task")
    unknown = [n for n in names if n not in tasks.TASKS]
    if unknown:
        raise CompareError(f"--tasks {text}: no task {', '.join(unknown)} (the tasks: {', '.join(tasks.TASKS)})")
    return [tasks.TASKS[n] for n in dict.fromkeys(names)]


def check_options(chosen: list, given: dict) -> dict:
    """Each chosen task's options from the eval flags; a flag no chosen task reads is a mistake."""
    from .tasks import all_options
    readers = all_options()
    for name, value in given.items():
        if value is not None and not any(name in {o.name for o in t.options} for t in chosen):
            users = readers[name][1] if name in readers else []
            raise CompareError(f"--{name.replace('_', '-')} is an option of the {' and '.join(users)} task"
                               f"{'s' if len(users) > 1 else ''}, which this comparison does not run")
    return {t.name: {o.name: given.get(o.name) for o in t.options} for t in chosen}


def plan_tokens(variants: list[Variant], budget: int, evals: int) -> tuple[int, int]:
    """The tokens each run trains on (the budget, down to a multiple of every variant's
    step) and the tokens between held-out evaluations (0: at the start and end only);
    sets each variant's steps."""
    unit = 1
    for v in variants:
        unit = math.lcm(unit, v.step_tokens)
    tokens = budget // unit * unit
    if tokens == 0:
        steps = ", ".join(f"{v.name} {v.batch} × {v.context} = {v.step_tokens:,}" for v in variants)
        raise CompareError(f"--budget {budget:,} is too small: the variants' steps (batch × context: {steps}) "
                           f"first add up to equal tokens at {unit:,}")
    for v in variants:
        v.steps = tokens // v.step_tokens
    every = unit * max(1, tokens // unit // evals) if evals else 0
    return tokens, every


def describe(variants: list[Variant], target: int, tolerance: float, tokens: int) -> str:
    rows = [("variant", "spec", "parameters", "vs target", "matched", "steps", "batch × context")]
    for v in variants:
        rows.append((v.name, v.spec, f"{v.params:,}", f"{off(v.params, target):+.1%}",
                     ", ".join(f"{k} {x}" for k, x in v.matched.items()) or "-", f"{v.steps:,}",
                     f"{v.batch} × {v.context}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([f"parameters matched to {target:,} within ±{tolerance:.0%}, {tokens:,} tokens per run:",
                      *lines])


def provenance() -> dict:
    """What produced the numbers: nldsl's and torch's versions, and the commit of the
    checkout nldsl runs from (with `dirty` when it has changes), where it is one."""
    import torch

    from . import __version__
    root = Path(__file__).resolve().parent.parent
    out = {"nldsl": __version__, "torch": torch.__version__, "commit": None}
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=10)
            out["commit"] = head.stdout.strip() + (" (dirty)" if changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# --- the report ---------------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; None for one value) of the seeds' values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def summarise(variants: list[Variant], plan: list[Run], records: dict, chosen: list, config: dict) -> dict:
    runs, table = [], []
    for i, run in enumerate(plan):
        h = records[i]["history"]
        v = run.variant
        runs.append({"variant": v.name, "seed": run.seed, "data": run.data, "folder": str(run.folder),
                     "steps": v.steps, "tokens": v.steps * v.step_tokens, "tokens_per_step": v.step_tokens,
                     "heldout": {str(s): x for s, x in sorted(h.heldout.items())}, "train": h.train,
                     "evals": {name: {"scores": task_scores(chosen, name, r), "record": r}
                               for name, r in records[i]["evals"].items()}})
    measured = {run.data for run in plan if any(t.heldout for t in run.tasks)}  # a task reports that loss
    for v in variants:
        mine = [r for r in runs if r["variant"] == v.name]
        scores: dict[str, dict] = {}
        for data in dict.fromkeys(r["data"] for r in mine if r["data"] not in measured):
            scores[f"held-out loss ({data})"] = spread([r["heldout"][str(r["steps"])] for r in mine
                                                        if r["data"] == data])
        for t in chosen:
            per = [r["evals"][t.name]["scores"] for r in mine if t.name in r["evals"]]
            for key in dict.fromkeys(k for p in per for k in p):
                values = [p[key] for p in per if p.get(key) is not None]
                if values:
                    scores[f"{t.name} {key}"] = spread(values)
        table.append({"variant": v.name, "spec": v.spec, "model": v.model, "settings": v.settings,
                      "matched": v.matched, "params": v.params, "batch": v.batch, "context": v.context,
                      "steps": v.steps, "tokens": v.steps * v.step_tokens, "scores": scores})
    return {"format": FORMAT, "config": config, "variants": table, "runs": runs}


def task_scores(chosen: list, name: str, record: dict) -> dict:
    task = next(t for t in chosen if t.name == name)
    return {k: float(x) for k, x in task.scores(record).items() if x is not None}


def cell(s: dict | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")


def markdown(result: dict, plots: list[str]) -> str:
    c = result["config"]
    columns = list(dict.fromkeys(k for v in result["variants"] for k in v["scores"]))
    head = ["variant", "spec", "parameters", "settings", "steps × tokens", *columns]
    rows = []
    for v in result["variants"]:
        settings = ", ".join(f"{k} {x}" + (" (matched)" if k in v["matched"] else "")
                             for k, x in v["settings"].items()) or "its own"
        rows.append([v["variant"], f"`{v['spec']}`", f"{v['params']:,}", settings,
                     f"{v['steps']:,} × {v['batch'] * v['context']:,}",
                     *(cell(v["scores"].get(k)) for k in columns)])
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i in (0, 1, 3) else "---:"  # numbers right
                                                             for i in range(len(head))) + "|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    per_run = ["| variant | seed | data | folder | held-out loss | " + " | ".join(
        f"{t} {k}" for t in c["tasks"] for k in _keys(result, t)) + " |"]
    per_run.append("|---|---:|---|---|---:|" + "---:|" * (per_run[0].count("|") - 6))
    for r in result["runs"]:
        cells = [f"{r['evals'][t]['scores'][k]:.4f}" if k in r["evals"].get(t, {}).get("scores", {}) else "–"
                 for t in c["tasks"] for k in _keys(result, t)]
        per_run.append(f"| {r['variant']} | {r['seed']} | {r['data']} | `{r['folder']}` | "
                       f"{r['heldout'][str(r['steps'])]:.4f} | " + " | ".join(cells) + " |")
    seeds = c["seeds"]
    lines = [f"# Comparison: {', '.join(v['variant'] for v in result['variants'])}", "",
             f"Each run trained on {c['tokens']:,} tokens of `{c['data']}` (or of its task's own data), the "
             f"parameters matched to {c['target_params']:,} within ±{c['tolerance']:.0%}; seeds 0 to {seeds - 1}, "
             f"each seed drawing the same batches in every variant. Cells are the mean ± the sample standard "
             f"deviation over the {seeds} seed{'s' if seeds > 1 else ''}; losses in nats per token, held-out "
             f"at the end of training.", "", *table, "",
             "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + "; each run's task plots are in its folder.", "",
             "## Runs", "", *per_run, "", "## Configuration", "",
             f"tasks {', '.join(c['tasks'])}; options " + json.dumps(c["options"]) + f"; {c['evals']} held-out "
             f"evaluations of {c['eval_batches']} batch{'es' if c['eval_batches'] > 1 else ''} per run; precision {c['precision']}; nldsl {c['nldsl']}, "
             f"torch {c['torch']}, commit {c['commit'] or 'unknown'}.", ""]
    if c.get("command"):
        lines += ["```sh", shlex.join(c["command"]), "```", ""]
    return "\n".join(lines)


def _keys(result: dict, task: str) -> list[str]:
    return list(dict.fromkeys(k for r in result["runs"] if task in r["evals"] for k in r["evals"][task]["scores"]))


def write_report(out: Path, result: dict, chosen: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = ["loss.png"]
    atomic_write(out / "loss.png", loss_figure(result))
    for task in chosen:
        if task.comparison_plot is None:
            continue
        by_variant = {v["variant"]: [r["evals"][task.name]["record"] for r in result["runs"]
                                     if r["variant"] == v["variant"] and task.name in r["evals"]]
                      for v in result["variants"]}
        name = f"{task.comparison_plot}.png"
        atomic_write(out / name, png(lambda fig: task.plot_comparison(by_variant, fig)))
        plots.append(name)
    atomic_write(out / "compare.json", (json.dumps(result, indent=1) + "\n").encode())
    atomic_write(out / "report.md", markdown(result, plots).encode())
    print(markdown_table(result))
    print(f"wrote {out}/: report.md, compare.json, {', '.join(plots)}")


def markdown_table(result: dict) -> str:
    """The report's first table, for the terminal."""
    text = markdown(result, [])
    start = text.index("| variant")
    return text[start:text.index("\n\n", start)]


def png(draw) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_figure(result: dict) -> bytes:
    """Every run's training loss (thin, a running mean) and held-out loss (points), by
    tokens trained, one panel per data, one colour per variant."""
    datas = list(dict.fromkeys(r["data"] for r in result["runs"]))
    colours = {v["variant"]: f"C{i % 10}" for i, v in enumerate(result["variants"])}

    def draw(fig):
        axes = fig.subplots(1, len(datas), squeeze=False)[0]
        for ax, data in zip(axes, datas):
            labelled = set()
            for r in (r for r in result["runs"] if r["data"] == data):
                per, train = r["tokens_per_step"], r["train"]
                width = max(1, len(train) // 50)
                smooth = [statistics.fmean(train[max(0, i - width + 1):i + 1]) for i in range(len(train))]
                colour = colours[r["variant"]]
                label = None if r["variant"] in labelled else r["variant"]
                labelled.add(r["variant"])
                ax.plot([per * (i + 1) for i in range(len(train))], smooth, color=colour, lw=0.6, alpha=0.45)
                held = sorted((int(s), x) for s, x in r["heldout"].items())
                ax.plot([per * s for s, _ in held], [x for _, x in held], "o-", color=colour, ms=3, lw=1.2,
                        label=label)
            ax.set(xlabel="tokens trained", ylabel="loss (nats per token)", title=f"{data}: train (thin), held-out")
            ax.grid(alpha=0.3)
            ax.legend()
    return png(draw)
