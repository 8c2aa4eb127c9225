"""The size of every expression (`_Typer`), and the outer parameters its calls create."""
from __future__ import annotations

from .. import ast, fold
from ..diagnostics import did_you_mean
from ..fold import MAX_NUMBER
from ..spec import LIKE_W, MemorySpec, OuterParam, Size, unique_name
from .consts import constant, value
from .context import Context, Env, num, size_text
from .functions import call_size


def typeof(ck: Context, e: ast.Expr, env: Env, params: list, owner: str, quiet: bool = False) -> Size | None:
    """The size of an expression's value per item, collecting the outer parameters
    its calls create into `params`. None after reporting an error."""
    return _Typer(ck, env, params, owner, quiet)(e)


def param_sites(ck: Context, e: ast.Expr, owner: str, env: Env) -> list[OuterParam]:
    """The outer parameters an expression's calls create, named after `owner`."""
    params: list[OuterParam] = []
    typeof(ck, e, env, params, owner, quiet=True)
    return params


def read_option(e: ast.Call):
    """`M(q, read: before)`'s `read` argument (None when the call has none): the read at the
    period's start state S_j of a memory read `within` (Titans MAC's h_t = M_{t-1}(q_t))."""
    return next((a for a in e.args if a.key == "read"), None)


def expect_size(ck: Context, e, want, env: Env, what: str) -> None:
    size = typeof(ck, e, env, [], "")
    if size is not None and want is not None and size != want and not (want == LIKE_W and size == 1):
        ck.err("NL130", f"{what} has size {size_text(size)}, but the memory expects {size_text(want)}", e.span)


def expect_rate(ck: Context, e, mem: MemorySpec, env: Env, what: str) -> Size | None:
    """The size of a rate (None after an error): one number, or one per head."""
    size = typeof(ck, e, env, [], "")
    ok = (1, mem.heads) + ((LIKE_W,) if mem.kind == "elementwise" else ())
    if size is not None and size not in ok:
        ck.err("NL130", f"rate {what} has size {size_text(size)}; a rate is one number"
               + (f" or one per head ({mem.heads})" if mem.heads > 1 else ""), e.span)
        return None
    return size


