"""Passes over the level graph, listed in `PASSES` in the order they run.

Each pass takes and returns a `LevelGraph`; `run` verifies the graph after each and
can print it after a named pass (`nldsl ir --print-after NAME`).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Callable

import networkx as nx
import torch.fx as fx

from ..runtime.desc import LevelDesc
from .ast import names as _names
from .costs import memory_flops
from .ir import LevelGraph, build
from .lower import describe, describe_optimizer, lower_level, lower_model, lower_optimizer
from .spec import LevelSpec, MemorySpec, ModelSpec, OptimizerSpec

INF = math.inf


def step_tokens(ir: LevelGraph) -> float:
    """Tokens one outer optimizer step consumes, B·T: the clock that relates periods
    in tokens to periods in steps (semantics §1)."""
    s = ir.spec.settings if ir.is_model else {}
    return float(s.get("batch", 1) * s.get("context", 1)) if s else 1.0


def tokens_per_update(ir: LevelGraph, node: str) -> float:
    d = ir.graph.nodes[node]
    if d["kind"] == "weights":
        return step_tokens(ir)
    lv: LevelSpec = d["spec"]
    p = lv.period
    if p.kind == "tokens":
        return float(p.count)
    if p.kind == "steps":
        return p.count * step_tokens(ir)
    return step_tokens(ir) if p.kind == "outer" else INF


def update_tokens(ir: LevelGraph, node: str, tokens: int) -> list[int]:
    """The schedule the graph states for a level inside one sequence of `tokens` tokens:
    the tokens after which its memories apply their rule, every period P from the start
    (a period cut short by the end waits for its boundary, semantics §10). Levels that
    learn across sequences, with the outer optimizer or never have none."""
    d = ir.graph.nodes[node]
    if d["scope"] != "sequence" or not any(learn.rule for learn in d["spec"].learns):
        return []
    period = int(tokens_per_update(ir, node))
    return list(range(period, tokens + 1, period))


def derive_tiers(ir: LevelGraph) -> LevelGraph:
    """The level hierarchy of semantics §1: order by period; at equal periods, what
    needs another's state at the same time is the slower; equal and independent share
    a tier. `outer` levels are part of the weights tier (the optimizer trains them)."""
    g = ir.graph
    units = [n for n, d in g.nodes(data=True) if d["kind"] == "level" and d["scope"] != "outer"] + ["weights"]
    period = {n: tokens_per_update(ir, n) for n in units}
    # same-time dependencies between units: a context flow from one to the other
    flows = ir.of_kind("flow")
    flows.remove_edges_from(list(nx.selfloop_edges(flows)))
    owner = {m: lv for lv, m in ir.of_kind("member").edges}
    dep = nx.DiGraph()
    dep.add_nodes_from(units)
    unit_of = lambda n: owner.get(n, n) if owner.get(n, n) in period else None  # noqa: E731
    for u, v in flows.edges:
        a, b = unit_of(u), unit_of(v)
        if a and b and a != b and period[a] == period[b]:
            dep.add_edge(a, b)
    rank = {}
    for n in nx.lexicographical_topological_sort(dep) if nx.is_directed_acyclic_graph(dep) else sorted(dep):
        rank[n] = max((rank[p] + 1 for p in dep.predecessors(n)), default=0)
    tiers: dict[tuple, list[str]] = {}
    for n in units:
        tiers.setdefault((period[n], rank[n]), []).append(n)
    outer_levels = [n for n, d in g.nodes(data=True) if d["kind"] == "level" and d["scope"] == "outer"]
    ir.tiers = []
    for i, key in enumerate(sorted(tiers)):
        members = sorted(tiers[key]) + (outer_levels if "weights" in tiers[key] else [])
        tid = f"tier:{i}"
        label = _period_label(ir, members[0])
        names = [g.nodes[m].get("name", "W") for m in members]
        g.add_node(tid, kind="tier", period=label, tokens=key[0], rank=key[1])
        for m in members:
            g.add_edge(tid, m, kind="owns")
        ir.tiers.append({"id": tid, "label": label, "tokens": key[0], "rank": key[1], "levels": names,
                         "nodes": members})
    return ir


def _period_label(ir: LevelGraph, node: str) -> str:
    d = ir.graph.nodes[node]
    return "every 1 step" if d["kind"] == "weights" or d["scope"] == "outer" else d["period"]


def nest_tiers(ir: LevelGraph) -> LevelGraph:
    """Ownership (semantics §1): each period's slowest tier owns the next faster
    period's, and the tiers of its own period; the optimizer owns the slowest tier it
    trains. Frozen tiers belong to no one."""
    g = ir.graph
    by_period: dict[float, list[dict]] = {}
    for t in ir.tiers:
        by_period.setdefault(t["tokens"], []).append(t)
    heads = []
    for p in sorted(by_period):
        group = sorted(by_period[p], key=lambda t: t["rank"])
        top = group[-1]
        for t in group[:-1]:
            g.add_edge(top["id"], t["id"], kind="owns")
        heads.append(top)
    trained = [t for t in heads if t["tokens"] != INF]
    for slower, faster in zip(trained[1:], trained):
        g.add_edge(slower["id"], faster["id"], kind="owns")
    optimizers = sorted(n for n, d in g.nodes(data=True) if d["kind"] == "optimizer")
    if optimizers and trained:
        g.add_edge(optimizers[0], trained[-1]["id"], kind="owns")
    for other in optimizers[1:]:  # further parameter groups' optimizers sit beside the first
        g.add_edge(optimizers[0], other, kind="owns")
    return ir


def annotate_costs(ir: LevelGraph) -> LevelGraph:
    """Per level: outer parameters, fast state per sequence, FLOPs per token (forward)."""
    g = ir.graph
    s = ir.spec.settings if ir.is_model else {}
    for n, d in list(g.nodes(data=True)):
        if d["kind"] != "level":
            continue
        lv: LevelSpec = d["spec"]
        copies = d["copies"]
        params = sum(p.numel for p in lv.params)
        state = sum(_state(m, lv, s) for m in lv.memories)
        flops = sum(_flops(m, lv, s) for m in lv.memories) + sum(2 * p.numel for p in lv.params if p.role == "proj")
        d.update(params=params * copies, state=state * copies, flops=flops * copies)
    if ir.is_model:
        extra = sum(p.numel for p in ir.spec.params) + sum(p.numel * b.repeat for b in ir.spec.blocks for p in b.params)
        g.nodes["weights"].update(params=extra + sum(d.get("params", 0) for _, d in g.nodes(data=True)
                                                      if d["kind"] == "level" and d["scope"] != "optimizer"),
                                  flops=2 * s["dim"] * s["vocab"])
    for t in ir.tiers:
        t["params"] = sum(g.nodes[m].get("params", 0) for m in t["nodes"] if m != "weights")
    return ir


def _state(m: MemorySpec, lv: LevelSpec, s) -> int:
    """Fast state one sequence carries (numbers), for memories that learn in-sequence."""
    if lv.scope != "sequence":
        return 0
    if m.kind == "attention":  # a segment's tokens at most; `items` a token
        seen = min(m.window or s["context"], s["context"], lv.period.count if m.segment else s["context"])
        return 2 * int(s["dim"]) * int(seen) * m.items
    learn = lv.learn_of(m.name)
    copies = 2 if learn is not None and learn.rule == "momentum" else 1
    return m.state_numel * copies


# per memory (compiler/costs.py, which `check` reads without torch)
_flops = memory_flops




# ------------------------------------------------------- lowering, and the steps' passes
def lower(ir: LevelGraph) -> LevelGraph:
    """The graphs the backends run (compiler/lower.py): on each model level its chunk
    step (`step`), the outer parameters the step names (`made`) and its description
    (`desc`); on each optimizer its per-parameter step and description; on the level
    graph the model's segment (`segment`, `segment_made`)."""
    settings = dict(ir.spec.settings) if ir.is_model else {}
    for _, d in ir.graph.nodes(data=True):
        if d["kind"] == "level" and d["scope"] != "optimizer":
            d["step"], d["made"] = lower_level(d["spec"], settings)
            d["desc"] = describe(d["spec"])
        elif d["kind"] == "optimizer":
            d["step"], d["desc"] = lower_optimizer(d["spec"]), describe_optimizer(d["spec"])
    if ir.is_model:
        ir.segment, ir.segment_made = lower_model(ir.spec)
    return ir


