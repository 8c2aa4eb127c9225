"""The level graph: a checked spec as a networkx graph of levels, memories and flows.

Nodes (ids are strings, attributes say the rest):
  `level:NAME`    a declared level          kind="level"
  `memory:L.M`    memory M of level L       kind="memory"
  `input:x`       the block's stream        kind="input"   (`input:g` for optimizers)
  `weights`       all outer parameters W    kind="weights"
  `optimizer:O`   the outer optimizer O     kind="optimizer"
  `tier:N`        a derived frequency level kind="tier"
After the pass `lower`, each model level and each optimizer also holds its torch.fx
step (`step`) and runtime description (`desc`), and the graph the model's segment:
what the torch and Python backends build from.
Edges carry `kind`: "flow" (a context flow: source -> the memory it feeds, with the
flow names as `label`), "member" (level -> its memories), "owns" (a slower tier or
the optimizer -> what it nests; forms one tree).

The passes in `PASSES` run in order, each checked by `verify()` after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from . import ast
from .spec import LevelSpec, ModelSpec, OptimizerSpec


class IRError(Exception):
    """An IR invariant broke: a compiler bug, not a user mistake."""


@dataclass
class LevelGraph:
    spec: ModelSpec | OptimizerSpec
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    tiers: list[dict] = field(default_factory=list)  # fastest first, filled by `derive_tiers`
    segment: object = None  # the model's segment graph (torch.fx), filled by `lower`
    segment_made: list = field(default_factory=list)  # the outer parameters it names, filled by `lower`
    # (graph, view, schedule) -> its diagram: handed in by whoever gives the graph to a
    # person (nldsl.graph), so that the graph never imports the backends that read it
    draw: object = None

    @property
    def is_model(self) -> bool:
        return isinstance(self.spec, ModelSpec)

    def _ordering(self) -> nx.DiGraph:
        # member and owns edges form a DAG over every node; flows may loop (self-generated values)
        g = nx.DiGraph()
        g.add_nodes_from(self.graph)
        g.add_edges_from((u, v) for u, v, k in self.graph.edges(data="kind") if k != "flow")
        return g

    def of_kind(self, kind: str) -> nx.DiGraph:
        """The edges of one kind ("flow", "member", "owns") as a graph of their own."""
        return nx.DiGraph([(u, v) for u, v, k in self.graph.edges(data="kind") if k == kind])

    def verify(self) -> None:
        g = self.graph
        for n, d in g.nodes(data=True):
            if "kind" not in d:
                raise IRError(f"node {n} has no kind")
        for u, v, d in g.edges(data=True):
            if d.get("kind") not in ("flow", "member", "owns"):
                raise IRError(f"edge {u}->{v} has kind {d.get('kind')!r}")
        for m in (n for n, d in g.nodes(data=True) if d["kind"] == "memory"):
            owners = [u for u, _, k in g.in_edges(m, data="kind") if k == "member"]
            if len(owners) != 1:
                raise IRError(f"memory {m} belongs to {len(owners)} levels")
        if not nx.is_directed_acyclic_graph(self._ordering()):
            raise IRError("member/owns edges form a cycle")
        owns = self.of_kind("owns")
        if owns and not nx.is_branching(owns):
            raise IRError("something has two owners, or ownership loops")
        for graph in [d["step"] for _, d in g.nodes(data=True) if "step" in d] + [self.segment] * bool(self.segment):
            try:
                graph.lint()
            except RuntimeError as e:
                raise IRError(f"a lowered step is malformed: {e}") from None

    def describe(self) -> str:
        """A readable listing, for `nldsl ir`."""
        out = [f"{'model' if self.is_model else 'optimizer'} {self.spec.name}"]
        for n in nx.lexicographical_topological_sort(self._ordering()):
            d = self.graph.nodes[n]
            attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(d.items()) if k not in HIDDEN)
            plan = schedule_of(d)
            out.append(f"  {d['kind']:<9} {n:<28} {attrs}" + (f", schedule={'; '.join(plan)}" if plan else ""))
        for u, v, d in sorted(self.graph.edges(data=True)):
            label = f"  [{d['label']}]" if d.get("label") else ""
            out.append(f"  {d['kind']:<9} {u} -> {v}{label}")
        steps = [(n, d["step"]) for n, d in sorted(self.graph.nodes(data=True)) if "step" in d]
        for n, graph in steps + [("the segment", self.segment)] * bool(self.segment):
            out.append(f"  step of {n}:" if n != "the segment" else "  segment of the model:")
            code = graph.python_code("self").src.strip("\n")
            out += ["    " + line for line in code.splitlines() if line.strip()]
        return "\n".join(out)

    def diagram(self, view: str = "levels", schedule: bool = False):
        """The level diagram as an object a notebook shows (SVG, or its DOT text
        without Graphviz's `dot`); `str()` of it is the DOT text. Compact by default.
        None for a graph given no drawing (`draw`)."""
        return None if self.draw is None else self.draw(self, view=view, schedule=schedule)

    def _repr_svg_(self) -> str | None:
        d = self.diagram()
        return None if d is None else d._repr_svg_()

    def _repr_html_(self) -> str | None:
        d = self.diagram()
        return None if d is None else d._repr_html_()

    def describe_levels(self) -> str:
        """The derived level hierarchy, slowest first (as nested in the diagram)."""
        out = [f"levels of {self.spec.name}, slowest first:"]
        for i, tier in enumerate(reversed(self.tiers)):
            names = ", ".join(level_name(n) for n in tier["nodes"])
            params = f"{tier['params']:,} params" if tier.get("params") else ""
            out.append(f"  {'  ' * 0}{len(self.tiers) - i:>2}. {tier['label']:<22} {names}  {params}".rstrip())
        return "\n".join(out)


HIDDEN = ("kind", "spec", "step", "made", "desc")  # attributes `describe` does not list as they are


FORMS = {"chunk": "chunk-parallel delta rule", "mlp": "a period as one node", None: "period by period"}


def schedule_of(d: dict) -> list[str]:
    """How the fused path runs a level, as its description (after the passes) says:
    whole periods in one call and how each learning memory runs them (with its tile, and
    the Triton kernel that runs it on CUDA), or the memories held stacked; the kernel hint."""
    desc = d.get("desc")
    if desc is None or not hasattr(desc, "parallel"):
        return []
    out = ["whole periods at once"] if desc.parallel else []
    for m in desc.memories if desc.parallel else ():
        if m.objective in ("l2", "dot"):
            tile = f", tile {desc.tile}" if m.form == "chunk" else ""
            kernel = f"; Triton {m.triton} on CUDA" if m.triton and desc.kernel != "torch" else ""
            out.append(f"{m.name}: {FORMS[m.form]}{tile}{kernel}")
    out += [f"stacked {'+'.join(names)}" for names in desc.stacks if desc.group]
    if desc.kernel is not None:
        out.append(f"kernel {desc.kernel}")
    return out


def level_name(node: str) -> str:
    """A level as `nldsl ir --levels`, `nldsl stats` and the diagram name it: its node id
    without `level:` (`titans`; `adamw/moments` for an optimizer's level, which two
    optimizers may both call `moments`), and `W` for the outer parameters."""
    return "W" if node == "weights" else node.split(":", 1)[1]


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# ------------------------------------------------------------------ build
def build(spec: ModelSpec | OptimizerSpec) -> LevelGraph:
    ir = LevelGraph(spec)
    g = ir.graph
    if isinstance(spec, ModelSpec):
        g.add_node("input:x", kind="input", label="x")
        g.add_node("weights", kind="weights", label="W", period="every 1 step")
        depth = spec.depth_of
        for lv in spec.levels:
            _add_level(g, lv, depth.get(lv.name, 1), "input:x")
        names = [opt.optimizer.name for opt in spec.optimizers]
        for i, opt in enumerate(spec.optimizers):  # one optimizer on two groups is two: name them by group
            key = opt.optimizer.name if names.count(opt.optimizer.name) == 1 else f"{opt.optimizer.name}[{opt.selector}]"
            _add_optimizer(g, opt.optimizer, opt.selector, key, i)
        for b in spec.blocks:
            _block_flows(g, b, {lv.name for lv in spec.levels})
    else:
        g.add_node("input:g", kind="input", label="g")
        g.add_node("weights", kind="weights", label="W", period="every 1 step")
        _add_optimizer(g, spec, "all")
    return ir


def _block_flows(g: nx.DiGraph, block, levels: set[str]) -> None:
    """Edges of the block's stream: which level's output reaches which level's input.
    `producers` maps each block variable to the levels its value came through."""
    producers: dict[str, set[str]] = {"x": set()}
    for a in block.body:
        made: set[str] = set()
        for call in (n for n in ast.walk(a.value) if isinstance(n, ast.Call) and n.func in levels):
            feeding = set().union(*(producers.get(v, set()) for v in ast.names(call.args[0].value)))
            for src in sorted(feeding) or ["input:x"]:
                _label_edge(g, src if src == "input:x" else f"level:{src}", f"level:{call.func}", {"x"})
            made.add(call.func)
        producers[a.name] = made | set().union(*(producers.get(v, set()) for v in ast.names(a.value)))


def _add_level(g: nx.DiGraph, lv: LevelSpec, copies: int, stream: str, prefix: str = "",
               shared: dict[str, str] | None = None, outer_flows=()) -> None:
    """A level node, its memories, and the context flows that feed each memory.
    `shared` maps memory names visible here to node ids (an optimizer's memories are
    visible across its levels); `outer_flows` are flows defined outside the level."""
    lid = f"level:{prefix}{lv.name}"
    g.add_node(lid, kind="level", name=lv.name, period=str(lv.period), scope=lv.scope, copies=copies, spec=lv)
    visible = dict(shared or {})
    for m in lv.memories:
        mid = f"memory:{prefix}{lv.name}.{m.name}"
        learn = lv.learn_of(m.name)
        g.add_node(mid, kind="memory", name=m.name, memory=m.kind, spec=m,
                   objective=learn.objective if learn else None, rule=learn.rule if learn else None,
                   read=learn.read if learn else None)
        if learn is not None and learn.decay_first:  # Gated DeltaNet's order of decay and step
            g.nodes[mid]["order"] = "decay first"
        if learn is not None and learn.per_token:  # Titans' mini-batch rule: a step at every token
            g.nodes[mid]["steps"] = "per token"
        if learn is not None and learn.mean:  # the period's mean loss (TTT's mini-batch)
            g.nodes[mid]["mean"] = True
        g.add_edge(lid, mid, kind="member")
        visible[m.name] = mid
    flows = {f.name: f for f in (*outer_flows, *lv.flows)}
    through: dict[str, dict[str, set[str]]] = {}  # flow -> what it reads, with the flows between

    def direct(e) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for name in ast.names(e):
            if name in flows:
                for src, labels in through.get(name, {}).items():
                    found.setdefault(src, set()).update(labels | {name})
            elif name in ("x", "g"):
                found.setdefault(stream, set()).add(name)
            elif name in visible:
                found.setdefault(visible[name], set())
        return found

    def sources(e) -> dict[str, set[str]]:
        """The memories and inputs an expression reads, through flows, with the flow names.
        Each flow is summarised once, after the flows it reads, from an explicit stack: a
        long chain of flows must neither recurse as deep as it is long nor be walked again
        for every flow that reads it."""
        todo, entered = [n for n in ast.names(e) if n in flows], set()
        while todo:
            name = todo[-1]
            if name in through:
                todo.pop()
                continue
            entered.add(name)  # a flow reached again while its own are summarised: a cycle, not followed
            waiting = [n for n in ast.names(flows[name].value) if n in flows and n not in through and n not in entered]
            if waiting:
                todo.extend(waiting)
            else:
                through[name] = direct(flows[name].value)
                todo.pop()
        return direct(e)

    for l in lv.learns:
        target = visible[l.memory]
        for role, e in (("key", l.key), ("value", l.value), ("lr", l.lr), ("decay", l.decay), ("beta", l.beta)):
            if e is None:
                continue
            for src, labels in sources(e).items():
                _label_edge(g, src, target, labels or {role})
            if "self" in ast.names(e):
                _label_edge(g, target, target, {"self"})


def _label_edge(g: nx.DiGraph, u: str, v: str, labels: set[str]) -> None:
    if g.has_edge(u, v):
        labels = labels | set(filter(None, g.edges[u, v]["label"].split(", ")))
    g.add_edge(u, v, kind="flow", label=", ".join(sorted(labels)))


def _add_optimizer(g: nx.DiGraph, opt: OptimizerSpec, selector: str, key: str | None = None, index: int = 0) -> None:
    """An optimizer node (`index`: its line among the model's `optimizer` lines), its levels and memories."""
    key = key or opt.name
    g.add_node(f"optimizer:{key}", kind="optimizer", name=opt.name, selector=selector, index=index, spec=opt,
               hparams=", ".join(f"{k}={_fmt(v)}" for k, v in opt.hparams.items()))
    g.add_node("input:g", kind="input", label="g")
    if "input:x" in g:
        _label_edge(g, "weights", "input:g", {"∇L"})
    prefix = f"{key}/"
    shared = {m.name: f"memory:{prefix}{lv.name}.{m.name}" for lv in opt.levels for m in lv.memories}
    for lv in opt.levels:
        _add_level(g, lv, 1, "input:g", prefix, shared, opt.flows)
    used = set().union(*(ast.names(u.value) for u in opt.updates))
    for f in opt.flows:
        if f.name in used:
            used |= ast.names(f.value)
    for name, mid in shared.items():
        if name in used:
            _label_edge(g, mid, "weights", {"update"})
    if "g" in used:
        _label_edge(g, "input:g", "weights", {"g"})


