"""The torch backend: a checked spec becomes torch.fx GraphModules over the runtime.

Two graphs are built, both from the spec's expressions through one `Exprs` writer:
- each level copy gets a *chunk step* (inputs `x`, a run of tokens inside one period,
  and `st`, the level's state): its flows, the items its memories learn from
  (`st.learn`), its output;
- the model gets a *segment* graph (inputs `tokens`, `st`): embedding, the blocks,
  each level applied through the runtime's period scheduler (`scan`), final norm
  and head.
Loops over periods and segments live in the runtime, not in the graphs. Nodes are
named after the spec's names and carry their `.nl` span in `node.meta["nl_span"]`.
"""
from __future__ import annotations

import dataclasses
import linecache
import operator

import torch.fx as fx
from torch import nn

from ...runtime import ops
from ...runtime.desc import LevelDesc, MemoryDesc
from ...runtime.level import scan
from ...runtime.model import Level, Model, init, register
from ...vocab import FUNCTIONS, RATES
from .. import ast, fold
from ..spec import LevelSpec, ModelSpec, OuterParam, unique_name

BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}


class BackendError(RuntimeError):
    """The spec passed the checker but the backend cannot build it: a bug in nldsl."""


def _where(span) -> str:
    return f"{span.file}:{span.line}" if span is not None else ""


