"""Passes over the level graph, listed in `PASSES` in the order they run.

Each pass takes and returns a `LevelGraph`; `run` verifies the graph after each and
can print it after a named pass (`nldsl ir --print-after NAME`).
"""
from __future__ import annotations

import math
from typing import Callable

import networkx as nx

from .ast import names as _names
from .ir import LevelGraph, build
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
    if m.kind == "attention":
        return 2 * int(s["dim"]) * int(min(m.window or s["context"], s["context"]))
    learn = lv.learn_of(m.name)
    copies = 2 if learn is not None and learn.rule == "momentum" else 1
    return m.state_numel * copies


def _flops(m: MemorySpec, lv: LevelSpec, s) -> float:
    """Forward FLOPs per token: reading the memory, and in-sequence learning (a
    gradient per item, about twice a read, plus applying the update once a period)."""
    if m.kind == "attention":
        T = int(s["context"])
        w = min(m.window or T, T)
        keys = (w * (w + 1) / 2 + (T - w) * w) / T  # mean over positions of min(t, w) keys attended
        return 4 * s["dim"] * keys
    read = 2 * m.state_numel
    if lv.scope != "sequence" or lv.learn_of(m.name) is None:
        return read
    learn = lv.learn_of(m.name)
    targets = 1 + sum(1 for e in (learn.key, learn.value) if e is not None and "self" in _names(e))
    return read * targets + 2 * read + 2 * m.state_numel / lv.period.count




PASSES: list[tuple[str, Callable[[LevelGraph], LevelGraph]]] = [
    ("derive_tiers", derive_tiers),
    ("nest_tiers", nest_tiers),
    ("annotate_costs", annotate_costs),
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
