"""A model's settings (`dim 256`): their values, the overrides that replace them, and their defaults."""
from __future__ import annotations

import math

from ...vocab import SETTINGS, TRAINING_SETTINGS
from .. import ast
from ..diagnostics import did_you_mean
from ..fold import MAX_NUMBER
from .consts import MAX_SIZE, const
from .context import Context, Env, num


def unknown_overrides(ck: Context, models: list[ast.Model]) -> None:
    """NL124 for an override that names no setting: misspelt, it would otherwise
    become a new constant that nothing reads."""
    known = set(SETTINGS) | {s.name for m in models for s in m.body if isinstance(s, ast.Setting)}
    levels = {s.name for m in models for s in m.body if isinstance(s, ast.Level)}
    for key, value in ck.overrides.items():
        if key not in known:
            edit = isinstance(value, str)  # text edits a level (compiler/edit.py)
            ck.err("NL124", f"override `{key}={value!r}` names no {'level' if edit else 'setting'} of this spec",
                   models[0].span if models else None,
                   did_you_mean(key, levels if edit else known)
                   or (f"levels: {', '.join(sorted(levels))}" if edit else f"settings: {', '.join(sorted(known))}"))


def settings(ck: Context, m: ast.Model) -> dict[str, float]:
    written = [s for s in m.body if isinstance(s, ast.Setting)]
    ck.unique([(s.name, s.span) for s in written], "setting")
    consts: dict[str, float] = {}
    env = Env(consts)
    # the spec's settings in order, then overrides of settings it leaves to their defaults
    given = [(s.name, s.value, s.value.span) for s in written]
    names = {s.name for s in written}
    given += [(k, None, m.span) for k in ck.overrides if k in SETTINGS and k not in names]
    for name, value, span in given:
        what = f"setting `{name}`" if name not in ck.overrides else f"override `{name}={ck.overrides[name]!r}`"
        v = ck.overrides[name] if name in ck.overrides else const(ck, value, env, what)
        stand_in = SETTINGS.get(name) or 64  # after an error, so that what uses the setting is not reported too
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            if v is not None:
                ck.err("NL115", f"{what} must be a number", span)
            consts.setdefault(name, stand_in)
            continue
        if abs(v) > MAX_NUMBER:  # an override: the spec's own values were folded in range
            ck.err("NL160", f"{what} is out of range", span, f"numbers must be at most {MAX_NUMBER:.0e} in size")
            v = stand_in
        if name in SETTINGS and (v != int(v) or v < 1):
            ck.err("NL115", f"{what} must be a positive integer, not {num(v)}", span)
            v = stand_in
        elif name in SETTINGS and v > MAX_SIZE:
            ck.err("NL160", f"{what} {num(v)} is out of range (at most {MAX_SIZE:,})", span)
            v = stand_in
        elif name in TRAINING_SETTINGS and (need := training_value(name, v)) is not None:
            ck.err("NL115", f"{what} must be {need}, not {num(v)}", span)
            v = 1  # a value every training setting takes
        consts.setdefault(name, int(v) if v == int(v) else v)
    for name, default in SETTINGS.items():
        if name not in consts:
            if default is None:
                ck.err("NL123", f"model `{m.name}` does not set `{name}`", m.span,
                       f"add a line `{name} 256` to the model")
                consts[name] = 1
            else:
                consts[name] = default
    return consts


def training_value(name: str, v) -> str | None:
    """What the training setting `name` must be, where `v` is not that (None: it is). The
    checker holds a spec's line to it, and `nldsl train` its flag of the same name."""
    kind, bound = TRAINING_SETTINGS[name]
    need = f"a whole number of at least {bound}" if kind is int else f"a number above {bound:g}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return need
    if kind is int:
        return None if v == int(v) and v >= bound else need
    return None if v > bound else need
