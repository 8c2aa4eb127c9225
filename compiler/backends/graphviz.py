"""The level diagram: nested clusters, slowest level outermost, as in the paper's
figures. DOT text needs nothing installed; SVG and PNG go through Graphviz's `dot`."""
from __future__ import annotations

import shutil
import subprocess

import networkx as nx

from ..ir import LevelGraph
from ..spec import MemorySpec

FONT = "Helvetica"
# a colour per nesting depth (outermost, slowest, first), so a level's frequency shows at a glance
PALETTE = ["#fde0c5", "#fcefc7", "#e6f2d9", "#d7ebf5", "#e2dcf2", "#eeeeee"]


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
        shape = f"window {m.window}" if m.window else "causal"
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


def _level_label(d: dict) -> str:
    name = d["name"] + (f"  × {d['copies']}" if d.get("copies", 1) > 1 else "")
    lv = d["spec"]
    parts = [name, d["period"] if lv.scope != "outer" else "outer (every 1 step)"]
    learned = sorted({f"{l.objective}" + (f" · {l.rule}" if l.rule else "") + (", decay first" if l.decay_first else "")
                      + (", per token" if l.per_token else "") for l in lv.learns})
    if lv.scope == "cross":
        learned = ["task · multi-rate outer steps"]
    if lv.scope == "frozen":
        learned = ["frozen"]
    parts += learned
    if d.get("params"):
        parts.append(f"{d['params']:,} params")
    return "\n".join(parts)


def to_dot(ir: LevelGraph) -> str:
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

    def cluster(node: str, label: str, style: str, depth: int, indent: str, inner=()) -> None:
        """A cluster with its label, any lines of its own, then the clusters it owns."""
        out.append(f"{indent}subgraph {_q('cluster_' + node)} {{")
        out.append(f"{indent}  label={_q(label)}; {style};")
        out.extend(f"{indent}  {line}" for line in inner)
        for child in sorted(owns.successors(node), key=_order(g)) if node in owns else ():
            emit(child, depth + 1, indent + "  ")
        out.append(f"{indent}}}")

    def emit(node: str, depth: int, indent: str) -> None:
        d = g.nodes[node]
        kind = d["kind"]
        if kind == "optimizer":
            label = f"optimizer {d['name']}" + (f" (for {d['selector']})" if d["selector"] != "all" else "")
            g_node = ([f"{_id('input:g')} [label=\"g = ∇W L\", shape=plain];"]
                      if "input:g" in g and node == _first_optimizer(g) else [])
            cluster(node, label + "\n" + d["hparams"], 'style="rounded,dashed"; color="#333333"', depth, indent, g_node)
        elif kind == "tier":
            color = PALETTE[min(depth, len(PALETTE) - 1)] if d["tokens"] != float("inf") else "#eeeeee"
            cluster(node, d["period"], f'style="rounded,filled"; fillcolor={_q(color)}; color="#999999"', depth, indent)
        elif kind == "level":
            mems = []
            for m in sorted(members.successors(node)) if node in members else ():
                md = g.nodes[m]
                mems.append(f"{_id(m)} [label={_q(_memory_label(md['spec'], md))}];")
                anchor.setdefault(node, m)
            cluster(node, _level_label(d), 'style="rounded,filled"; fillcolor=white; color="#666666"', depth, indent,
                    mems)
        elif kind == "weights":
            params = f"\n{d['params']:,} params" if d.get("params") else ""
            out.append(f"{indent}{_id(node)} [label={_q('W: outer parameters' + params)}, shape=box3d, fillcolor=\"#ffffff\"];")

    roots = sorted((n for n in owns if owns.in_degree(n) == 0), key=_order(g))
    for r in roots:
        emit(r, 0, "  ")
    if "input:x" in g:
        out.append(f"  {_id('input:x')} [label=\"x (tokens → embedding)\", shape=plain];")
    # the residual stream reaches every later level; draw only its direct links
    stream = nx.DiGraph([(u, v) for u, v, k in g.edges(data="kind")
                         if k == "flow" and u != v and g.nodes[v]["kind"] == "level"
                         and g.nodes[u]["kind"] in ("level", "input")])
    indirect = set(stream.edges) - set(nx.transitive_reduction(stream).edges) if stream else set()
    for u, v, d in sorted(g.edges(data=True)):
        if d["kind"] != "flow" or (u, v) in indirect:
            continue
        if u == "input:x" and v.startswith("memory:"):
            continue  # the block's stream enters the level once; its memories all read it
        a, b = anchor.get(u, u), anchor.get(v, v)
        if a not in g or b not in g or g.nodes[a]["kind"] in ("level", "tier") or g.nodes[b]["kind"] in ("level", "tier"):
            continue
        attrs = [f"label={_q(d.get('label', ''))}"]
        if u != a:
            attrs.append(f"ltail={_q('cluster_' + u)}")
        if v != b:
            attrs.append(f"lhead={_q('cluster_' + v)}")
        if u.startswith("level:") and v.startswith("level:"):
            attrs.append("penwidth=2, color=\"#222222\"")
        out.append(f"  {_id(a)} -> {_id(b)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _first_optimizer(g) -> str | None:
    opts = sorted(n for n, d in g.nodes(data=True) if d["kind"] == "optimizer")
    return opts[0] if opts else None


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
