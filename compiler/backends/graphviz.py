"""The level diagram: nested clusters, slowest level outermost, as in the paper's
figures. DOT text needs nothing installed; SVG and PNG go through Graphviz's `dot`.

Two views of one drawing: `full` (each level a box of its memories and the flows
between them) and `levels` (each level one box, its memories collapsed, only the flows
between levels). In both, the flows between the same two drawn things are one edge."""
from __future__ import annotations

import html
import math
import shutil

import graphviz as _graphviz
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


VIEWS = ("full", "levels")


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
        shape += (f", {m.persistent} persistent" if m.persistent else "") + (", segment" if m.segment else "")
        shape += f", {m.items} items a token" if m.items > 1 else ""
    else:
        shape = f"{m.d_in}→{m.d_out}" if m.d_in != m.d_out else f"{m.d_in}"
        if m.kind == "mlp":
            shape += f", hidden {m.hidden}"
        shape += (", residual" if m.residual else "") + (", norm" if m.norm else "")
    heads = f" ×{m.heads} heads" if m.heads > 1 else ""
    learn = ""
    if d.get("objective"):
        rule = f" · {d['rule']}" if d.get("rule") else ""
        rule += f", {d['order']}" if d.get("order") else ""
        rule += f", {d['steps']}" if d.get("steps") else ""
        read = " · read within" if d.get("read") == "within" else ""
        learn = f"\n{d['objective']}{', mean' if d.get('mean') else ''}{rule}{read}"
    return f"{m.name}\n{m.kind}({shape}){heads}{learn}"


def _level_label(node: str, d: dict, schedule: bool = False, memories: list[str] | None = None) -> str:
    """A level's box: name, period, objective and rule, parameters; `memories` names
    its memories where they are collapsed into it."""
    name = level_name(node) + (f"  × {d['copies']}" if d.get("copies", 1) > 1 else "")
    lv = d["spec"]
    parts = [name, d["period"] if lv.scope != "outer" else "outer (every 1 step)"]
    learned = sorted({f"{l.objective}" + (", mean" if l.mean else "") + (f" · {l.rule}" if l.rule else "") + (", decay first" if l.decay_first else "")
                      + (", per token" if l.per_token else "") for l in lv.learns})
    if lv.scope == "cross":
        learned = ["task · multi-rate outer steps"]
    if lv.scope == "frozen":
        learned = []  # the period line already says it
    parts += learned
    if memories:
        parts.append(("memories " if len(memories) > 1 else "memory ") + ", ".join(memories))
    if d.get("params"):
        parts.append(f"{d['params']:,} params")
    if schedule:
        parts += [f"▸ {line}" for line in schedule_of(d)]
    return "\n".join(parts)