class Exprs:
    """Writes checked expressions into one fx Graph.

    Names resolve through `lookup` (flows, `x`, `g`, ...), constants fold at build
    time, and each call that creates a parameter (proj, conv, rmsnorm, learned) takes
    the next name `unique_name` gives, the rule the checker used, and fetches the
    parameter with `get_attr`."""

    def __init__(self, graph: fx.Graph, consts: dict, params: dict[str, OuterParam], module: nn.Module, target,
                 st, lookup, memory=None, level=None):
        self.g, self.consts, self.params, self.module, self.target = graph, consts, params, module, target
        self.st, self.lookup, self.memory, self.level = st, lookup, memory, level
        self.taken: set[str] = set()

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
        path = register(self.module, self.target(name), init(p.role, p.shape, value))
        self.module.__dict__.setdefault("__made__", []).append((path, p.role, p.shape, value))
        return _locate(self.g.get_attr(path), span)

    def __call__(self, e, owner: str, this: str | None = None):
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in self.consts:
                return self.consts[e.id]
            if e.id in ("true", "false"):
                return e.id == "true"
            return self.lookup(e.id)
        if isinstance(e, ast.Neg):
            v = self(e.operand, owner, this)
            return -v if isinstance(v, (int, float)) else self.call(operator.neg, (v,), span=e.span)
        if isinstance(e, ast.BinOp):
            a, b = self(e.left, owner, this), self(e.right, owner, this)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                return fold.apply(e.op, a, b)  # as the checker folded it: in range
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
            return self.memory(this, self(pos[0], owner, this), span, start=True)
        if self.memory is not None and self.memory.knows(f):
            return self.memory(f, self(pos[0], owner, this), span)
        if self.level is not None and self.level.knows(f):
            return self.level(f, self(pos[0], owner, this), span)
        if f == "select":  # the condition is a constant: build the branch it picks
            cond = self(pos[0], owner, this)
            a = self._maybe(pos[1], owner, this, keep=bool(cond))
            b = self._maybe(pos[2], owner, this, keep=not cond)
            return a if cond else b
        if f == "learned":
            return self.param(owner, "learned", span, value=float(self(pos[0], owner, this)))
        args = [self(p, owner, this) for p in pos]
        if f == "proj":
            return self.call(ops.proj, (args[0], self.param(owner, "proj", span)), span=span)
        if f == "conv":  # its weight's path also names the inputs it carries over (`st.conv`)
            weight = self.param(owner, "conv", span)
            return self.call("conv", (self.st, weight.target, args[0], weight), span=span, method=True)
        if f == "rmsnorm":
            eps = self(kw["eps"], owner) if "eps" in kw else 1e-6
            heads = (int(self(kw["heads"], owner)),) if "heads" in kw else ()
            return self.call(ops.rmsnorm, (args[0], self.param(owner, "rmsnorm", span), eps, *heads), span=span)
        if f == "l2norm":
            heads = int(self(kw["heads"], owner)) if "heads" in kw else 1
            return self.call(ops.l2norm, (args[0], heads), span=span)
        if f == "newton_schulz":
            return self.call(ops.newton_schulz, (args[0], *(int(args[1]) if i == 1 else args[i] for i in range(1, len(args)))),
                             span=span)
        if f in FUNCTIONS:  # the rest call their runtime op on their arguments
            if f in fold.FUNCS and all(isinstance(a, (int, float)) for a in args):
                return fold.apply(f, *args)
            return self.call(getattr(ops, FUNCTIONS[f].op), args, span=span)
        raise BackendError(f"unknown function `{f}` ({_where(span)})")

    def _maybe(self, e, owner, this, keep: bool):
        """A branch of `select`: built, or (not taken) walked only for the
        parameters it names, into a scratch graph that is thrown away."""
        if keep:
            return self(e, owner, this)
        real, self.g = self.g, fx.Graph()
        try:
            return self(e, owner, this)
        finally:
            self.g = real


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
    def __init__(self, spec: LevelSpec, consts: dict, level: Level):
        self.spec = spec
        self.mem_specs = {m.name: m for m in spec.memories}
        self.flows = {f.name: f for f in spec.flows}
        self.g = fx.Graph()
        self.x = self.g.placeholder("x")
        self.st = self.g.placeholder("st")
        self.ex = Exprs(self.g, consts, {p.name: p for p in spec.params}, level, _local, self.st, self.lookup,
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
            lambda n: _named(self.ex(self.flows[n].value, f"{self.spec.name}.{n}"), n),
            lambda n: BackendError(f"flow `{n}` of level `{self.spec.name}` depends on itself"))

    def learn(self, memory: str):
        if memory in self.learned:
            return
        self.learned.add(memory)
        l, owner = self.spec.learn_of(memory), f"{self.spec.name}.{memory}"
        rates = {r: self.ex(getattr(l, r), f"{owner}.{r}", memory) for r in RATES
                 if getattr(l, r) is not None}
        if l.objective == "task":
            self.ex.call("rates", (self.st, memory), rates, name=f"{memory}_rates", span=l.span, method=True)
            return
        key = self.ex(l.key, f"{owner}.key", memory) if l.key is not None else None
        value = self.ex(l.value, f"{owner}.value", memory)
        self.ex.call("learn", (self.st, memory, key, value), rates, name=f"{memory}_learn", span=l.span, method=True)

    def build(self) -> fx.Graph:
        for name in self.flows:  # every flow, in written order (unused ones still own their parameters)
            self.flow(name)
        out = self.ex(self.spec.out, f"{self.spec.name}.out")
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
            residual=m.residual, init="normal" if nested else m.init, constant=m.fixed or spec.scope == "frozen",
            source=m.init if nested else None, detach=m.detach, window=m.window,
            objective=l.objective if l else None, rule=l.rule if l else None,
            decay_first=bool(l and l.decay_first), per_token=bool(l and l.per_token),
            read=l.read if l else "before"))
    return LevelDesc(name=spec.name, scope=spec.scope, period=spec.period.count if spec.period.kind == "tokens" else None,
                     memories=tuple(mems), tile=int(spec.hints.get("tile", 64)), kernel=spec.hints.get("kernel"),
                     group=spec.hints.get("group", "on") == "on")