class _Typer:
    """Types one expression. `quiet` types it again only for the parameters it
    creates: its errors were reported the first time."""

    def __init__(self, ck: Context, env: Env, params: list, owner: str, quiet: bool):
        self.c, self.env, self.params, self.owner, self.quiet = ck, env, params, owner, quiet

    def err(self, *a, **k):
        if not self.quiet:
            self.c.err(*a, **k)

    def param(self, role: str, kind: str, shape, span):
        name = unique_name(f"{self.owner}.{kind}", {p.name for p in self.params})
        self.params.append(OuterParam(name=name, shape=tuple(int(s) for s in shape), role=role, span=span))

    def __call__(self, e) -> Size | None:
        env = self.env
        if not self.quiet and isinstance(e, (ast.BinOp, ast.Call, ast.Vector)) and constant(e, env):
            # e.g. a rate `1 / 0` or a factor `exp(1000)`: fold it now, as the backend will
            return self.constant(e)
        if isinstance(e, ast.Number):
            return 1
        if isinstance(e, ast.Vector):  # with an element that is no constant (quiet: typed before)
            return (len(e.items) or None) if self.quiet else self.constant(e)
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.Member):
            self.err("NL115", f"`{e.owner}.{e.name}` names another level's memory; it can only be an initial state "
                     "(`init: level.memory`)", e.span)
            return None
        if isinstance(e, ast.Arrow):
            self.err("NL115", "`a -> b` gives a memory's sizes, inside its kind", e.span)
            return None
        if isinstance(e, ast.Neg):
            return self(e.operand)
        if isinstance(e, ast.BinOp):
            return self.binop(e)
        if isinstance(e, ast.Call):
            return self.call(e)
        return None

    def constant(self, e) -> Size | None:
        """A constant expression, folded: size 1, or its length if it is a vector (`[0.9, 0.99]`,
        `1 - 2 ** -range(heads)`), which the backend holds as a buffer of the module."""
        v = value(self.c, e, self.env, "a constant expression")
        if v is None:
            return None
        if not isinstance(v, tuple):
            return 1
        if len(v) > 1 and self.env.optimizer:
            self.err("NL130", f"a constant vector of size {len(v)} has no place in an optimizer, whose values are "
                     "one number or shaped like W", e.span, "write one number")
            return None
        return len(v)

    def name(self, e: ast.Name) -> Size | None:
        env = self.env
        if e.id in env.values:
            return env.values[e.id]
        if e.id in env.consts or e.id in ("true", "false"):
            return 1
        if e.id in env.memories:
            m = env.memories[e.id]
            if m.kind == "elementwise":
                return LIKE_W
            self.err("NL115", f"memory `{e.id}` is read by applying it, like `{e.id}(q)`", e.span)
            return None
        if e.id == "self" and env.this is not None:
            if env.this.kind == "elementwise":
                return LIKE_W
            self.err("NL115", "`self` is applied to a key, like `self(v)`", e.span)
            return None
        if e.id in env.levels:
            self.err("NL115", f"level `{e.id}` is applied to its input, like `{e.id}(rmsnorm(x))`", e.span)
            return None
        if e.id in env.broken:
            return None
        candidates = list(env.values) + list(env.consts) + list(env.memories)
        self.err("NL100", f"unknown name `{e.id}`", e.span, did_you_mean(e.id, candidates))
        return None

    def binop(self, e: ast.BinOp) -> Size | None:
        env = self.env
        a, b = self(e.left), self(e.right)
        if a is None or b is None:
            return None
        if e.op == "/" and not self.quiet and constant(e.right, env):  # x / c is x times 1 / c
            divisor = value(self.c, e.right, env, "a constant expression")
            if divisor is None:
                return None
            for c in divisor if isinstance(divisor, tuple) else (divisor,):  # each element of a vector
                try:
                    fold.apply("/", 1, c)
                except fold.FoldError:
                    self.err("NL160", "this divides by zero" if c == 0 else "this divides by a constant too small",
                             e.span, "its divisor is the constant 0" if c == 0 else
                             f"1 / {num(c)} is more than {MAX_NUMBER:.0e}: divide by a larger number")
                    return None
        if a == b or b == 1:
            return a
        if a == 1:
            return b
        self.err("NL130", f"sizes {size_text(a)} and {size_text(b)} do not match in `{e.op}`", e.span)
        return None

    def call(self, e: ast.Call) -> Size | None:
        """A call of a memory, a level or a built-in function."""
        env, f = self.env, e.func
        pos = e.positional
        kw = {a.key: a for a in e.args if a.key is not None}
        if not self.quiet and len(kw) < sum(a.key is not None for a in e.args):
            self.c.once(e.args)
            return None
        if f == "self" and env.this is not None:
            return self.apply(env.this, e, "self")
        if f in env.memories:
            return self.apply(env.memories[f], e, f)
        if f in env.levels:
            lv = env.levels[f]
            if len(e.args) != 1 or kw:
                self.err("NL117", f"level `{f}` takes one input", e.span)
                return None
            size = self(pos[0])
            if size is not None and size != env.consts["dim"]:
                self.err("NL130", f"level `{f}` takes size {int(env.consts['dim'])}, got {size_text(size)}",
                         pos[0].span)
            return int(env.consts["dim"]) if lv.out is not None else None
        if f in env.broken:
            return None
        return call_size(self, e, pos, kw)

    def apply(self, m: MemorySpec, e: ast.Call, name: str) -> Size | None:
        """A memory applied to its input, `M(q)`."""
        pos = e.positional
        if len(pos) != 1 or len(e.args) != 1 + (read_option(e) is not None):
            self.err("NL117", f"memory `{name}` takes one input", e.span)
            return None
        at = read_option(e)
        if at is not None and self.env.optimizer:
            self.err("NL115", "an optimizer's memories are read after the step's update; `read:` is for model "
                     "levels", at.span)
            return None
        if at is not None and not (isinstance(at.value, ast.Name) and at.value.id == "before"):
            self.err("NL115", f"`{name}(..., read: ...)` reads the memory at the start of the period, `read: before`; "
                     "a read `within` is its learn statement's", at.span)
            return None
        size = self(pos[0])
        if size is None:
            return None
        if m.kind == "elementwise":
            if size not in (1, LIKE_W):
                self.err("NL130", f"elementwise memory `{name}` multiplies a value shaped like W, got size "
                         f"{size_text(size)}", e.span)
            return LIKE_W
        if m.kind == "attention":
            dim = self.env.consts["dim"]
            if size != dim:
                self.err("NL130", f"attention memory `{name}` takes queries of size {int(dim)}, got {size_text(size)}",
                         pos[0].span)
                return None
            return int(dim)
        if m.d_in is not None and size != m.d_in and not (self.env.optimizer and size == LIKE_W):
            self.err("NL130", f"memory `{name}` takes size {m.d_in}, got {size_text(size)}", pos[0].span)
            return None
        return LIKE_W if self.env.optimizer else m.d_out
