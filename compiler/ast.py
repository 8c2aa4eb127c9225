"""The syntax tree: small frozen dataclasses, each with the span it came from.

Spans do not take part in equality, so two parses of differently formatted but
equivalent text compare equal (the formatter's round-trip test relies on it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span


def _span():
    return field(default=None, compare=False, repr=False)


# ------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Number:
    value: float
    text: str
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Member:
    """`level.memory`: a memory of another level (e.g. the source of a CMS reset)."""

    owner: str
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Arrow:
    """`a -> b` inside an argument list: an input and an output size."""

    src: "Expr"
    dst: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Arg:
    value: "Expr"
    key: str | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Arg, ...]
    span: Span = _span()

    def kwarg(self, key: str):
        return next((a.value for a in self.args if a.key == key), None)

    @property
    def positional(self) -> tuple["Expr", ...]:
        return tuple(a.value for a in self.args if a.key is None)


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / **
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Vector:
    """`[a, b, ...]`: a constant vector, its elements constant expressions (the checker says so)."""

    items: tuple["Expr", ...]
    span: Span = _span()


Expr = Number | Name | Member | Arrow | Call | BinOp | Neg | Vector


def walk(e: Expr | None):
    """Every node of an expression, without recursion (expressions may be deep)."""
    stack = [e]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        yield n
        if isinstance(n, Call):
            stack.extend(a.value for a in n.args)
        elif isinstance(n, BinOp):
            stack.extend((n.left, n.right))
        elif isinstance(n, Neg):
            stack.append(n.operand)
        elif isinstance(n, Arrow):
            stack.extend((n.src, n.dst))
        elif isinstance(n, Vector):
            stack.extend(n.items)


def names(e: Expr | None) -> set[str]:
    """The names an expression reads or calls."""
    return {n.id if isinstance(n, Name) else n.func for n in walk(e) if isinstance(n, (Name, Call))}


def head(e: Expr) -> tuple[str | None, tuple[Arg, ...]]:
    """A name or a call, as (name, args): `elementwise` and `elementwise()` alike."""
    if isinstance(e, Name):
        return e.id, ()
    if isinstance(e, Call):
        return e.func, e.args
    return None, ()


# -------------------------------------------------------------- statements
@dataclass(frozen=True)
class Setting:
    name: str
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Period:
    kind: str  # "every" | "outer" | "frozen"
    count: Expr | None = None
    unit: str | None = None  # "tokens" | "steps" (singular forms are normalised)
    span: Span = _span()


@dataclass(frozen=True)
class Memory:
    names: tuple[str, ...]
    kind: Expr  # `linear(dim -> heads, ...)`, or a bare name like `elementwise`
    span: Span = _span()
    name_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Flow:
    name: str
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Learn:
    names: tuple[str, ...]
    objective: Expr
    rule: Expr | None = None
    read: str | None = None  # "before" | "within"; None means the default, before
    span: Span = _span()
    name_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Out:
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Level:
    name: str
    period: Period
    body: tuple[Memory | Flow | Learn | Out, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Block:
    repeat: Expr | None
    body: tuple[Assign, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Objective:
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class OptimizerUse:
    value: Expr
    selector: str | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Hint:
    level: str
    key: str
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Schedule:
    hints: tuple[Hint, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Model:
    name: str
    body: tuple[Setting | Level | Block | Objective | OptimizerUse | Schedule, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Update:
    target: str
    op: str  # = -= += *=
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Level | Update | Flow, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Import:
    path: str
    span: Span = _span()


@dataclass(frozen=True)
class Comment:
    text: str
    line: int


@dataclass(frozen=True)
class Module:
    file: str
    items: tuple[Import | Model | OptimizerDef, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)
