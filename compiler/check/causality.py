"""Causality (NL141): no cycle within one token of a level, nor within one optimizer step between its levels."""
from __future__ import annotations

import networkx as nx

from .. import ast
from ..spec import FlowSpec, LevelSpec
from .context import Context, Env


def causality(ck: Context, level: LevelSpec, env: Env) -> None:
    """Within one token, what needs what: a cycle here has no period boundary to
    break it, so it would need its own result (reads of the future)."""
    g = nx.DiGraph()
    read = {l.memory: l.read for l in level.learns}
    if env.optimizer:
        read = {m: "within" for m in read}  # optimizer updates see this step's moments
    flows = {f.name for f in level.flows}

    def depend(e, target):
        for n in _uses(e) if e is not None else ():
            src = _node(n, read, flows)
            if src is not None:
                g.add_edge(src, target)

    for f in level.flows:
        depend(f.value, f"flow {f.name}")
    for l in level.learns:
        for e in (l.key, l.value, l.lr, l.decay, l.beta):
            depend(e, f"update {l.memory}")
    cycle = cycle_of(g)
    if cycle is None:
        return
    path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
    learn = next((l for l in level.learns if f"update {l.memory}" in path), None)
    ck.err("NL141", f"level `{level.name}` has a cycle within one token that no period breaks: {path}",
           learn.span if learn else level.span,
           "read the memory `before` (the default), so the cycle crosses a period boundary")


def level_cycles(ck: Context, levels: list[LevelSpec], flows: list[FlowSpec]) -> None:
    """An optimizer's memories are visible across its levels, and read within the step:
    levels of one period that read each other's memories have no boundary to break
    the cycle (levels of different periods are ordered by their periods)."""
    owner = {m.name: lv.name for lv in levels for m in lv.memories}
    period = {lv.name: (lv.period.kind, lv.period.count) for lv in levels}
    g = nx.DiGraph()
    for lv in levels:
        defs = {f.name: f.value for f in (*flows, *lv.flows)}
        for l in lv.learns:
            seen, todo = set(), [e for e in (l.key, l.value, l.lr, l.decay, l.beta) if e is not None]
            while todo:
                for name in ast.names(todo.pop()):
                    if name in defs and name not in seen:
                        seen.add(name)
                        todo.append(defs[name])
                    src = owner.get(name)
                    if src is not None and src != lv.name and period[src] == period[lv.name]:
                        g.add_edge(src, lv.name, span=l.span)
    cycle = cycle_of(g)
    if cycle is None:
        return
    path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
    ck.err("NL141", f"levels read each other's memories within one step, with no period to break the cycle: {path}",
           g.edges[cycle[0]]["span"], "one of them must not read the other's memory, or must run at another period")


def _uses(e):
    """Every name an expression reads, called or not; a memory read at the period's start
    (`M(q, read: before)`) needs none of the period's updates, so it is its input's alone."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Call) and not any(a.key == "read" for a in n.args):
            yield n.func


def _node(name: str, read: dict, flows: set[str]):
    """The graph node a use of `name` depends on within the same token, or None."""
    if name in flows:
        return f"flow {name}"
    if name in read and read[name] == "within":
        return f"update {name}"
    return None


def cycle_of(g: nx.DiGraph) -> list[tuple] | None:
    """The edges of a cycle in `g`, or None. One depth-first search, without
    recursion: linear in the size of the graph, where networkx's `find_cycle` grows
    with the square of a long chain (thousands of flows)."""
    done: set = set()
    for start in g:
        if start in done:
            continue
        path, on_path, todo = [start], {start}, [iter(g.succ[start])]
        while todo:
            for nxt in todo[-1]:
                if nxt in on_path:
                    loop = path[path.index(nxt):] + [nxt]
                    return list(zip(loop, loop[1:]))
                if nxt not in done:
                    path.append(nxt)
                    on_path.add(nxt)
                    todo.append(iter(g.succ[nxt]))
                    break
            else:
                done.add(path[-1])
                on_path.discard(path.pop())
                todo.pop()
    return None
