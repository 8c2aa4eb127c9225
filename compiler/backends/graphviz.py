"""The level diagram: nested clusters, slowest level outermost, as in the paper's
figures. DOT text needs nothing installed; SVG and PNG go through Graphviz's `dot`."""
from __future__ import annotations

import math
import shutil
import subprocess

import networkx as nx

from ..ir import LevelGraph, build, level_name, schedule_of
from ..spec import MemorySpec
from ..stats import group_shapes

FONT = "Helvetica"
# Fills say one thing each. Tiers: a colour per nesting depth, warm (outermost, slowest)
# to cool (innermost, fastest), so a level's frequency shows at a glance; deeper tiers
# keep the coolest. Grey: a frozen tier, and nothing else. White: levels, memories, W.
# Optimizers: dashed and unfilled, around what they train.
PALETTE = ["#fde0c5", "#fcefc7", "#e6f2d9", "#d5efe9", "#d7ebf5", "#dcdff5", "#e2dcf2"]
FROZEN = "#dddddd"
WHITE = "#ffffff"
DASHED = 'style="rounded,dashed"; color="#333333"'


class DotMissing(RuntimeError):
    pass


def _q(s: str) -> str:
    """A DOT double-quoted string; spec names are identifiers, but labels hold text."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _id(node: str) -> str:
    return _q(node)


def _memory_label(m: MemorySpec, d: dict) -> str:
    if m.kind == "elementwise":
        shape = "like W"
    elif m.kind == "attention":
        shape = (f"window {m.window}" if m.window else "causal") + (", alibi" if m.alibi else "")
    else:
        shape = f"{m.d_in}→{m.d_out}" if m.d_in != m.d_out else f"{m.d_in}"
        if m.kind == "mlp":
            shape += f", hidden {m.hidden}" + (", residual" if m.residual else "")
    heads = f" ×{m.heads} heads" if m.heads > 1 else ""
    learn = ""
    if d.get("objective"):
        rule = f" · {d['rule']}" if d.get("rule") else ""
        rule += f", {d['order']}" if d.get("order") else ""
        rule += f", {d['steps']}" if d.get("steps") else ""
        read = " · read within" if d.get("read") == "within" else ""
        learn = f"\n{d['objective']}{rule}{read}"
    return f"{m.name}\n{m.kind}({shape}){heads}{learn}"


def _level_label(node: str, d: dict, schedule: bool = False) -> str:
    name = level_name(node) + (f"  × {d['copies']}" if d.get("copies", 1) > 1 else "")
    lv = d["spec"]
    parts = [name, d["period"] if lv.scope != "outer" else "outer (every 1 step)"]
    learned = sorted({f"{l.objective}" + (f" · {l.rule}" if l.rule else "") + (", decay first" if l.decay_first else "")
                      + (", per token" if l.per_token else "") for l in lv.learns})
    if lv.scope == "cross":
        learned = ["task · multi-rate outer steps"]
    if lv.scope == "frozen":
        learned = []  # the period line already says it
    parts += learned
    if d.get("params"):
        parts.append(f"{d['params']:,} params")
    if schedule:
        parts += [f"▸ {line}" for line in schedule_of(d)]
    return "\n".join(parts)


def to_dot(ir: LevelGraph, schedule: bool = False) -> str:
    """The diagram; with `schedule`, each level also says how the fused path runs it
    (whole periods at once, the memories held stacked, the tile, the kernel hint)."""
    g = ir.graph
    out = [f"digraph {_q(ir.spec.name)} {{",
           f"  graph [compound=true, rankdir=TB, fontname={_q(FONT)}, fontsize=11, labeljust=l, "
           f"label={_q(_title(ir))}, labelloc=t, newrank=true];",
           f"  node [fontname={_q(FONT)}, fontsize=10, shape=box, style=\"rounded,filled\", fillcolor=white];",
           f"  edge [fontname={_q(FONT)}, fontsize=9, color=\"#555555\"];"]
    owns = ir.of_kind("owns")
    owns.add_nodes_from(n for n, d in g.nodes(data=True) if d["kind"] in ("tier", "optimizer"))
    members = ir.of_kind("member")
    anchor: dict[str, str] = {}  # a cluster's node, for edges between clusters
    drawn: set[str] = set()
    # Several optimizer lines (parameter groups) share W's tier and the tiers of their
    # levels, so no one of them is drawn around the hierarchy: each gets a box, in each
    # tier, around its own levels and its part of W.
    parts = _parts(ir)
    if parts:
        owns.remove_nodes_from(parts)

    def cluster(cid: str, label: str, style: str, indent: str, inner=(), fill=None) -> None:
        """A cluster with its label, lines of its own, then what `fill` writes inside."""
        out.append(f"{indent}subgraph {_q('cluster_' + cid)} {{")
        out.append(f"{indent}  label={_q(label)}; {style};")
        out.extend(f"{indent}  {line}" for line in inner)
        if fill:
            fill(indent + "  ")
        out.append(f"{indent}}}")

    def emit_all(children: list[str], depth: int, indent: str, only: str | None = None) -> None:
        for c in children:
            emit(c, depth, indent, only)

    def owned(node: str) -> list[str]:
        return sorted(owns.successors(node), key=_order(g)) if node in owns else []

    def optimizers_below(node: str) -> tuple[set[str], bool]:
        """The optimizers with levels in `node`'s subtree, and whether a model's level or W is there."""
        below = nx.descendants(owns, node) | {node}
        opts = {_optimizer_of(n) for n in below if g.nodes[n].get("scope") == "optimizer"}
        return opts, any(n == "weights" or g.nodes[n].get("scope") not in (None, "optimizer") for n in below)

    def tier_children(node: str, depth: int, indent: str, only: str | None) -> None:
        """A tier's contents. With parameter groups, what belongs to one optimizer (its
        levels, the tiers holding only optimizers' levels, its part of W) goes in that
        optimizer's box; `only` names the box being filled."""
        boxes = {only} if only else set(parts)
        mine: dict[str, list[str]] = {o: [] for o in parts}
        for c in owned(node):
            opts, model = optimizers_below(c)
            if parts and c == "weights":
                opts = boxes  # each optimizer draws its own part of W
            elif model or not parts:
                emit(c, depth, indent)
                continue
            for o in opts & boxes:
                mine[o].append(c)
        for o, children in mine.items():
            if o == only:
                emit_all(children, depth, indent, o)
            elif children:
                cluster(f"{o}@{node}", _optimizer_label(g.nodes[o], parts[o]), DASHED, indent,
                        fill=lambda ind, o=o, children=children: emit_all(children, depth, ind, o))

    def emit(node: str, depth: int, indent: str, only: str | None = None) -> None:
        d = g.nodes[node]
        kind = d["kind"]
        if kind == "optimizer":
            drawn.add("input:g")
            cluster(node, _optimizer_label(d, []), DASHED, indent,
                    [f"{_id('input:g')} [label=\"g = ∇W L\", shape=plain];"],
                    lambda ind: emit_all(owned(node), depth, ind))
        elif kind == "tier":
            color = FROZEN if d["tokens"] == float("inf") else PALETTE[min(depth, len(PALETTE) - 1)]
            cluster(_part(node, only), d["period"], f'style="rounded,filled"; fillcolor={_q(color)}; color="#999999"',
                    indent, fill=lambda ind: tier_children(node, depth + 1, ind, only))
        elif kind == "level":
            mems = []
            for m in sorted(members.successors(node)) if node in members else ():
                md = g.nodes[m]
                mems.append(f"{_id(m)} [label={_q(_memory_label(md['spec'], md))}];")
                anchor.setdefault(node, m)
                drawn.add(m)
            cluster(node, _level_label(node, d, schedule), f"style=\"rounded,filled\"; fillcolor={_q(WHITE)}; color=\"#666666\"",
                    indent, mems)
        elif kind == "weights":
            if only is None:
                label = "W: outer parameters" + (f"\n{d['params']:,} params" if d.get("params") else "")
            else:
                uses = parts[only]
                label = (f"W: {', '.join(u.selector for u in uses)}\n"
                         f"{sum(math.prod(s) for u in uses for s in group_shapes(ir, u.selector)):,} params")
            node = _part(node, only)
            drawn.add(node)
            out.append(f"{indent}{_id(node)} [label={_q(label)}, shape=box3d, fillcolor={_q(WHITE)}];")

    roots = sorted((n for n in owns if owns.in_degree(n) == 0), key=_order(g))
    for r in roots:
        emit(r, 0, "  ")
    for name, label in (("input:g", "g = ∇W L"), ("input:x", "x (tokens → embedding)")):
        if name in g and name not in drawn:
            drawn.add(name)
            out.append(f"  {_id(name)} [label={_q(label)}, shape=plain];")
    # the residual stream reaches every later level; draw only its direct links
    stream = nx.DiGraph([(u, v) for u, v, k in g.edges(data="kind")
                         if k == "flow" and u != v and g.nodes[v]["kind"] == "level"
                         and g.nodes[u]["kind"] in ("level", "input")])
    indirect = set(stream.edges) - set(nx.transitive_reduction(stream).edges) if stream else set()
    reads_g = {o: build(uses[0].optimizer).graph.has_edge("input:g", "weights") for o, uses in parts.items()}
    for u, v, d in sorted(g.edges(data=True)):
        if d["kind"] != "flow" or (u, v) in indirect:
            continue
        if u == "input:x" and v.startswith("memory:"):
            continue  # the block's stream enters the level once; its memories all read it
        for u2, v2 in _split_weights(u, v, parts, reads_g):
            a, b = anchor.get(u2, u2), anchor.get(v2, v2)
            if a not in drawn or b not in drawn:
                continue
            attrs = [f"label={_q(d.get('label', ''))}"]
            if u2 != a:
                attrs.append(f"ltail={_q('cluster_' + u2)}")
            if v2 != b:
                attrs.append(f"lhead={_q('cluster_' + v2)}")
            if u.startswith("level:") and v.startswith("level:"):
                attrs.append("penwidth=2, color=\"#222222\"")
            out.append(f"  {_id(a)} -> {_id(b)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _parts(ir: LevelGraph) -> dict[str, list]:
    """Each optimizer node and its `optimizer ... for GROUP` lines, when a model has
    several lines; empty when one optimizer trains everything."""
    uses = ir.spec.optimizers if ir.is_model else []
    if len(uses) < 2:
        return {}
    return {n: [u for u in uses if (u.optimizer.name, u.selector) == (d["name"], d["selector"])]
            for n, d in sorted(ir.graph.nodes(data=True)) if d["kind"] == "optimizer"}


def _optimizer_of(node: str) -> str:
    """`optimizer:adamw` for an optimizer's level or memory (`level:adamw/moments`)."""
    return "optimizer:" + node.split(":", 1)[1].split("/", 1)[0]


def _part(node: str, only: str | None) -> str:
    return node if only is None else f"{node}@{only}"


def _split_weights(u: str, v: str, parts: dict, reads_g: dict) -> list[tuple[str, str]]:
    """An edge at W, drawn at the parts of W it concerns when parameter groups split it:
    an optimizer's memories update its own part, g reaches the updates that read it,
    and every part has a gradient."""
    if not parts or "weights" not in (u, v):
        return [(u, v)]
    if u == "weights":
        return [(_part(u, o), v) for o in parts]
    if u.startswith("memory:"):
        return [(u, _part(v, _optimizer_of(u)))]
    return [(u, _part(v, o)) for o in parts if reads_g[o]]


def _optimizer_label(d: dict, uses: list) -> str:
    groups = ", ".join(u.selector for u in uses) if uses else d["selector"]
    return f"optimizer {d['name']}" + (f" (for {groups})" if groups != "all" else "") + "\n" + d["hparams"]


def _order(g):
    def key(n):
        d = g.nodes[n]
        return ({"weights": 0, "level": 1, "tier": 2, "optimizer": 3}.get(d["kind"], 4), -d.get("tokens", 0), n)
    return key


def _title(ir: LevelGraph) -> str:
    s = ir.spec
    if ir.is_model:
        st = s.settings
        return (f"{s.name}: vocab {int(st['vocab'])}, dim {int(st['dim'])}, heads {int(st['heads'])}, "
                f"context {int(st['context'])}, batch {int(st['batch'])} · levels nested slowest outermost")
    return f"optimizer {s.name} · levels nested slowest outermost"


def render(dot: str, fmt: str) -> bytes:
    """SVG or PNG bytes from DOT text, through Graphviz's `dot` program."""
    exe = shutil.which("dot")
    if exe is None:
        raise DotMissing("Graphviz's `dot` program is not installed, so only DOT text can be written. "
                         "Install it (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install graphviz`) "
                         "or write `-o diagram.dot`.")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