def _calls(graph: fx.Graph, method: str):
    return [n for n in graph.nodes if n.op == "call_method" and n.target == method]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def parallel(graph: fx.Graph, desc: LevelDesc) -> bool:
    """Whether whole periods can run in one call of the step (the fused path): no item a
    memory learns from depends on a read of a memory that learns inside the sequence,
    and each such memory is read at most once. Self-modifying levels, whose keys and
    values come from memories of their own, are not."""
    if desc.scope != "sequence" or desc.period is None:
        return False
    learning = {m.name for m in desc.memories if m.objective in ("l2", "dot")}
    reads = [n for n in _calls(graph, "read") if n.args[1] in learning]
    if any(sum(n.args[1] == m and not n.kwargs.get("start") for n in reads) > 1 for m in learning):
        return False
    return not any(set(reads) & _ancestors(n) for n in _calls(graph, "learn"))


def _learn_first(graph: fx.Graph) -> None:
    """Order the step so that every `learn` (and what it needs) comes before anything
    else: a read then finds its memory's items of the chunk already recorded, which the
    fused path needs to answer it for whole periods at once. Reads at S_j, those of
    `read before` and `self(...)`, do not depend on the order."""
    first = set()
    for n in _calls(graph, "learn"):
        first |= _ancestors(n) | {n}
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    cursor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for n in [n for n in nodes if n in first] + [n for n in nodes if n not in first]:
        cursor.append(n)
        cursor = n


def _share_common(graph: fx.Graph) -> None:
    """Compute each pure expression once: a spec that writes `0.1 * eta` for two memories'
    rates gets one node, so that their learns can be grouped. Calls on the state (`st.*`)
    are not pure and stay as written."""
    seen: dict[tuple, fx.Node] = {}
    for n in list(graph.nodes):
        if n.op not in ("call_function", "get_attr"):
            continue
        key = (n.op, n.target, n.args, tuple(sorted(n.kwargs.items())))
        try:
            first = seen.setdefault(key, n)
        except TypeError:  # an unhashable constant: leave it be
            continue
        if first is not n:
            n.replace_all_uses_with(first)
            graph.erase_node(n)


def _alike(desc: LevelDesc) -> dict[str, tuple]:
    """Memories whose states stack into one batch: same kind, state shapes, heads,
    activation, residual, objective, rule (its order of decay and step, its steps per
    token or per period), read mode and detach."""
    return {m.name: (m.kind, m.shapes, m.heads, m.act, m.residual, m.objective, m.rule, m.decay_first, m.per_token,
                     m.read, m.detach)
            for m in desc.memories if m.kind in ("linear", "mlp")}


def _group_memories(graph: fx.Graph, desc: LevelDesc) -> tuple[tuple[str, ...], ...]:
    """Memories of one level that read the same input, or learn from the same key at the
    same rates, in one call each (`st.read_many`, `st.learn_many`): on the fused path the
    runtime stacks their states and does one batched read or gradient for all of them.
    Only reads at S_j are grouped (`read before`, `self(...)`): a read within sees its
    own memory's items. Returns the stacks: the memories of each grouped learn that are
    read before and start from their own θ₀, which the runtime then holds stacked for
    good (their reads are slices of the stack, their boundary one update)."""
    alike, before = _alike(desc), {m.name for m in desc.memories if m.read == "before"}
    reads: dict[tuple, list[fx.Node]] = {}
    for n in _calls(graph, "read"):
        name, start = n.args[1], bool(n.kwargs.get("start"))
        if name in alike and (start or name in before):
            reads.setdefault((n.args[2], start, alike[name]), []).append(n)
    learns: dict[tuple, list[fx.Node]] = {}
    for n in _calls(graph, "learn"):
        if n.args[1] in alike:
            rates = tuple(sorted(n.kwargs.items(), key=lambda kv: kv[0]))
            learns.setdefault((n.args[2], rates, alike[n.args[1]]), []).append(n)
    for (e, start, _), group in reads.items():
        if len(group) < 2:
            continue
        with graph.inserting_before(group[0]):
            many = graph.call_method("read_many", (group[0].args[0], tuple(n.args[1] for n in group), e),
                                     {"start": True} if start else {})
        _copy_place(many, group[0], "_".join(n.args[1] for n in group) + "_read")
        for i, n in enumerate(group):  # each read becomes its share, keeping its name and place
            n.op, n.target, n.kwargs, n.args = "call_function", operator.getitem, {}, (many, i)
    for (key, _, _), group in learns.items():
        if len(group) < 2:
            continue
        last = group[-1]
        with graph.inserting_after(last):
            many = graph.call_method("learn_many", (last.args[0], tuple(n.args[1] for n in group), key,
                                                    tuple(n.args[3] for n in group)), dict(last.kwargs))
        _copy_place(many, last, "_".join(n.args[1] for n in group) + "_learn")
        for n in group:
            graph.erase_node(n)  # a learn's result is never used
    graph.lint()
    mems = {m.name: m for m in desc.memories}
    return tuple(names for names in (tuple(n.args[1] for n in group) for group in learns.values())
                 if len(names) > 1 and all(mems[m].read == "before" and mems[m].source is None for m in names))


