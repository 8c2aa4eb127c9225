"""Flows (`flow NAME = expr`): names, typed in dependency order, kept in written order."""
from __future__ import annotations

import networkx as nx

from ...vocab import INPUTS
from .. import ast
from ..spec import FlowSpec
from .causality import cycle_of
from .consts import constant, value
from .context import Context, Env
from .typer import typeof


def flows(ck: Context, flows_ast, env: Env, owner: str) -> list[FlowSpec]:
    ck.unique([(f.name, f.span) for f in flows_ast], "flow")
    clash = [f for f in flows_ast if f.name in env.memories or f.name in INPUTS or f.name in env.consts]
    for f in clash:
        ck.err("NL101", f"flow `{f.name}` has the name of something already defined", f.span)
    by_name = {f.name: f for f in flows_ast}
    # flows may be written in any order; type them in dependency order
    graph = nx.DiGraph()
    for f in flows_ast:
        graph.add_node(f.name)
        for n in ast.names(f.value):
            if n in by_name and n != f.name:
                graph.add_edge(n, f.name)
            elif n == f.name:
                ck.err("NL141", f"flow `{f.name}` is defined in terms of itself", f.span)
                env.broken.add(f.name)
    try:
        order = list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible:
        cycle = cycle_of(graph)
        names = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
        ck.err("NL141", f"flows depend on each other in a cycle: {names}", by_name[cycle[0][0]].span)
        env.broken.update(by_name)
        return []
    out = []
    for name in order:
        f = by_name[name]
        if name in env.broken:  # defined in terms of itself
            continue
        size = typeof(ck, f.value, env, [], f"{owner}.{name}")
        if size is None:
            env.broken.add(name)
            continue
        if constant(f.value, env):  # a constant under a name: what reads it folds it, as the backend does
            v = value(ck, f.value, env, f"flow `{name}`")
            if v is None:
                env.broken.add(name)
                continue
            env.consts = {**env.consts, name: v}
        else:
            env.values[name] = size
        out.append(FlowSpec(name=name, value=f.value, size=size, span=f.span))
    written: dict[str, int] = {}
    for i, f in enumerate(flows_ast):
        written.setdefault(f.name, i)
    return sorted(out, key=lambda f: written[f.name])  # in the order they are written
