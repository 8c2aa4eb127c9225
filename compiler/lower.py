"""Lowering: a level's expressions, a model's blocks and an optimizer's statements
become torch.fx graphs, which the pass `lower` (compiler/passes.py) attaches to the
level graph, where the later passes rewrite them and the backends read them.

- each model level gets a *chunk step* (inputs `x`, a run of tokens inside one
  period, and `st`, the level's state): its flows, the items its memories learn from
  (`st.learn`), its output; and its description (`LevelDesc`, plain data);
- the model gets a *segment* graph (inputs `tokens`, `st`): embedding, the blocks,
  each level copy applied through the runtime's period scheduler (`scan`), final
  norm and head;
- each optimizer gets its per-parameter step `g, W, step, st, hp -> W'` (`hp`: the
  parameter's group, whose hyperparameters it reads) and its description
  (`OptimizerDesc`).
Loops over periods and segments live in the runtime, not in the graphs. Nodes are
named after the spec's names and carry their `.nl` span in `node.meta["nl_span"]`.
The graphs hold no tensors: an outer parameter is a `get_attr` of its name in the
spec, listed with its role and shape in the order it is named (`Made`), and a level
copy in the segment is a `get_attr` of `LEVEL.COPY`; the torch backend creates
them and points the nodes at where it put them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import linecache
import operator
from typing import NamedTuple

import torch
import torch.fx as fx

from ..runtime import ops
from ..runtime.desc import LevelDesc, MemoryDesc, OptimizerDesc
from ..runtime.level import scan
from ..vocab import FUNCTIONS, OPTION_TYPES, RATES
from . import ast, fold
from .spec import FlowSpec, LevelSpec, ModelSpec, OptimizerSpec, OuterParam, unique_name

BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}


class BackendError(RuntimeError):
    """The spec passed the checker but cannot be lowered: a bug in nldsl."""


class Made(NamedTuple):
    """An outer parameter a graph reads: its name in the spec (the `get_attr` target),
    its role and shape, and the value of `learned(c)` (or of a constant vector, role
    "constant": a buffer, not a parameter)."""
    name: str
    role: str
    shape: tuple[int, ...]
    value: float | tuple[float, ...] | None = None


def _folded(v) -> bool:
    """Whether a value is a constant the writer folds: a number, or a constant vector (a tuple)."""
    return isinstance(v, (int, float, tuple))


def _where(span) -> str:
    return f"{span.file}:{span.line}" if span is not None else ""


class Exprs:
    """Writes checked expressions into one fx Graph.

    Names resolve through `lookup` (flows, `x`, `g`, ...), constants fold at build
    time, and each call that creates a parameter (proj, conv, rmsnorm, learned) takes
    the next name `unique_name` gives, the rule the checker used, reads it with
    `get_attr` of `target(name)` and lists it in `made`. A constant vector (`[0.9, 0.99]`,
    `1 - 2 ** -range(h)`) folds as a tuple, and where the graph needs it becomes one
    buffer, `OWNER.const`, listed in `made` with the role "constant"."""

    def __init__(self, graph: fx.Graph, consts: dict, params: dict[str, OuterParam], made: list[Made], target,
                 st, lookup, memory=None, level=None):
        self.g, self.consts, self.params, self.made, self.target = graph, consts, params, made, target
        self.st, self.lookup, self.memory, self.level = st, lookup, memory, level
        self.taken: set[str] = set()
        self.scratch = False  # walking a branch of `select` not taken: nothing written is kept

    def call(self, fn, args, kwargs=None, name=None, span=None, method=False):
        kind = "call_method" if method else "call_function"
        node = self.g.create_node(kind, fn, tuple(args), kwargs or {}, name=name)
        _locate(node, span)
        return node

    def param(self, owner: str, kind: str, span, value: float | None = None):
        name = unique_name(f"{owner}.{kind}", self.taken)
        self.taken.add(name)
        if name not in self.params:
            raise BackendError(f"no parameter `{name}` in the checked spec ({_where(span)})")
        p = self.params[name]
        self.made.append(Made(self.target(name), p.role, p.shape, value))
        return _locate(self.g.get_attr(self.target(name)), span)

    def held(self, v, owner: str, span):
        """A value as the graph takes it: a constant vector as a buffer of the module (a
        vector of one number as that number); anything else as it is."""
        if not isinstance(v, tuple) or self.scratch:
            return v
        if len(v) == 1:
            return v[0]
        name = unique_name(f"{owner}.const", self.taken)
        self.taken.add(name)
        self.made.append(Made(self.target(name), "constant", (len(v),), tuple(float(x) for x in v)))
        return _locate(self.g.get_attr(self.target(name)), span)

    def value(self, e, owner: str, this: str | None = None):
        """An expression whose value the graph holds (a flow, a rate, `out`): `held`."""
        return self.held(self(e, owner, this), owner, getattr(e, "span", None))

    def __call__(self, e, owner: str, this: str | None = None):
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.Vector):  # its elements are constants: numbers
            return tuple(self(x, owner, this) for x in e.items)
        if isinstance(e, ast.Name):
            if e.id in self.consts:
                return self.consts[e.id]
            if e.id in ("true", "false"):
                return e.id == "true"
            return self.lookup(e.id)
        if isinstance(e, ast.Neg):
            v = self(e.operand, owner, this)
            return fold.negate(v) if _folded(v) else self.call(operator.neg, (v,), span=e.span)
        if isinstance(e, ast.BinOp):
            a, b = self(e.left, owner, this), self(e.right, owner, this)
            if _folded(a) and _folded(b):
                return fold.apply(e.op, a, b)  # as the checker folded it: in range
            a, b = self.held(a, owner, e.span), self.held(b, owner, e.span)
            if e.op == "**" and isinstance(a, (int, float)) and a < 0:
                # torch.fx writes a constant base as it is: `-2 ** t`, which Python reads as -(2 ** t)
                a = self.call(operator.neg, (-a,), span=e.span)
            return self.call(BINOPS[e.op], (a, b), span=e.span)
        if isinstance(e, ast.Call):
            return self.function(e, owner, this)
        raise BackendError(f"cannot compile {type(e).__name__} ({_where(getattr(e, 'span', None))})")

    def function(self, e: ast.Call, owner: str, this):
        f, pos, span = e.func, e.positional, e.span
        kw = {a.key: a.value for a in e.args if a.key is not None}
        if f == "self":
            return self.memory(this, self.value(pos[0], owner, this), span, start=True)
        if self.memory is not None and self.memory.knows(f):  # `read: before`: at S_j, like `self(...)`
            return self.memory(f, self.value(pos[0], owner, this), span, start="read" in kw)
        if self.level is not None and self.level.knows(f):
            return self.level(f, self.value(pos[0], owner, this), span)
        if f == "select":  # the condition is a constant: build the branch it picks
            cond = self(pos[0], owner, this)
            a = self._maybe(pos[1], owner, this, keep=bool(cond))
            b = self._maybe(pos[2], owner, this, keep=not cond)
            return a if cond else b
        if f == "learned":
            return self.param(owner, "learned", span, value=float(self(pos[0], owner, this)))
        args = [self(p, owner, this) for p in pos]
        if f in fold.VECTORS:  # `range(n)`: a constant vector, folded with what is computed from it
            return fold.VECTORS[f](*args)
        if f in fold.FUNCS and all(_folded(a) for a in args):
            return fold.apply(f, *args)
        fn = FUNCTIONS.get(f)
        if fn is None:
            raise BackendError(f"unknown function `{f}` ({_where(span)})")
        args = [self.held(a, owner, span) for a in args]
        if fn.params:  # the op takes the first argument and the call's parameters; the rest size them
            args = [args[0], *(self.param(owner, f, span) for _ in fn.params)]
        options = {k: OPTION_TYPES[k](self(kw[k], owner)) for k in fn.options if k in kw}
        if not fn.state:
            return self.call(getattr(ops, fn.op), args, options, span=span)
        if f == "conv":  # its weight's path also names the inputs it carries over (`st.conv`)
            args.insert(0, args[1].target)
        return self.call(fn.op, (self.st, *args), options, span=span, method=True)

    def _maybe(self, e, owner, this, keep: bool):
        """A branch of `select`: built, or (not taken) walked only for the
        parameters it names, into a scratch graph that is thrown away."""
        if keep:
            return self(e, owner, this)
        (real, scratch), self.g, self.scratch = (self.g, self.scratch), fx.Graph(), True
        try:
            return self(e, owner, this)
        finally:
            self.g, self.scratch = real, scratch


def names_in(e, args=lambda call: call.args) -> list[str]:
    """The names an expression reads, in the order they are written; `args(call)`
    says which arguments of a call to follow."""
    out, todo = [], [e]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name):
            out.append(n.id)
        elif isinstance(n, ast.Call):
            todo.extend(a.value for a in reversed(args(n)))
        elif isinstance(n, ast.BinOp):
            todo.extend((n.right, n.left))
        elif isinstance(n, ast.Neg):
            todo.append(n.operand)
        elif isinstance(n, ast.Vector):
            todo.extend(reversed(n.items))
    return out


def in_order(key, reads, done: dict, build, cycle):
    """`done[key]`, built after every key it reads: `reads(k)` lists the keys k reads (in
    the order they are written), `build(k)` makes k's value, `cycle(k)` the error for a
    key that reads itself. From an explicit stack: a chain of flows each reading the next
    must not recurse as deep as it is long."""
    todo, open_ = [key], {key}
    while todo:
        top = todo[-1]
        waiting = next((k for k in reads(top) if k not in done), None)
        if waiting is None:
            todo.pop()
            open_.discard(top)
            if top not in done:
                done[top] = build(top)
        elif waiting in open_:
            raise cycle(waiting)
        else:
            todo.append(waiting)
            open_.add(waiting)
    return done[key]


def _named(node, name: str):
    """Give a flow's node the flow's name (numbers stay numbers)."""
    if isinstance(node, fx.Node) and node.op != "get_attr":
        node._rename(name)
    return node


def _locate(node: fx.Node, span) -> fx.Node:
    """Record where in the spec a node comes from: `meta["nl_span"]`, and a stack
    trace in the form fx prints beside the generated code."""
    if span is not None:
        node.meta["nl_span"] = span
        code = linecache.getline(span.file, span.line).strip()
        node.stack_trace = f'File "{span.file}", line {span.line}, in spec\n    {code}\n'
    return node


# ------------------------------------------------------------------ parameters
def _local(name: str) -> str:
    """A spec parameter name inside its level or block copy: `titans.q.proj` -> `q.proj`."""
    return name.split(".", 1)[1]


# ----------------------------------------------------------------------- levels
class _Memories:
    """How a level's graph reads its memories: `st.read`, after the items of a memory
    read `within` have been recorded."""

    def __init__(self, build):
        self.b = build

    def knows(self, f):
        return f in self.b.mem_specs

    def __call__(self, name, arg, span, start=False):
        b = self.b
        learn = b.spec.learn_of(name)
        if not start and learn is not None and learn.read == "within" and learn.objective != "task":
            b.learn(name)
        kwargs = {"start": True} if start else {}
        return b.ex.call("read", (b.st, name, arg), kwargs, name=f"{name}_read", span=span, method=True)


class _LevelBuild:
    def __init__(self, spec: LevelSpec, consts: dict):
        self.spec = spec
        self.mem_specs = {m.name: m for m in spec.memories}
        self.flows = {f.name: f for f in spec.flows}
        self.g = fx.Graph()
        self.x = self.g.placeholder("x")
        self.st = self.g.placeholder("st")
        self.made: list[Made] = []
        self.ex = Exprs(self.g, consts, {p.name: p for p in spec.params}, self.made, _local, self.st, self.lookup,
                        memory=_Memories(self))
        self.done: dict[str, object] = {}
        self.learned: set[str] = set()

    def lookup(self, name):
        if name == "x":
            return self.x
        if name in self.flows:
            return self.flow(name)
        raise BackendError(f"unknown name `{name}` in level `{self.spec.name}`")

    def flow(self, name):
        """A flow's node, built once, after the flows it reads."""
        return in_order(
            name, lambda n: (r for r in names_in(self.flows[n].value) if r in self.flows), self.done,
            lambda n: _named(self.ex.value(self.flows[n].value, f"{self.spec.name}.{n}"), n),
            lambda n: BackendError(f"flow `{n}` of level `{self.spec.name}` depends on itself"))

    def learn(self, memory: str):
        if memory in self.learned:
            return
        self.learned.add(memory)
        l, owner = self.spec.learn_of(memory), f"{self.spec.name}.{memory}"
        rates = {r: self.ex.value(getattr(l, r), f"{owner}.{r}", memory) for r in RATES
                 if getattr(l, r) is not None}
        if l.objective == "task":
            self.ex.call("rates", (self.st, memory), rates, name=f"{memory}_rates", span=l.span, method=True)
            return
        if l.mean:  # the period's mean loss: every item's gradient over the period's length, one rate for all paths
            P, lr = self.spec.period.count, rates["lr"]
            rates["lr"] = lr / P if _folded(lr) else self.ex.call(operator.truediv, (lr, P), name=f"{memory}_mean_lr",
                                                                  span=l.span)
        key = self.ex.value(l.key, f"{owner}.key", memory) if l.key is not None else None
        value = self.ex.value(l.value, f"{owner}.value", memory)
        self.ex.call("learn", (self.st, memory, key, value), rates, name=f"{memory}_learn", span=l.span, method=True)

    def build(self) -> fx.Graph:
        for name in self.flows:  # every flow, in written order (unused ones still own their parameters)
            self.flow(name)
        out = self.ex.value(self.spec.out, f"{self.spec.name}.out")
        if self.spec.scope == "sequence":
            for l in self.spec.learns:
                self.learn(l.memory)
        self.g.output(out)
        return self.g