def to_dot(ir: LevelGraph, schedule: bool = False, view: str = "full") -> str:
    """The diagram; with `schedule`, each level also says how the fused path runs it
    (whole periods at once, the memories held stacked, the tile, the kernel hint).
    `view="levels"` draws each level as one box and only the flows between levels."""
    if view not in VIEWS:
        raise ValueError(f"no view `{view}`: choose {' or '.join(VIEWS)}")
    compact = view == "levels"
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
        elif kind == "level" and compact:
            names = [g.nodes[m]["name"] for m in sorted(members.successors(node))] if node in members else []
            drawn.add(node)
            out.append(f"{indent}{_id(node)} [label={_q(_level_label(node, d, schedule, names))}, "
                       f"fillcolor={_q(WHITE)}, color=\"#666666\"];")
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
    # where a flow's end is drawn: a memory collapsed into its level in the compact view
    owner = {m: lv for lv, m in members.edges} if compact else {}
    # the flows between the same two drawn ends, either way round, as one edge: its ends
    # (with the clusters they clip at), the labels each way, whether it is the block stream
    bundles: dict[frozenset, dict] = {}
    for u, v, d in sorted(g.edges(data=True)):
        if d["kind"] != "flow" or (u, v) in indirect:
            continue
        if u == "input:x" and v.startswith("memory:"):
            continue  # the block's stream enters the level once; its memories all read it
        for u2, v2 in _split_weights(u, v, parts, reads_g):
            u2, v2 = owner.get(u2, u2), owner.get(v2, v2)
            if compact and u2 == v2 and u2.startswith("level:"):
                continue  # a level's flows among its own memories: inside its box
            a, b = anchor.get(u2, u2), anchor.get(v2, v2)
            if a not in drawn or b not in drawn:
                continue
            ends = ((a, u2), (b, v2))
            e = bundles.setdefault(frozenset(ends), {"ends": ends, "labels": {}, "stream": False})
            e["labels"].setdefault(ends, set()).update(filter(None, d.get("label", "").split(", ")))
            e["stream"] |= u.startswith("level:") and v.startswith("level:")
    for e in bundles.values():
        (a, u2), (b, v2) = e["ends"]
        ways = e["labels"]
        if len(ways) == 1:
            label = ", ".join(sorted(ways[e["ends"]]))
        else:  # both ways: say what each way carries
            label = "\n".join(f"{_short(g, x)} → {_short(g, y)}: {', '.join(sorted(ways[(p, x), (q, y)]))}"
                              for (p, x), (q, y) in (e["ends"], e["ends"][::-1]))
        attrs = [f"label={_q(label)}"]
        if u2 != a:
            attrs.append(f"ltail={_q('cluster_' + u2)}")
        if v2 != b:
            attrs.append(f"lhead={_q('cluster_' + v2)}")
        if len(ways) == 2:
            attrs.append("dir=both")
        if e["stream"]:
            attrs.append("penwidth=2, color=\"#222222\"")
        out.append(f"  {_id(a)} -> {_id(b)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _short(g: nx.DiGraph, node: str) -> str:
    """What a bundled edge's label calls one of its ends: a memory or level by its name."""
    base = node.split("@", 1)[0]  # a part of W is still W
    d = g.nodes[base]
    return d["name"] if d["kind"] == "memory" else level_name(base) if d["kind"] in ("level", "weights") else d["label"]


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


def has_dot() -> bool:
    return shutil.which("dot") is not None


def render(dot: str, fmt: str) -> bytes:
    """SVG or PNG bytes from DOT text, through Graphviz's `dot` program (by way of the
    `graphviz` package)."""
    if not has_dot():
        raise DotMissing("Graphviz's `dot` program is not installed, so only DOT text can be written. "
                         "Install it (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install graphviz`) "
                         "or write `-o diagram.dot`.")
    try:
        return _graphviz.Source(dot).pipe(format=fmt, quiet=True)
    except _graphviz.ExecutableNotFound as e:
        raise DotMissing(str(e)) from None
    except _graphviz.CalledProcessError as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr or "")
        raise RuntimeError(f"dot failed: {stderr.strip()}") from None


def diagram(ir: LevelGraph, view: str = "levels", schedule: bool = False) -> "Diagram":
    """A level graph's diagram as a notebook shows it (`LevelGraph.draw`)."""
    return Diagram(to_dot(ir, schedule=schedule, view=view))


class Diagram:
    """A diagram as a notebook shows it: SVG where Graphviz's `dot` is installed, else
    its DOT text. `str()` is the DOT text."""

    def __init__(self, dot: str):
        self.dot = dot

    def __str__(self) -> str:
        return self.dot

    def __repr__(self) -> str:
        return f"<Diagram {self.dot.split(' {', 1)[0].removeprefix('digraph ')}>"

    def _repr_svg_(self) -> str | None:
        if not has_dot():
            return None
        return render(self.dot, "svg").decode()

    def _repr_html_(self) -> str | None:
        if has_dot():
            return None  # the SVG shows
        return ("<p><i>Graphviz's <code>dot</code> is not installed, so here is the diagram's DOT text "
                "(Debian/Ubuntu: <code>apt-get install graphviz</code>).</i></p>"
                f"<pre>{html.escape(self.dot)}</pre>")