def _copy_place(node: fx.Node, like: fx.Node, name: str) -> None:
    """A node that stands for `like`: its name and its place in the spec."""
    node._rename(name)
    node.meta.update(like.meta)
    node.stack_trace = like.stack_trace


def build_level(spec: LevelSpec, copy: int, consts: dict) -> Level:
    level = Level(describe(spec), copy, spec)
    graph = _LevelBuild(spec, consts, level).build()
    _learn_first(graph)
    _share_common(graph)
    level.desc = dataclasses.replace(level.desc, parallel=parallel(graph, level.desc))
    if not level.desc.parallel:  # a parallel level runs whole periods at once already
        level.desc = dataclasses.replace(level.desc, stacks=_group_memories(graph, level.desc))
    level.attach(graph)
    return level


# ------------------------------------------------------------------------ model
class _Levels:
    """How the segment graph applies a level: the runtime's `scan` over its copy."""

    def __init__(self, model_build):
        self.m = model_build

    def knows(self, f):
        return f in self.m.level_names

    def __call__(self, name, arg, span):
        m = self.m
        module = m.g.get_attr(f"{m.model.slots[name]}.{m.copy}")
        return m.ex.call(scan, (module, arg, m.st), name=name, span=span)


class _ModelBuild:
    def __init__(self, spec: ModelSpec, model: Model):
        self.spec, self.model = spec, model
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
        top = Exprs(self.g, self.consts, params, self.model, lambda n: n, self.st, self.lookup)
        embed = self.g.get_attr("embed")
        self.env["x"] = top.call(ops.embed, (self.tokens, embed), name="x", span=self.spec.span)
        for b, block in enumerate(self.spec.blocks):
            for copy in range(block.repeat):
                self.copy = copy
                self.ex = Exprs(self.g, self.consts, {p.name: p for p in block.params}, self.model,
                                lambda n, b=b, c=copy: f"block{b}.{c}.{_local(n)}", self.st, self.lookup,
                                level=_Levels(self))
                for a in block.body:
                    self.env[a.name] = _named(self.ex(a.value, f"block{b}.{a.name}"), a.name)
        norm = top.call(ops.rmsnorm, (self.env["x"], self.g.get_attr("norm")), name="norm")
        logits = top.call(ops.proj, (norm, self.g.get_attr("head")), name="logits")
        self.g.output(logits)
        return self.g


def build_model(spec: ModelSpec) -> Model:
    model = Model(spec.name, spec.settings, spec)
    for p in spec.params:  # embedding, final norm, head: names no spec can take
        register(model, p.name, init(p.role, p.shape))
    for block in spec.blocks:
        for name in block.levels:
            lv = spec.level(name)
            model.add_level(name, [build_level(lv, c, model.settings) for c in range(block.repeat)])
    model.finish()
    model.attach(_ModelBuild(spec, model).build())
    return model