def describe(spec: LevelSpec) -> LevelDesc:
    """The runtime's plain description of a level (what emitted source writes out)."""
    mems = []
    for m in spec.memories:
        l = spec.learn_of(m.name)
        nested = "." in m.init
        mems.append(MemoryDesc(
            name=m.name, kind=m.kind, heads=m.heads, shapes=tuple(m.state_shapes().items()), act=m.act,
            residual=m.residual, norm=m.norm, init="normal" if nested else m.init,
            constant=m.fixed or spec.scope == "frozen",
            source=m.init if nested else None, detach=m.detach, window=m.window, alibi=m.alibi,
            items=m.items, segment=m.segment,
            objective=l.objective if l else None, rule=l.rule if l else None,
            decay_first=bool(l and l.decay_first), per_token=bool(l and l.per_token),
            read=l.read if l else "before"))
    return LevelDesc(name=spec.name, scope=spec.scope, period=spec.period.count if spec.period.kind == "tokens" else None,
                     memories=tuple(mems))


# ------------------------------------------------------------------------ model
class _Levels:
    """How the segment graph applies a level: the runtime's `scan` over its copy."""

    def __init__(self, model_build):
        self.m = model_build

    def knows(self, f):
        return f in self.m.level_names

    def __call__(self, name, arg, span):
        m = self.m
        module = m.g.get_attr(f"{name}.{m.copy}")
        return m.ex.call(scan, (module, arg, m.st), name=name, span=span)


