"""Compile-time constants: their values, folded in range by compiler/fold.py, and counts (sizes, periods, heads)."""
from __future__ import annotations

from ...vocab import FUNCTIONS
from .. import ast, fold
from .context import Context, Env, num

MAX_SIZE = 1 << 24  # a dimension beyond this is a typo, and would not fit anyway


def const(ck: Context, e: ast.Expr, env: Env, what: str) -> float | None:
    """Evaluate a compile-time constant, or report why it is not one."""
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
        v = const(ck, e.operand, env, what)
        return None if v is None else -v
    if isinstance(e, ast.BinOp):
        return folded(ck, e.op, (e.left, e.right), e, env, what)
    if isinstance(e, ast.Call) and foldable(e, env):
        arity = FUNCTIONS[e.func].arity[1]  # a function constants may call takes a fixed number
        if len(e.args) != arity:
            ck.err("NL117", f"`{e.func}` takes {arity} argument{'s' if arity > 1 else ''}, got {len(e.args)}", e.span)
            return None
        return folded(ck, e.func, e.positional, e, env, what)
    ck.err("NL115", f"{what} must be a constant expression", getattr(e, "span", None))
    return None


def folded(ck: Context, op: str, operands, e: ast.Expr, env: Env, what: str) -> float | None:
    """`op` on the values of constant operands, or NL160 at `e` if it has none in range."""
    values = [const(ck, x, env, what) for x in operands]
    if None in values:
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
    return (f in fold.FUNCS and f in env.funcs and f not in env.memories and f not in env.levels
            and all(a.key is None for a in call.args))


def constant(e, env: Env) -> bool:
    """Whether an expression is made of numbers and constants, arithmetic and the
    functions of `fold` only."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name):
            if n.id in env.values or not (n.id in env.consts or n.id in ("true", "false")):
                return False
        elif isinstance(n, ast.Call):
            if not foldable(n, env):
                return False
        elif not isinstance(n, (ast.Number, ast.BinOp, ast.Neg)):
            return False
    return True
