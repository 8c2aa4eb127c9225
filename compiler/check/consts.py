"""Compile-time constants: their values (numbers, or constant vectors), folded in range by compiler/fold.py, and
counts (sizes, periods, heads)."""
from __future__ import annotations

from ...vocab import FUNCTIONS
from .. import ast, fold
from .context import Context, Env, num

MAX_SIZE = 1 << 24  # a dimension beyond this is a typo, and would not fit anyway
MAX_VECTOR = 1 << 16  # numbers in a constant vector: folded one by one here, and written out in emitted source


def const(ck: Context, e: ast.Expr, env: Env, what: str) -> float | None:
    """Evaluate a compile-time constant that is one number, or report why it is not one."""
    v = value(ck, e, env, what)
    if isinstance(v, tuple):
        ck.err("NL130", f"{what} must be one number, not a vector of size {len(v)}", getattr(e, "span", None))
        return None
    return v


def value(ck: Context, e: ast.Expr, env: Env, what: str) -> float | tuple | None:
    """Evaluate a compile-time constant: a number, or a constant vector (a tuple of
    numbers: `[0.9, 0.99]`, `range(heads)` and arithmetic on them), or report why it is not one."""
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.Name):
        if e.id in env.consts:
            return env.consts[e.id]
        if e.id in ("true", "false"):
            return float(e.id == "true")
        if e.id in env.values or e.id in env.memories:
            ck.err("NL115", f"{what} must be a constant, but `{e.id}` changes with the input", e.span)
            return None
        ck.unknown("name", e.id, e.span, list(env.consts) + ["true", "false"])
        return None
    if isinstance(e, ast.Neg):
        v = value(ck, e.operand, env, what)
        return None if v is None else fold.negate(v)
    if isinstance(e, ast.BinOp):
        return folded(ck, e.op, (e.left, e.right), e, env, what)
    if isinstance(e, ast.Vector):
        return vector(ck, e, env)
    if isinstance(e, ast.Call) and foldable(e, env):
        arity = FUNCTIONS[e.func].arity[1]  # a function constants may call takes a fixed number
        if len(e.args) != arity:
            ck.err("NL117", f"`{e.func}` takes {arity} argument{'s' if arity > 1 else ''}, got {len(e.args)}", e.span)
            return None
        if e.func in fold.VECTORS:  # `range(n)`: n a count
            n = count(ck, e.args[0].value, env, f"the count of `{e.func}`")
            if n is not None and n > MAX_VECTOR:
                ck.err("NL160", f"the count of `{e.func}` {n} is out of range (at most {MAX_VECTOR:,})", e.span)
                return None
            return None if n is None else fold.VECTORS[e.func](n)
        return folded(ck, e.func, e.positional, e, env, what)
    ck.err("NL115", f"{what} must be a constant expression", getattr(e, "span", None))
    return None


def vector(ck: Context, e: ast.Vector, env: Env) -> tuple | None:
    """`[a, b, ...]`: at least one element, each one constant number."""
    if not e.items:
        ck.err("NL115", "a constant vector `[]` must hold at least one number", e.span, "e.g. `[0.9, 0.99]`")
        return None
    if len(e.items) > MAX_VECTOR:
        ck.err("NL160", f"a constant vector of {len(e.items):,} numbers is out of range (at most {MAX_VECTOR:,})",
               e.span)
        return None
    items = [const(ck, x, env, "an element of a constant vector") for x in e.items]
    return None if None in items else tuple(items)


def folded(ck: Context, op: str, operands, e: ast.Expr, env: Env, what: str) -> float | tuple | None:
    """`op` on the values of constant operands, elementwise on vectors of one size (numbers
    broadcast), or NL130 for vectors of other sizes, or NL160 at `e` if it has no value in range."""
    values = [value(ck, x, env, what) for x in operands]
    if None in values:
        return None
    if op == "select" and isinstance(values[0], tuple):
        ck.err("NL130", f"the condition of `select` must be one number, not a vector of size {len(values[0])}",
               operands[0].span, "`select` picks one branch when the spec is compiled")
        return None
    sizes = list(dict.fromkeys(len(v) for v in values if isinstance(v, tuple) and len(v) > 1))
    if len(sizes) > 1:
        ck.err("NL130", f"sizes {sizes[0]} and {sizes[1]} do not match in `{op}`", e.span)
        return None
    try:
        return fold.apply(op, *values)
    except fold.FoldError as reason:
        ck.err("NL160", f"{what} {reason}", e.span, reason.help)
        return None


def count(ck: Context, e: ast.Expr, env: Env, what: str, lo: int = 1) -> int | None:
    """A constant that counts something: a positive integer (NL115, or NL120 for a
    period), at most MAX_SIZE unless it is a period (NL160)."""
    v = const(ck, e, env, what)
    if v is None:
        return None
    if v != int(v) or v < lo:
        bound = "a positive integer" if lo == 1 else f"an integer of at least {lo}"
        ck.err("NL120" if "period" in what else "NL115", f"{what} must be {bound}, not {num(v)}", e.span)
        return None
    if v > MAX_SIZE and "period" not in what:
        ck.err("NL160", f"{what} {num(v)} is out of range (at most {MAX_SIZE:,})", e.span)
        return None
    return int(v)


def foldable(call: ast.Call, env: Env) -> bool:
    """Whether a call is one of the functions a constant may use (not a memory or a
    level of that name), with no options."""
    f = call.func
    return ((f in fold.FUNCS or f in fold.VECTORS) and f in env.funcs and f not in env.memories and f not in env.levels
            and all(a.key is None for a in call.args))


def constant(e, env: Env) -> bool:
    """Whether an expression is made of numbers and constants, constant vectors,
    arithmetic and the functions of `fold` only."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name):
            if n.id in env.values or not (n.id in env.consts or n.id in ("true", "false")):
                return False
        elif isinstance(n, ast.Call):
            if not foldable(n, env):
                return False
        elif not isinstance(n, (ast.Number, ast.BinOp, ast.Neg, ast.Vector)):
            return False
    return True