class _ModelBuild:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.made: list[Made] = []  # the blocks' (embedding, final norm and head are the model's own)
        self.consts = dict(spec.settings)
        self.level_names = {l.name for l in spec.levels}
        self.g = fx.Graph()
        self.tokens = self.g.placeholder("tokens")
        self.st = self.g.placeholder("st")
        self.env: dict[str, object] = {}
        self.copy = 0

    def lookup(self, name):
        if name in self.env:
            return self.env[name]
        raise BackendError(f"unknown name `{name}` in a block")

    def build(self) -> fx.Graph:
        params = {p.name: p for p in self.spec.params}
        top = Exprs(self.g, self.consts, params, self.made, lambda n: n, self.st, self.lookup)
        embed = self.g.get_attr("embed")
        self.env["x"] = top.call(ops.embed, (self.tokens, embed), name="x", span=self.spec.span)
        for b, block in enumerate(self.spec.blocks):
            for copy in range(block.repeat):
                self.copy = copy
                self.ex = Exprs(self.g, self.consts, {p.name: p for p in block.params}, self.made,
                                lambda n, b=b, c=copy: f"block{b}.{c}.{_local(n)}", self.st, self.lookup,
                                level=_Levels(self))
                for a in block.body:
                    self.env[a.name] = _named(self.ex.value(a.value, f"block{b}.{a.name}"), a.name)
        norm = top.call(ops.rmsnorm, (self.env["x"], self.g.get_attr("norm")), name="norm")
        head = "head" if "head" in params else "embed"  # `next_token(tied)`: the embedding scores
        logits = top.call(ops.proj, (norm, self.g.get_attr(head)), name="logits")
        self.g.output(logits)
        return self.g


