"""The Python API: compile a spec into a trainable module or an optimizer."""
from __future__ import annotations

from pathlib import Path

from .compiler.driver import check
from .compiler.diagnostics import NLError


def _model_spec(source, name: str | None, overrides: dict):
    program = check(source, **overrides)
    models = [m for m in program.models if name is None or m.name == name]
    if not models:
        what = f"no model named `{name}`" if name else "no model"
        raise ValueError(f"{source if isinstance(source, Path) or str(source).endswith('.nl') else 'the spec'} defines {what}")
    return models[0]


def compile(source: str | Path, *, name: str | None = None, inner_clip: float | None = None, **overrides):
    """A `.nl` spec (a path, or the text itself) -> a trainable `nn.Module`.

    `overrides` replace model settings (`dim=64, context=128`); `name` picks a model
    when the file defines several; `inner_clip` clips every inner update to that norm
    per sequence instead of stopping at a NaN or Inf."""
    from .compiler.backends.fx import build_model

    spec = _model_spec(source, name, overrides)
    model = build_model(spec)
    model.options["inner_clip"] = inner_clip
    return model


__all__ = ["compile", "NLError"]
