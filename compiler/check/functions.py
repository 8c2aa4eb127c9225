"""Calls of built-in functions: availability, arguments, options, result size and parameters, per nldsl/vocab.py."""
from __future__ import annotations

from ...vocab import FUNCTIONS, Function
from .. import ast
from ..diagnostics import did_you_mean
from ..spec import LIKE_W, Size
from .consts import const, constant, count
from .context import size_text


def call_size(T, e: ast.Call, pos, kw) -> Size | None:
    """The size of a call of a built-in function, typed by `T` (a `_Typer`)."""
    env, f = T.env, e.func
    if f not in env.funcs:
        where = "an optimizer" if env.optimizer else "a model"
        known = list(env.funcs) + list(env.memories) + list(env.levels)
        hint = did_you_mean(f, known)
        if hint is None and f in FUNCTIONS:
            hint = f"`{f}` is not available in {where}"
        T.err("NL116", f"unknown function `{f}`", e.span, hint)
        return None
    row = FUNCTIONS[f]
    for k, a in kw.items():
        if k not in row.options:
            T.err("NL113", f"`{f}` has no option `{k}`", a.span, did_you_mean(k, row.options))
            return None
    lo, hi = row.arity
    if not lo <= len(pos) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        T.err("NL117", f"`{f}` takes {want} argument{'s' if hi > 1 else ''}, got {len(pos)}", e.span)
        return None
    if row.size in OF_CONSTANTS:
        return OF_CONSTANTS[row.size](T, row, e, pos)
    size = T(pos[0])
    if size is None:
        return None
    return OF_SIZE[row.size](T, row, e, pos, kw, size)


# ---------------------------------------------- rules whose first argument is no value
def _measure(T, row: Function, e, pos) -> Size | None:
    if not (isinstance(pos[0], ast.Name) and pos[0].id in ("W", "g")):
        T.err("NL115", f"`{row.name}` measures the parameter: `{row.name}(W)`", pos[0].span)
        return None
    return 1


def _learned(T, row: Function, e, pos) -> Size | None:
    """One scalar, or a vector of n (e.g. one per head), starting at a constant."""
    if const(T.c, pos[0], T.env, f"the initial value of `{row.name}`") is None:
        return None
    n = count(T.c, pos[1], T.env, f"the size of `{row.name}`") if len(pos) == 2 else 1
    if n is None:
        return None
    T.param(row.params[0], row.name, (n,) if len(pos) == 2 else (), e.span)
    return n


def _range(T, row: Function, e, pos) -> Size | None:
    """The constant vector 0, 1, ..., n - 1 (folded where it is constant: here its count is not)."""
    return count(T.c, pos[0], T.env, f"the count of `{row.name}`")