UPDATE_OPS = {"-=": operator.sub, "+=": operator.add, "*=": operator.mul}


class _OptimizerBuild:
    """Writes one optimizer's per-parameter step into an fx Graph (design §10).

    The graph's inputs are `g` (the gradient), `W` (the parameter), `step` (the 1-based
    step count), `st` (the parameter's optimizer state, `nldsl.runtime.optim`) and `hp`
    (the parameter's group: `hp["lr"]`). It returns the new W. Hyperparameters are read
    from `hp` where first needed, so a learning-rate scheduler's changes reach the
    step; those that shape it (`spec.fixed`: periods, sizes, select's condition) are
    constants folded into the graph.

    What the graph reads, in what order (docs/semantics.md §2, §7):
    - Flows are named nodes, written lazily where first needed, so they come in
      dependency order. Flows and learn statements see W as it was when g was
      computed (the start of the step).
    - Optimizers read after the update: every memory's learn statement
      (`st.learn(...)`) is written before the first read of that memory
      (`st.read(...)`), so a read sees the state after this step's item. Reads inside
      a memory's own learn statement (`self(...)`) come before it and see the state
      before it.
    - `update W op= expr` statements apply in the order written; each one's `W` is
      the W left by the updates before it (AdamW decays W, then takes the Adam step).
    - Learn statements of memories that nothing reads are written last, so their
      states still advance every step."""

    def __init__(self, spec: OptimizerSpec):
        self.spec = spec
        self.g = fx.Graph()
        # create_node keeps the names as written (`placeholder` would snake-case `W`)
        self.grad, self.W0, self.step, self.st, self.hp = (self.g.create_node("placeholder", n, name=n)
                                                           for n in ("g", "W", "step", "st", "hp"))
        self.W = self.W0  # the W an update statement sees: after the updates written before it
        self.in_update = False
        self.level: str | None = None  # the level whose flows are visible (None: the optimizer's own)
        self.flow_specs: dict[tuple[str | None, str], FlowSpec] = {(None, f.name): f for f in spec.flows}
        for lv in spec.levels:
            self.flow_specs.update({(lv.name, f.name): f for f in lv.flows})
        self.learns = {l.memory: (lv, l) for lv in spec.levels for l in lv.learns}
        self.mems = {m.name: m for lv in spec.levels for m in lv.memories}
        self.flows: dict[tuple[str | None, str], object] = {}
        self.learned: set[str] = set()
        self.reads: dict[str, fx.Node] = {}  # memories read by name, after their learn statement
        self.named: set[fx.Node] = {self.grad, self.W0, self.step, self.st, self.hp}
        self.hparams: dict[str, fx.Node] = {}  # those read from `hp`, once each
        fixed = {k: spec.hparams[k] for k in spec.fixed}
        # no parameters: an optimizer's functions create none (the checker allows no proj, learned, ...)
        self.ex = Exprs(self.g, fixed, {}, [], lambda n: n, self.st, self.lookup, memory=self)

    # -- names
    def _discarded(self, name: str):
        """Exprs walks the branch of `select` it does not take into a scratch graph it
        throws away (models collect the parameters named there; optimizers have none).
        Nothing written there may be cached or count as learned: a stand-in will do."""
        if self.ex.g is self.g:
            return None
        return self.ex.g.create_node("placeholder", name, name=name)

    def lookup(self, name: str):
        if name == "g":
            return self.grad
        if name == "W":
            return self.W if self.in_update else self.W0
        if name == "step":
            return self.step
        stand_in = self._discarded(name)
        if stand_in is not None:
            return stand_in
        if name in self.mems:
            return self.read(name, None, None)
        if name in self.spec.hparams:
            return self.hparam(name)
        key = self._visible(name, self.level)
        if key is None:
            raise BackendError(f"unknown name `{name}` in optimizer `{self.spec.name}`")
        return self.flow(key)

    def hparam(self, name: str) -> fx.Node:
        """`hp[name]`: the hyperparameter as the parameter's group holds it at this step,
        read at the top of the step, where the optimizer's line is."""
        if name not in self.hparams:
            with self.g.inserting_after(next(reversed(self.hparams.values()), self.hp)):
                node = self.g.create_node("call_function", operator.getitem, (self.hp, name), name=name)
            self.hparams[name] = _locate(node, self.spec.span)
            self.named.add(node)
        return self.hparams[name]

    def _visible(self, name: str, level: str | None) -> tuple[str | None, str] | None:
        """The flow `name` means where `level`'s flows are visible: the level's own, else the optimizer's."""
        return next((key for key in ((level, name), (None, name)) if key in self.flow_specs), None)

    def flow(self, key: tuple[str | None, str]):
        """A flow's node, written once, after the flows it reads (not those of a `select`
        branch not taken)."""
        def reads(k):
            return (r for r in (self._visible(n, k[0]) for n in names_in(self.flow_specs[k].value, self._taken))
                    if r is not None)

        def build(k):
            owner = ".".join(p for p in (self.spec.name, k[0], k[1]) if p)
            with self._items(k[0]):
                return self._name(self.ex.value(self.flow_specs[k].value, owner), k[1])

        return in_order(key, reads, self.flows, build,
                        lambda k: BackendError(f"flow `{k[1]}` of optimizer `{self.spec.name}` depends on itself"))

    def _taken(self, call: ast.Call):
        """The arguments of a call that are written: of `select`, the branch its constant condition picks."""
        if call.func != "select":
            return call.args
        return (call.args[1 if self.ex(call.args[0].value, "") else 2],)

    def _name(self, node, name: str):
        """Give a flow's node the flow's name, unless the node already has a meaning of
        its own (an input, a memory read, another flow): then the flow is an alias."""
        if isinstance(node, fx.Node) and node not in self.named:
            node._rename(name)
            self.named.add(node)
        return node

    @contextlib.contextmanager
    def _items(self, level: str | None):
        """While writing a flow or a learn statement: that level's flows are visible,
        and W is the W of the start of the step."""
        saved = self.level, self.in_update
        self.level, self.in_update = level, False
        try:
            yield
        finally:
            self.level, self.in_update = saved

    # -- memories (the protocol `Exprs` calls for `m(e)` and `self(e)`)
    def knows(self, f: str) -> bool:
        return f in self.mems

    def __call__(self, name: str, arg, span, start: bool = False):
        return self.read(name, arg, span, start)

    def read(self, name: str, arg, span, start: bool = False):
        stand_in = self._discarded(name)
        if stand_in is not None:
            return stand_in
        if not start:
            self.learn(name)  # optimizers read after the update
        if arg is None and not start:  # read by name: the same state however often it is read
            if name not in self.reads:
                where = span or self.mems[name].span  # a name carries no span here: point at the memory
                self.reads[name] = self.ex.call("read", (self.st, name, None), name=name, span=where, method=True)
                self.named.add(self.reads[name])
            return self.reads[name]
        kwargs = {"start": True} if start else {}
        node = self.ex.call("read", (self.st, name, arg), kwargs, name=f"{name}_read", span=span, method=True)
        self.named.add(node)
        return node

    def learn(self, memory: str) -> None:
        if memory in self.learned or memory not in self.learns:
            return
        self.learned.add(memory)
        lv, l = self.learns[memory]
        owner = f"{self.spec.name}.{lv.name}.{memory}"
        with self._items(lv.name):
            rates = {r: self.ex.value(getattr(l, r), f"{owner}.{r}", memory) for r in RATES
                     if getattr(l, r) is not None}
            key = self.ex.value(l.key, f"{owner}.key", memory) if l.key is not None else None
            value = self.ex.value(l.value, f"{owner}.value", memory)
        node = self.ex.call("learn", (self.st, memory, key, value), rates, name=f"{memory}_learn", span=l.span,
                            method=True)
        self.named.add(node)

    # -- the step
    def build(self) -> fx.Graph:
        for u in self.spec.updates:
            self.in_update, self.level = True, None
            value = self.ex.value(u.value, f"{self.spec.name}.update")
            self.in_update = False
            if u.op == "=":
                new = value if isinstance(value, fx.Node) else self.ex.call(torch.full_like, (self.W, value), span=u.span)
            elif u.op in UPDATE_OPS:
                new = self.ex.call(UPDATE_OPS[u.op], (self.W, value), span=u.span)
            else:
                raise BackendError(f"unknown update `W {u.op} ...` ({u.span})")
            self.W = self._name(new, "W")
        for lv in self.spec.levels:  # memories nothing reads still learn
            for l in lv.learns:
                self.learn(l.memory)
        self.g.output(self.W)
        return self.g


def describe_optimizer(spec: OptimizerSpec) -> OptimizerDesc:
    """The runtime's plain description of an optimizer (what emitted source writes out):
    its hyperparameters, and its levels, whose periods count steps."""
    levels = tuple(dataclasses.replace(describe(lv), period=int(lv.period.count)) for lv in spec.levels)
    return OptimizerDesc(name=spec.name, hparams=dict(spec.hparams), levels=levels, fixed=spec.fixed)


def lower_level(spec: LevelSpec, settings: dict) -> tuple[fx.Graph, list[Made]]:
    """A model level's chunk step, and the outer parameters it reads in the order it names them."""
    build = _LevelBuild(spec, settings)
    return build.build(), build.made


def lower_model(spec: ModelSpec) -> tuple[fx.Graph, list[Made]]:
    """The model's segment graph, and the blocks' outer parameters in the order it names them."""
    build = _ModelBuild(spec)
    return build.build(), build.made


def lower_optimizer(spec: OptimizerSpec) -> fx.Graph:
    """An optimizer's per-parameter step."""
    graph = _OptimizerBuild(spec).build()
    graph.lint()
    return graph