def _steps(ir: LevelGraph):
    """The attributes of every model level that has a chunk step, in node order."""
    return [d for _, d in sorted(ir.graph.nodes(data=True)) if d["kind"] == "level" and "step" in d]


def apply_hints(ir: LevelGraph) -> LevelGraph:
    """A level's `schedule` hints on its description: the tile of chunk-parallel memories,
    the kernel (auto | torch | triton, in place of the compile option), and whether
    alike memories are stacked (`group`)."""
    for d in _steps(ir):
        hints = d["spec"].hints
        d["desc"] = dataclasses.replace(d["desc"], tile=int(hints.get("tile", 64)), kernel=hints.get("kernel"),
                                        group=hints.get("group", "on") == "on")
    return ir


def learn_first(ir: LevelGraph) -> LevelGraph:
    """Order each chunk step so that every `learn` (and what it needs) comes before
    anything else: a read then finds its memory's items of the chunk already recorded,
    which the fused path needs to answer it for whole periods at once. Reads at S_j,
    those of `read before` and `self(...)`, do not depend on the order."""
    for d in _steps(ir):
        graph = d["step"]
        first = set()
        for n in _calls(graph, "learn"):
            first |= _ancestors(n) | {n}
        nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
        cursor = [n for n in graph.nodes if n.op == "placeholder"][-1]
        for n in [n for n in nodes if n in first] + [n for n in nodes if n not in first]:
            cursor.append(n)
            cursor = n
    return ir


