"""How `nldsl train` takes its steps: the learning rate and its schedule (`--lr`,
`--lr-schedule`, `--warmup`), gradient clipping (`--grad-clip`) and accumulation
(`--accumulate`). Each is the flag's value, else the spec's setting of that name
(`warmup`, `grad_clip`, `accumulate`: settings are numbers, so the schedule's kind is a
flag only), else off. A run's checkpoint keeps them with its scheduler's state, and a
resumed run goes on with them (docs/training.md, "Learning rate, clipping and
accumulation").
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import torch

from .compiler.check.settings import training_value
from .run import RunError
from .vocab import TRAINING_SETTINGS

SCHEDULES = ("constant", "cosine", "linear")
FLAGS = {"lr": "--lr", "lr_schedule": "--lr-schedule", "warmup": "--warmup", "grad_clip": "--grad-clip",
         "accumulate": "--accumulate"}
SCHEDULE = ("lr", "lr_schedule", "warmup")  # what a resumed run keeps; clipping and accumulation may change


@dataclass(frozen=True)
class Training:
    lr: float | None = None  # the largest optimizer line's lr (the others keep their ratio to it); None: the spec's
    lr_schedule: str = "constant"
    warmup: int = 0  # steps of linear warmup
    grad_clip: float | None = None  # the largest norm of all parameters' gradient
    accumulate: int = 1  # micro-batches a step's batch is split into
    steps: int = 0  # where cosine and linear reach 0: the run's --steps

    def scheduled(self) -> bool:
        """Whether the learning rate is not the spec's, unchanged."""
        return self.lr is not None or self.lr_schedule != "constant" or self.warmup > 0

    def factor(self, done: int) -> float:
        """The learning rate of step `done + 1`, relative to the peak: (done + 1) / warmup
        during the warmup, then 1 (constant), or from 1 after the warmup down to 0 at step
        `steps + 1` (cosine, linear), so that every step of the run trains."""
        if done < self.warmup:
            return (done + 1) / self.warmup
        if self.lr_schedule == "constant" or self.steps <= self.warmup:
            return 1.0
        p = min(1.0, (done - self.warmup) / (self.steps - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * p)) if self.lr_schedule == "cosine" else 1 - p


def check(**given) -> dict:
    """Values given for the flags (None: not given), each checked: one line for a bad one."""
    for key, v in given.items():
        if v is None:
            continue
        if key == "lr":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise RunError(f"--lr {v}: give a positive number, the peak learning rate")
        elif key == "lr_schedule":
            if v not in SCHEDULES:
                raise RunError(f"--lr-schedule {v}: give {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}")
        elif key in FLAGS:
            need = training_value(key, v)
            if need is not None:
                raise RunError(f"{FLAGS[key]} {v}: give {need}")
        else:
            raise TypeError(f"no training option `{key}`")
    return given


def stored(d) -> Training | None:
    """A checkpoint's `training` (None: from before these options), every value checked: a
    run folder may come from anywhere."""
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - {f.name for f in dataclasses.fields(Training)}:
        raise ValueError(f"it is not an object of {', '.join(FLAGS)} and steps")
    steps = d.get("steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps {steps!r} is not a count")
    check(**{k: v for k, v in d.items() if k != "steps"})
    return Training(**d)


def options(given: dict, settings: dict, steps: int, resumed: Training | None = None) -> Training:
    """The run's options: those given, else (a resumed run) the checkpoint's, else the spec's
    settings. A resumed run keeps its schedule: asking for another is a mistake."""
    chosen = {k: v for k, v in given.items() if v is not None}
    if resumed is not None:
        for key in SCHEDULE:
            if key in chosen and chosen[key] != getattr(resumed, key):
                raise RunError(f"the run was trained with {FLAGS[key]} {getattr(resumed, key)}, not {chosen[key]}: "
                               f"--resume keeps it (leave {FLAGS[key]} out)")
        base = resumed
    else:
        base = Training(**{k: settings[k] for k in TRAINING_SETTINGS if k in settings})
    values = {**dataclasses.asdict(base), **chosen, "steps": steps}
    for key, (kind, _) in TRAINING_SETTINGS.items():  # a spec's settings are floats: 2.0 micro-batches is 2
        if values[key] is not None:
            values[key] = kind(values[key])
    out = Training(**values)
    batch = int(settings.get("batch", 1))
    if batch % out.accumulate:
        raise RunError(f"accumulate {out.accumulate} does not divide the batch of {batch} sequences: a step's "
                       f"micro-batches must be equal")
    if resumed is not None and out.lr_schedule != "constant" and resumed.steps != steps:
        print(f"note: the {out.lr_schedule} schedule now ends at step {steps}, not {resumed.steps}: the learning "
              f"rate follows the new one from here", file=sys.stderr)
    return out


def scheduler(optimizer: torch.optim.Optimizer, t: Training) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The run's scheduler over `optimizer`, whose groups' `lr` it scales so that the largest
    is `t.lr` (if given) and then sets at every step: base lr × `t.factor`. None where the
    run keeps the spec's rate."""
    if not t.scheduled():
        return None
    groups = optimizer.param_groups
    if not all("lr" in g for g in groups):
        raise RunError("the optimizer has no hyperparameter `lr` in all its groups: --lr, --lr-schedule and "
                       "--warmup set one")
    if t.lr is not None:
        scale = t.lr / max(g["lr"] for g in groups)
        for g in groups:
            g["lr"] = g["lr"] * scale
    return torch.optim.lr_scheduler.LambdaLR(optimizer, t.factor)


def restore(scheduler, state: dict | None, step: int, where) -> None:
    """The scheduler state of the checkpoint in `where`, made by a scheduler like this one at
    `step`; the optimizer's state (which holds the groups' lr) is loaded before it, as torch
    asks."""
    if scheduler is None or state is None:
        return
    if not _like(state, scheduler.state_dict()) or state["last_epoch"] != step:
        raise RunError(f"the checkpoint in {where} does not fit this run: its scheduler state is not that of a "
                       f"learning-rate schedule at step {step}")
    scheduler.load_state_dict(state)


def _like(saved, fresh) -> bool:
    """Whether `saved` has the shape of `fresh`: the same keys, list lengths and kinds of values."""
    if isinstance(fresh, dict):
        return isinstance(saved, dict) and saved.keys() == fresh.keys() and all(_like(saved[k], fresh[k]) for k in fresh)
    if isinstance(fresh, list):
        return isinstance(saved, list) and len(saved) == len(fresh) and all(map(_like, saved, fresh))
    if isinstance(fresh, float):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    return type(saved) is type(fresh)
