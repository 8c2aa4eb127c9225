"""The validated spec: what the checker hands to the IR and the backends.

Pydantic models (`extra="forbid"`, frozen): every size is a concrete integer, every
name is resolved, every option has its default filled in. Expressions stay as AST
nodes (their names now known to be valid); constants from settings and optimizer
hyperparameters are in `settings` / `hparams`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..vocab import MEMORY_KINDS, OBJECTIVES, RULES, SELECTORS
from .ast import Expr
from .diagnostics import Span

LIKE_W = "W"  # the size of a value shaped like the parameter an optimizer updates
Size = int | Literal["W"]
# the words of the vocabulary (nldsl/vocab.py), as the types of the fields that hold them
MemoryKindName = Literal[tuple(MEMORY_KINDS)]
ObjectiveName = Literal[tuple(OBJECTIVES)]
RuleName = Literal[tuple(RULES)]
Selector = Literal[SELECTORS]


def unique_name(base: str, taken: set[str]) -> str:
    """The name of a parameter a call creates: `owner.kind`, then `owner.kind_1`, ...
    The checker and the backends both name parameters with it, so they agree."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class PeriodSpec(Node):
    kind: Literal["tokens", "steps", "outer", "frozen"]
    count: int | None = None

    def __str__(self) -> str:
        if self.count is None:
            return self.kind
        n = self.count
        for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
            if n >= div and n % div == 0:
                n = f"{n // div}{suffix}"
                break
        unit = self.kind if self.count != 1 else self.kind[:-1]
        return f"every {n} {unit}"


class OuterParam(Node):
    """A parameter trained by the outer optimizer: a projection, a conv, a norm scale,
    a learned scalar, an embedding, or the initial state θ₀ of an inner memory."""

    name: str
    shape: tuple[int, ...]
    role: Literal["proj", "conv", "norm", "scalar", "embedding", "head", "init", "position"]
    span: Span | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class MemorySpec(Node):
    name: str
    level: str
    kind: MemoryKindName
    d_in: int | None = None  # None: shaped like W (optimizer memories)
    d_out: int | None = None
    heads: int = 1
    hidden: int | None = None
    act: str = "silu"
    residual: bool = False
    bias: bool = False
    norm: bool = False  # a layer norm per head on the output, before the residual: TTT's x + LN(f(x))
    init: str = "normal"  # zeros | ones | normal | identity | <level>.<memory>
    fixed: bool = False  # θ₀ is a constant, not an outer parameter
    detach: bool = False  # no gradient through inner updates to θ₀ (first order)
    window: int | None = None
    alibi: bool = False  # attention: ALiBi's linear bias on the scores by distance
    persistent: int = 0  # attention: learned key-value items every query sees (Titans' persistent memory)
    items: int = 1  # attention: items each token appends, its key and value of size items · dim cut in dim-wide parts
    segment: bool = False  # attention: a query sees only the items of its own period (Titans MAC's segments)
    span: Span | None = None

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of θ (one copy; a fast state holds one per sequence). An attention
        memory's θ₀ is its persistent items, which it keeps as they are."""
        h = self.heads
        if self.kind == "attention":
            return {"K": (self.persistent, self.d_in), "V": (self.persistent, self.d_out)} if self.persistent else {}
        if self.kind == "linear":
            return {"W": (h, self.d_out // h, self.d_in // h)}
        if self.kind == "mlp":
            i, k, o = self.d_in // h, self.hidden // h, self.d_out // h
            shapes = {"W2": (h, k, i), "W1": (h, o, k)}
            if self.bias:
                shapes.update(b2=(h, k), b1=(h, o))
            return shapes
        return {}  # elementwise: shaped like W

    @property
    def state_numel(self) -> int:
        total = 0
        for shape in self.state_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


class LearnSpec(Node):
    memory: str
    objective: ObjectiveName
    key: Expr | None = None
    value: Expr | None = None
    rule: RuleName | None = None
    lr: Expr | None = None
    decay: Expr | None = None
    beta: Expr | None = None
    decay_first: bool = False  # gd: each token's gradient at its decayed state, α_t S_{t-1}
    per_token: bool = False  # gd, momentum: a step at every token, every gradient at the period's start state
    mean: bool = False  # l2, dot: each item's gradient divided by the period's length (TTT's mini-batch mean)
    read: Literal["before", "within"] = "before"
    span: Span | None = None


class FlowSpec(Node):
    name: str
    value: Expr
    size: Size
    span: Span | None = None


class LevelSpec(Node):
    name: str
    period: PeriodSpec
    scope: Literal["sequence", "cross", "outer", "frozen", "optimizer"]
    memories: tuple[MemorySpec, ...]
    flows: tuple[FlowSpec, ...]
    learns: tuple[LearnSpec, ...]
    out: Expr | None = None
    params: tuple[OuterParam, ...] = ()
    hints: dict[str, Any] = {}
    span: Span | None = None

    def learn_of(self, memory: str) -> LearnSpec | None:
        return next((l for l in self.learns if l.memory == memory), None)


class AssignSpec(Node):
    name: str
    value: Expr
    span: Span | None = None


class BlockSpec(Node):
    repeat: int
    body: tuple[AssignSpec, ...]
    levels: tuple[str, ...]  # the levels this block applies, in order
    params: tuple[OuterParam, ...] = ()
    span: Span | None = None


class UpdateSpec(Node):
    op: Literal["=", "-=", "+=", "*="]
    value: Expr
    span: Span | None = None


class OptimizerSpec(Node):
    name: str
    hparams: dict[str, float]  # defaults, overridden where the spec or caller says
    levels: tuple[LevelSpec, ...]
    flows: tuple[FlowSpec, ...]
    updates: tuple[UpdateSpec, ...]
    file: str
    span: Span | None = None
    # the hyperparameters that shape the step (periods, memories, constant arguments): constants
    # of it; the others are read from the parameter group at each step
    fixed: tuple[str, ...] = ()


class OptimizerUseSpec(Node):
    optimizer: OptimizerSpec
    selector: Selector = "all"
    span: Span | None = None


class ModelSpec(Node):
    name: str
    settings: dict[str, float]
    levels: tuple[LevelSpec, ...]
    blocks: tuple[BlockSpec, ...]
    objective: Literal["next_token"]
    optimizers: tuple[OptimizerUseSpec, ...]
    params: tuple[OuterParam, ...]  # embedding, final norm, head
    file: str
    span: Span | None = None

    def level(self, name: str) -> LevelSpec:
        return next(l for l in self.levels if l.name == name)

    @property
    def depth_of(self) -> dict[str, int]:
        """How many copies of each level the blocks make (their `repeat`)."""
        return {lv: b.repeat for b in self.blocks for lv in b.levels}


class ProgramSpec(Node):
    """Everything checked in one root file: its models and optimizer definitions."""

    file: str
    models: tuple[ModelSpec, ...]
    optimizers: tuple[OptimizerSpec, ...]
    text: str = Field("", repr=False, exclude=True)  # the root file's text, as checked: what a notebook shows

    def _repr_html_(self) -> str:
        from ..notebook import highlight_html  # only where something displays it
        return highlight_html(self.text, self.file)