def share_common(ir: LevelGraph) -> LevelGraph:
    """Compute each pure expression of a chunk step once: a spec that writes `0.1 * eta`
    for two memories' rates gets one node, so that their learns can be grouped. Calls on
    the state (`st.*`) are not pure and stay as written."""
    for d in _steps(ir):
        graph = d["step"]
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
    return ir


def find_parallel(ir: LevelGraph) -> LevelGraph:
    """Which levels run whole periods in one call of their step (`desc.parallel`)."""
    for d in _steps(ir):
        d["desc"] = dataclasses.replace(d["desc"], parallel=parallel(d["step"], d["desc"]))
    return ir


def choose_forms(ir: LevelGraph) -> LevelGraph:
    """How the fused path runs each memory of a parallel level over whole periods
    (`MemoryDesc.form`, `.triton`), which the runtime follows and the diagram shows:
    - "chunk": a linear memory on l2 or dot by gd (or implicit on l2 at period 1), not
      detached, without `norm`: the chunk-parallel delta rule (with `residual`, W k
      regressed on v − k); Triton's `gated_delta_rule` may run it at period 1 on l2;
    - "mlp": a 2-layer mlp without biases or `norm` on l2 by gd or momentum (not momentum
      per token), read at the period's start, not detached and not decay-first: a period as
      one autograd node;
    - otherwise period by period. Triton's `mlp_period_update` may run an mlp on l2 by gd
      read at the period's start, not detached and not decay-first, without `norm`, biases or not."""
    for d in _steps(ir):
        desc = d["desc"]
        if desc.parallel:
            mems = tuple(dataclasses.replace(m, form=_form(m, desc.period), triton=_triton(m, desc.period))
                         for m in desc.memories)
            d["desc"] = dataclasses.replace(desc, memories=mems)
    return ir


def _plain_mlp(m) -> bool:
    """An mlp on l2, read at the period's start, whose gradient flows through, not decay-first,
    without a layer norm (which period.py and the kernel do not differentiate)."""
    return (m.kind == "mlp" and m.objective == "l2" and m.read != "within" and not m.detach
            and not m.decay_first and not m.norm)


def _form(m, period: int) -> str | None:
    # a layer norm inside the memory (`norm`) makes its gradient no delta rule: period by period
    if m.kind == "linear" and m.objective in ("l2", "dot") and not m.detach and not m.norm and (
            m.rule == "gd" or (m.rule == "implicit" and period == 1 and m.objective == "l2")):
        return "chunk"
    if (_plain_mlp(m) and m.rule in ("gd", "momentum") and not (m.per_token and m.rule == "momentum")
            and {name for name, _ in m.shapes} == {"W1", "W2"}):
        return "mlp"
    return None


def _triton(m, period: int) -> str | None:
    if _form(m, period) == "chunk" and period == 1 and m.objective == "l2":
        return "gated_delta_rule"
    if _plain_mlp(m) and m.rule == "gd":
        return "mlp_period_update"
    return None


def group_memories(ir: LevelGraph) -> LevelGraph:
    """Alike memories of a level that is not parallel (a parallel level runs whole
    periods at once already) in one call each, and the memories held stacked
    (`desc.stacks`)."""
    for d in _steps(ir):
        if not d["desc"].parallel:
            d["desc"] = dataclasses.replace(d["desc"], stacks=_group_memories(d["step"], d["desc"]))
    return ir


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


def _alike(desc: LevelDesc) -> dict[str, tuple]:
    """Memories whose states stack into one batch: same kind, state shapes, heads,
    activation, residual, objective, rule (its order of decay and step, its steps per
    token or per period), read mode and detach; never one with `norm`, whose scale and
    bias are its own."""
    return {m.name: (m.kind, m.shapes, m.heads, m.act, m.residual, m.objective, m.rule, m.decay_first, m.per_token,
                     m.read, m.detach)
            for m in desc.memories if m.kind in ("linear", "mlp") and not m.norm}


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


PASSES: list[tuple[str, Callable[[LevelGraph], LevelGraph]]] = [
    ("derive_tiers", derive_tiers),
    ("nest_tiers", nest_tiers),
    ("annotate_costs", annotate_costs),
    ("lower", lower),
    ("apply_hints", apply_hints),
    ("learn_first", learn_first),
    ("share_common", share_common),
    ("find_parallel", find_parallel),
    ("choose_forms", choose_forms),
    ("group_memories", group_memories),
]


def run(spec: ModelSpec | OptimizerSpec, print_after: str | None = None, out=print) -> LevelGraph:
    ir = build(spec)
    ir.verify()
    if print_after == "build":
        out(ir.describe())
    for name, fn in PASSES:
        ir = fn(ir)
        ir.verify()
        if print_after == name:
            out(ir.describe())
    return ir


PASS_NAMES = ["build"] + [n for n, _ in PASSES]
