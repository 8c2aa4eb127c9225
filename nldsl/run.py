"""One place that builds a run: every command that runs a model (train, eval, generate,
bench, compile) and the benchmarks resolve the spec, read `--set` overrides, pick the
device and the precision, build the model and take its loss here.

- a spec is a path, an example's name (`hope`, `hope.nl`: nldsl's library), either
  with `:MODEL` to pick a model of the file (`resolve_spec`);
- `--device auto|cpu|cuda|cuda:N` (`device`): auto is CUDA when there is one;
- `--precision fp32|bf16|fp16` (`precision`): the forward under `torch.autocast`, fp16
  with a gradient scaler (`grad_scaler`); parameters, optimizer state and every fast
  state stay float32 (docs/performance.md, "Precision").
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .compiler.load import library_root
from .tokenizer import BYTE_TOKENIZER, Tokenizer
from .vocab import SETTINGS

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class RunError(Exception):
    """A mistake in what was asked of a run: one line, no traceback."""


MAX_EDIT = 1000  # characters of an edit's value: an expression, not a file
MAX_CHECKPOINT_BYTES = 64 << 30  # a checkpoint (or an FSDP run's shard of one) is read whole into memory

# `--set` keys that are not model settings, and what to use instead
NOT_SETTINGS = {
    "name": "`nldsl compile --name` picks a model of the file; train uses its first model",
    "source": "the spec is the FILE argument",
    "report": "it names no setting of a model",
    "inner_clip": "use `nldsl train --inner-clip X`, or `build(inner_clip=X)` in a compiled file",
    "fused": "runs take the fused path; `nldsl bench --paths` compares it with the reference",
    "kernels": "runs choose their kernels by device (`nldsl.compile(..., kernels=...)` in Python)",
}


def examples() -> list[str]:
    return sorted(p.stem for p in library_root().glob("*.nl"))


def resolve_spec(spec: str | Path) -> tuple[Path, str | None]:
    """`hope`, `hope.nl`, a path, each optionally `:MODEL` -> (the spec's path, the model's name
    or None for the first). A bare name that is nothing here is looked up in the library;
    anything else is left to the reader of specs to refuse (a folder, a FIFO)."""
    path, _, name = str(spec).partition(":")
    if not os.path.lexists(path):
        shipped = library_root() / (path if path.endswith(".nl") else f"{path}.nl")
        if not (Path(path).name == path and shipped.is_file()):
            raise RunError(f"no spec `{path}`: give a .nl file or one of the examples ({', '.join(examples())})")
        path = str(shipped)
    return Path(path), name or None


def parse_overrides(items: list[str] | None) -> dict | None:
    """`--set dim=64` items as overrides: a number is a setting, text an edit of a level
    (`--set cms1=outer`, `--set "titans.rule=gd(lr: 0.01)"`, compiler/edit.py); None
    when none were given."""
    if items is None:
        return None
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise RunError(f"--set `{item}`: write a setting as key=value, e.g. --set dim=64")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                if key in SETTINGS:
                    raise RunError(f"--set `{item}`: `{value}` is not a number") from None
                out[key] = value
        try:
            check_overrides({key: out[key]})
        except RunError as e:
            raise RunError(f"--set `{item}`: {e}") from None
    return out


def check_overrides(overrides) -> dict:
    """Overrides that can only be model settings or edits: finite numbers or one line of
    text, under names that are not options of how a model runs. (Whether the model has
    such a setting or level is the checker's to say.)"""
    if not isinstance(overrides, dict):
        raise RunError(f"overrides map settings to numbers, not {type(overrides).__name__}")
    for key, value in overrides.items():
        if key in NOT_SETTINGS:
            raise RunError(f"`{key}` is not a model setting: {NOT_SETTINGS[key]}")
        if isinstance(value, str):
            if not value.isprintable() or len(value) > MAX_EDIT:
                raise RunError(f"the edit `{key}` must be one line of at most {MAX_EDIT} printable characters")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunError(f"the setting `{key}` must be a finite number, not {value!r}")
    return overrides


def check_inner_clip(inner_clip) -> float | None:
    if inner_clip is None:
        return None
    if isinstance(inner_clip, bool) or not isinstance(inner_clip, (int, float)) \
            or not (math.isfinite(inner_clip) and inner_clip > 0):
        raise RunError(f"--inner-clip {inner_clip}: give a positive number, the largest norm an inner "
                         f"update may have")
    return float(inner_clip)


def device(name: str | None = "auto") -> torch.device:
    """`auto` (CUDA when this machine has it, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(name)
    except (RuntimeError, ValueError):
        found = None
    if found is None or found.type not in ("cpu", "cuda"):
        raise RunError(f"--device {name}: give auto, cpu, cuda or cuda:N")
    if found.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: this machine has no CUDA device that torch {torch.__version__} can use")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        raise RunError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices, numbered from 0")
    return found


def precision(name: str | None) -> str:
    """`--precision` as given, or a RunError naming the choices."""
    name = name or "fp32"
    if name not in PRECISIONS:
        raise RunError(f"--precision {name}: give one of {', '.join(PRECISIONS)}")
    return name


def autocast(where: torch.device, name: str):
    """The forward's precision: nothing for fp32, else `torch.autocast` to bf16 or fp16."""
    dtype = PRECISIONS[precision(name)]
    return contextlib.nullcontext() if dtype is None else torch.autocast(where.type, dtype=dtype)


def grad_scaler(where: torch.device, name: str) -> torch.amp.GradScaler:
    """A gradient scaler, on for fp16 only (bf16 has float32's range)."""
    return torch.amp.GradScaler(where.type, enabled=precision(name) == "fp16")


def build_model(source: str | Path, overrides: dict, seed: int, inner_clip: float | None = None,
                tokenizer: Tokenizer = BYTE_TOKENIZER, on: torch.device | str = "cpu", name: str | None = None):
    """Model `name` of a spec (a path or its text; default its first model), initialised from
    `seed` and moved to the device `on`, with a vocab that holds the tokenizer's: the
    spec's or `--set`'s, else the tokenizer's own size."""
    import nldsl
    stated = _stated_vocab(source, name) if "vocab" not in overrides else None
    settings = overrides if "vocab" in overrides or stated else {**overrides, "vocab": tokenizer.vocab_size}
    program = nldsl.check(source, **settings)  # a spec with errors raises NLError here
    where = source if isinstance(source, Path) else "the checkpoint's spec"
    models = [m for m in program.models if name is None or m.name == name]
    if not models:
        names = ", ".join(f"`{o.name}`" for o in program.optimizers)
        if name is not None:
            found = ", ".join(f"`{m.name}`" for m in program.models) or "none"
            raise RunError(f"{where} has no model `{name}` (its models: {found})")
        what = f"only the optimizer {names}" if names else "nothing"
        raise RunError(f"{where} defines {what}, no model: train a model whose `optimizer` line uses it")
    vocab = int(models[0].settings["vocab"])
    if vocab < tokenizer.vocab_size:
        _too_small(vocab, tokenizer, stated)
    torch.manual_seed(seed)
    return nldsl.compile(source, name=models[0].name, inner_clip=inner_clip, **settings).to(on)


def _stated_vocab(source: str | Path, name: str | None):
    """The `vocab` line of the spec's model `name` (its first, for None) with the report
    holding its source (to point at it), or None where the spec leaves vocab to the tokenizer."""
    from .compiler import ast
    from .compiler.diagnostics import Report
    from .compiler.driver import load
    report = Report()
    program = load(source, report)  # a spec with errors raises NLError here
    root = program.modules.get(program.root)
    models = [i for i in root.items if isinstance(i, ast.Model) and name in (None, i.name)] if root else []
    line = next((s for s in models[0].body if isinstance(s, ast.Setting) and s.name == "vocab"), None) if models else None
    return (line, report) if line else None


def _too_small(vocab: int, tokenizer: Tokenizer, stated) -> None:
    """A vocab that cannot hold the tokenizer's ids: located at the spec's line if it has one."""
    fix = f"needs vocab {tokenizer.vocab_size} or more"
    if stated is None:
        raise RunError(f"--set vocab={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} tokens "
                         f"({tokenizer.name}): the model {fix}")
    line, report = stated
    report.error("NL130", f"the spec's vocab {vocab} is smaller than the tokenizer's {tokenizer.vocab_size} tokens "
                          f"({tokenizer.name})", line.span,
                 f"the model {fix}: write `vocab {tokenizer.vocab_size}` (or train with --set "
                 f"vocab={tokenizer.vocab_size}), or leave vocab out to take the tokenizer's size")
    report.raise_if_errors()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


IGNORE = -100  # a target no loss counts: the unscored positions of synthetic data (nldsl/synthetic.py)


def loss(model, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The next-token loss of a batch of windows, each from fresh fast state, in float32;
    targets that are IGNORE count for nothing (the mean is over the others)."""
    logits, _ = model(x.to(model_device(model)))
    return F.cross_entropy(logits.flatten(0, 1).float(), y.to(logits.device).flatten(), reduction=reduction,
                           ignore_index=IGNORE)