# ------------------------------------------- rules of the first argument's size
def _same(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    return size


def _norm(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """Per item, or per head: a scale of a head's size is shared by the heads."""
    h = 1
    if "heads" in kw:
        h = count(T.c, kw["heads"].value, T.env, "`heads`")
        if h is None:
            return None
        if size != LIKE_W and size % h:
            T.err("NL131", f"{h} heads do not divide the size {size}", e.span)
            return None
    for role in row.params:
        T.param(role, row.name, (size // h,), e.span)
    if "eps" in kw and const(T.c, kw["eps"].value, T.env, "`eps`") is None:
        return None
    return size


def _rotary(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """Rotated in pairs of coordinates, per head: a head's size is even."""
    h = count(T.c, kw["heads"].value, T.env, "`heads`") if "heads" in kw else 1
    if h is None:
        return None
    if size % h or (size // h) % 2:
        what = f"{h} heads of" if h > 1 else "the size"
        T.err("NL131", f"`{row.name}` rotates pairs of coordinates: {what} {size} must split into even heads",
              e.span, "give a size and `heads:` whose quotient is even")
        return None
    if "base" in kw:
        base = const(T.c, kw["base"].value, T.env, "`base`")
        if base is None:
            return None
        if not base > 1:
            T.err("NL160", f"the `base` of `{row.name}` is out of range: {base}", kw["base"].value.span,
                  "a base above 1: the wavelengths grow from 2π by powers of it")
            return None
    return size


def _concat(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """Values side by side: each changes with the input (a constant has no items to join)."""
    sizes = [size] + [T(p) for p in pos[1:]]
    if any(s is None for s in sizes):
        return None
    for p in pos:
        if constant(p, T.env):
            T.err("NL115", f"`{row.name}` joins values that change with the input, not a constant", p.span,
                  "to append a constant, write it as a value: `learned(c, n)` or a projection")
            return None
    return sum(sizes)


def _split(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """Part i (from 0) of n equal parts of the features."""
    n = count(T.c, pos[1], T.env, f"the number of parts of `{row.name}`")
    i = count(T.c, pos[2], T.env, f"the part `{row.name}` takes", lo=0) if n is not None else None
    if i is None:
        return None
    if size % n:
        T.err("NL130", f"`{row.name}` cuts the size {size} into {n} equal parts, which {n} does not divide", e.span)
        return None
    if i >= n:
        T.err("NL115", f"`{row.name}` takes part {i} of {n}: the parts count from 0 to {n - 1}", pos[2].span)
        return None
    return size // n


def _dropout(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    rate = const(T.c, pos[1], T.env, f"the probability of `{row.name}`")
    if rate is None:
        return None
    if not 0 <= rate < 1:
        T.err("NL160", f"the probability of `{row.name}` is out of range: {rate:g}", pos[1].span,
              "a probability of at least 0 and below 1")
        return None
    return size


def _positional(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """A learned vector for each of the model's `context` positions."""
    T.param(row.params[0], row.name, (int(T.env.consts["context"]), size), e.span)
    return size


def _orthogonal(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    for extra, what in zip(pos[1:], ("number of steps", "epsilon")):
        if const(T.c, extra, T.env, f"the {what} of `{row.name}`") is None:
            return None
    return size


def _proj(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    out = size
    if len(pos) == 2:
        out = count(T.c, pos[1], T.env, "a projection's size")
        if out is None:
            return None
    if size == LIKE_W:
        T.err("NL115", f"`{row.name}` maps token vectors; it has no meaning on a gradient", e.span)
        return None
    T.param(row.params[0], row.name, (out, size), e.span)
    return out


def _conv(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    width = count(T.c, pos[1], T.env, "a conv's width")
    if width is None:
        return None
    T.param(row.params[0], row.name, (size, width), e.span)
    return size


def _broadcast(T, row: Function, e, pos, kw, size: Size) -> Size | None:
    """max, min: the arguments' sizes are equal, or 1. select: those of its branches, and
    its first argument, the condition, is a constant."""
    rest = [T(p) for p in pos[1:]]
    if any(r is None for r in rest):
        return None
    sizes = [size] + rest
    if row.size == "select":
        if const(T.c, pos[0], T.env, f"the condition of `{row.name}`") is None:
            return None
        sizes = rest
    out = 1
    for s in sizes:
        if s != 1 and out != 1 and s != out:
            T.err("NL130", f"sizes {size_text(out)} and {size_text(s)} do not match in `{row.name}`", e.span)
            return None
        out = s if s != 1 else out
    return out


# the typing of each size rule of nldsl/vocab.py (SIZES): those that type the first
# argument as a value, and those that do not (tests/test_vocab.py holds them to SIZES)
OF_CONSTANTS = {"measure": _measure, "learned": _learned, "range": _range}
OF_SIZE = {"same": _same, "norm": _norm, "rotary": _rotary, "concat": _concat, "split": _split,
           "dropout": _dropout, "positional": _positional, "orthogonal": _orthogonal, "proj": _proj, "conv": _conv,
           "broadcast": _broadcast, "select": _broadcast}
