"""The Python API: compile a spec into a trainable module or an optimizer."""
from __future__ import annotations

import difflib
import math
from pathlib import Path

from .compiler.driver import check, load
from .compiler.diagnostics import NLError, Report


def _model_spec(source, name: str | None, overrides: dict):
    program = check(source, **overrides)  # positional `source` and `report`: every keyword is a setting
    models = [m for m in program.models if name is None or m.name == name]
    if not models:
        what = f"no model named `{name}`" if name else "no model"
        raise ValueError(f"{source if isinstance(source, Path) or str(source).endswith('.nl') else 'the spec'} defines {what}")
    return models[0]


def _spec(source, name: str | None, overrides: dict):
    """The model or optimizer called `name`; else, as `nldsl graph` and `nldsl stats`
    choose, the file's first model, or its first optimizer."""
    program = check(source, **overrides)
    specs = [s for s in (*program.models, *program.optimizers) if name is None or s.name == name]
    if not specs:
        what = f"nothing named `{name}`" if name else "no model or optimizer"
        raise ValueError(f"{source if isinstance(source, Path) or str(source).endswith('.nl') else 'the spec'} defines {what}")
    return specs[0]


def graph(source: str | Path, /, *, name: str | None = None, **overrides):
    """A spec's level graph after every pass (`nldsl ir`); a notebook shows it as its
    diagram (`.diagram("full")` for every memory and flow)."""
    from .compiler import passes
    return drawn(passes.run(_spec(source, name, overrides)))


def drawn(g):
    """A level graph that shows itself as its diagram (`LevelGraph.draw`)."""
    from .compiler.backends.graphviz import diagram
    g.draw = diagram
    return g


def stats(source: str | Path, /, *, name: str | None = None, **overrides):
    """What a spec costs before it runs (`nldsl stats`): prints as the command does,
    shows as a table in a notebook, and holds the numbers (`.rows`, `.totals`)."""
    from .compiler.stats import Stats
    return Stats(graph(source, name=name, **overrides))


def compile(source: str | Path, /, *, name: str | None = None, inner_clip: float | None = None,
            fused: bool = True, kernels: str = "auto", **overrides):
    """A `.nl` spec (a path, or the text itself) -> a trainable `nn.Module`.

    `overrides` replace model settings (`dim=64, context=128`); `name` picks a model
    when the file defines several; `inner_clip` clips every inner update to that norm
    per sequence instead of stopping at a NaN or Inf; `fused=False` runs the
    reference path, one period at a time (docs/performance.md). `kernels` picks how
    the fused path runs the memories that have a Triton kernel: "auto" with Triton
    on CUDA tensors, "triton" wherever a kernel can run (on the CPU too, under
    TRITON_INTERPRET=1), "torch" never; the results are the same within float32
    rounding."""
    from .compiler import passes
    from .compiler.backends.fx import build_model
    from .runtime.kernels import check_mode

    check_mode(kernels)
    if inner_clip is not None and not (isinstance(inner_clip, (int, float)) and math.isfinite(inner_clip)
                                       and inner_clip > 0):
        raise ValueError(f"inner_clip must be a positive number (the largest norm of an inner update), "
                         f"not {inner_clip!r}")
    model = build_model(passes.run(_model_spec(source, name, overrides)))
    model.options.update(inner_clip=inner_clip, fused=fused, kernels=kernels)
    return model


def _optimizer_spec(source, name: str | None, hparams: dict):
    """The checked spec of one optimizer definition with `hparams` in place of its
    defaults. The whole file is checked first; then the chosen definition is checked
    again with the new values, since sizes and later defaults may depend on them
    (`hidden` in dmgd.nl)."""
    from .compiler.check import Checker

    program = check(source)  # every error of the file, as NLError
    where = "the spec" if not (isinstance(source, Path) or str(source).endswith(".nl")) else str(source)
    if name is None:
        if not program.optimizers:
            raise ValueError(f"{where} defines no optimizer")
        name = program.optimizers[0].name
    loaded = load(source)
    report = Report()
    checker = Checker(loaded, report)
    visible = checker.visible_optimizers(loaded.root)  # the root file's and its imports'
    found = visible.get(name)
    if found is None:
        close = difflib.get_close_matches(name, list(visible), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else f" (it defines: {', '.join(visible) or 'none'})"
        raise ValueError(f"{where} defines no optimizer named `{name}`{hint}")
    definition, file = found
    known = [p.name for p in definition.params]
    values = {}
    for key, value in hparams.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"its hyperparameters: {', '.join(known) or 'none'}"
            raise ValueError(f"optimizer `{name}` has no hyperparameter `{key}`; {hint}")
        if isinstance(value, bool):
            value = float(value)  # `true` / `false` in a spec
        elif isinstance(value, (int, float)):
            value = float(value)
        else:
            raise TypeError(f"hyperparameter `{key}` of optimizer `{name}` must be a number or a bool, "
                            f"not {type(value).__name__}")
        values[key] = value
    spec = checker.optimizer(definition, file, values)
    report.raise_if_errors()
    return spec


def compile_optimizer(source: str | Path, params, /, *, name: str | None = None, **hparams):
    """An optimizer spec (a path, or the text itself) -> a `torch.optim.Optimizer` over
    `params` (tensors or parameter groups, as for any torch optimizer).

    `name` picks an optimizer definition (default: the first one defined in the file);
    `hparams` replace its defaults (`lr=3e-4, nesterov=True`). Every parameter group
    holds every hyperparameter, which the compiled step reads at each step, so
    `torch.optim.lr_scheduler` drives `lr`; those that shape the step (a period, a
    size, select's condition: `opt.spec.fixed`) are constants of it. See
    docs/optimizers.md."""
    from .compiler import passes
    from .compiler.backends.fx import build_optimizers
    from .runtime.optim import SpecOptimizer

    (use,) = build_optimizers(passes.run(_optimizer_spec(source, name, hparams)))
    return SpecOptimizer(params, use.optimizer, use.step)


def flush_subnormals(on: bool = True) -> bool:
    """Make this process's CPU arithmetic flush subnormal floats (below 1.2e-38 in
    float32) to zero. Fast states that decay at data-dependent rates reach them: an
    untrained decay near 0.5, multiplied over a 16-token period, shrinks a state by
    1e-5 a period. x86 CPUs compute with subnormals 10 to 100 times slower, and next to
    the state's other entries they are far below float32's resolution, so flushing them
    changes nothing a model computes beyond rounding. The command line does this for
    every command that runs a model, and turns it off again after (docs/performance.md).
    `on=False` restores IEEE subnormals. Returns whether the CPU supports it."""
    import torch

    return torch.set_flush_denormal(on)


__all__ = ["compile", "compile_optimizer", "flush_subnormals", "graph", "stats", "NLError"]
