"""The torch backend for optimizers: a checked `OptimizerSpec` becomes one torch.fx
Graph, the update of one parameter in one optimizer step (design §10).

The graph's inputs are `g` (the gradient), `W` (the parameter), `step` (the 1-based
step count) and `st` (the parameter's optimizer state, `nldsl.runtime.optim`). It
returns the new W. Hyperparameters are constants folded into the graph.

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
  states still advance every step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import operator

import torch
import torch.fx as fx
from torch import nn

from ...runtime.desc import OptimizerDesc
from ...runtime.optim import OptimizerUse
from ...vocab import RATES
from .. import ast
from ..spec import FlowSpec, ModelSpec, OptimizerSpec
from .fx import BackendError, Exprs, describe, in_order, names_in

UPDATE_OPS = {"-=": operator.sub, "+=": operator.add, "*=": operator.mul}


class _OptimizerBuild:
    """Writes one optimizer's per-parameter step into an fx Graph."""

    def __init__(self, spec: OptimizerSpec):
        self.spec = spec
        self.g = fx.Graph()
        # create_node keeps the names as written (`placeholder` would snake-case `W`)
        self.grad, self.W0, self.step, self.st = (self.g.create_node("placeholder", n, name=n)
                                                  for n in ("g", "W", "step", "st"))
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
        self.named: set[fx.Node] = {self.grad, self.W0, self.step, self.st}
        # no parameters: an optimizer's functions create none (the checker allows no proj, learned, ...)
        self.ex = Exprs(self.g, dict(spec.hparams), {}, nn.Module(), lambda n: n, self.st, self.lookup, memory=self)

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
        key = self._visible(name, self.level)
        if key is None:
            raise BackendError(f"unknown name `{name}` in optimizer `{self.spec.name}`")
        return self.flow(key)

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
                return self._name(self.ex(self.flow_specs[k].value, owner), k[1])

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
            rates = {r: self.ex(getattr(l, r), f"{owner}.{r}", memory) for r in RATES
                     if getattr(l, r) is not None}
            key = self.ex(l.key, f"{owner}.key", memory) if l.key is not None else None
            value = self.ex(l.value, f"{owner}.value", memory)
        node = self.ex.call("learn", (self.st, memory, key, value), rates, name=f"{memory}_learn", span=l.span,
                            method=True)
        self.named.add(node)

    # -- the step
    def build(self) -> fx.Graph:
        for u in self.spec.updates:
            self.in_update, self.level = True, None
            value = self.ex(u.value, f"{self.spec.name}.update")
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


def build_optimizer(spec: OptimizerSpec) -> fx.GraphModule:
    """The per-parameter step of an optimizer: `gm(g, W, step, st) -> new W`."""
    graph = _OptimizerBuild(spec).build()
    graph.lint()
    return fx.GraphModule(nn.Module(), graph, class_name=f"{spec.name}_step")


def describe_optimizer(spec: OptimizerSpec) -> OptimizerDesc:
    """The runtime's plain description of an optimizer (what emitted source writes out):
    its hyperparameters, and its levels, whose periods count steps."""
    levels = tuple(dataclasses.replace(describe(lv), period=int(lv.period.count)) for lv in spec.levels)
    return OptimizerDesc(name=spec.name, hparams=dict(spec.hparams), levels=levels)


def build_optimizers(spec: ModelSpec) -> tuple[OptimizerUse, ...]:
    """A model's `optimizer` lines, each described and its step compiled: all that the
    runtime's outer optimizer needs (`Model.optimizers`), so it never needs the compiler."""
    return tuple(OptimizerUse(u.selector, describe_optimizer(u.optimizer), build_optimizer(u.optimizer))
                 for u in spec.optimizers)


__all__ = ["build_optimizer", "build_optimizers", "describe_optimizer"]
