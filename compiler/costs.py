"""What a spec's levels cost per token, estimated from the checked spec and its level
graph before anything runs (docs/semantics.md §9). Without torch, so that `check`
can warn about a cost (NL158) as fast as it checks.

The inner gradient of a `task` level (docs/semantics.md §10) is a backward pass from
its period's next-token loss to its state: through the head, every level the stream
takes after it, and its own memories. Taken exactly (not `detach`), the outer
backward differentiates that pass again (≈ 2× its cost), and while a faster exact
task level's update is given to it, the pass also runs back to that level's state,
whose gradient `Given` then drops (runtime/model.py). So the exact cost grows with
the task levels stacked on one stream, about quadratically; `detach` takes it back
to the first-order pass.
"""
from __future__ import annotations

import math

import networkx as nx

from .ast import Call, walk
from .ast import names as _names
from .ir import LevelGraph, build
from .spec import LevelSpec, MemorySpec, ModelSpec

# `check` warns (NL158) when a model's training step per token, its task levels'
# inner gradients taken exactly, is estimated at more than this many times the same
# step with every task memory `detach` (first order): then the second-order part
# costs more than the whole first-order step (forward, outer backward and the inner
# gradients), and `detach` would more than halve the step.
RATIO = 2.0


def memory_flops(m: MemorySpec, lv: LevelSpec, s) -> float:
    """Forward FLOPs per token: reading the memory, and in-sequence learning (a
    gradient per item, about twice a read, plus applying the update once a period)."""
    return read_flops(m, lv, s) + learn_flops(m, lv)


def read_flops(m: MemorySpec, lv: LevelSpec, s) -> float:
    """Reading the memory at a token: attention over the mean causal span, 2·|θ| for a
    linear or mlp memory, once more for each `self(...)` target of its learn statement."""
    if m.kind == "attention":
        T = int(s["context"])
        w = min(m.window or T, T)
        keys = (w * (w + 1) / 2 + (T - w) * w) / T  # mean over positions of min(t, w) keys attended
        return 4 * s["dim"] * (keys + m.persistent)
    learn = lv.learn_of(m.name)
    if lv.scope != "sequence" or learn is None:
        return 2 * m.state_numel
    targets = 1 + sum(1 for e in (learn.key, learn.value) if e is not None and "self" in _names(e))
    return 2 * m.state_numel * targets


def learn_flops(m: MemorySpec, lv: LevelSpec) -> float:
    """In-sequence learning per token: a gradient (≈ 2 reads) and the update, 2·|θ|/P."""
    if m.kind == "attention" or lv.scope != "sequence" or lv.learn_of(m.name) is None:
        return 0.0
    return 2 * 2 * m.state_numel + 2 * m.state_numel / lv.period.count


def _task(lv: LevelSpec) -> list[MemorySpec]:
    """The memories of an in-sequence level that learn on the outer task."""
    if lv.scope != "sequence":
        return []
    return [m for m in lv.memories if (l := lv.learn_of(m.name)) is not None and l.objective == "task"]


def _gradient(m: MemorySpec, lv: LevelSpec, s) -> float:
    """The gradient of a memory's state from the gradient of its read: every weight's
    gradient costs its product in the read (one read), and the gradient passes back
    through every layer but the first (an mlp's second: half a read)."""
    layers = 2 if m.kind == "mlp" else 1
    return read_flops(m, lv, s) * (2 - 1 / layers)


def _forward(lv: LevelSpec, s) -> float:
    """A copy's FLOPs on the stream's graph at a token: its reads, projections and
    in-context learning; a task memory's gradient is taken outside it (the inner
    gradient), so only its read. A backward pass through the level costs about this."""
    task = {m.name for m in _task(lv)}
    return (sum(read_flops(m, lv, s) + (0 if m.name in task else learn_flops(m, lv)) for m in lv.memories)
            + sum(2 * p.numel for p in lv.params if p.role == "proj"))


def _stream(ir: LevelGraph) -> tuple[list[tuple[str, int]], dict]:
    """Every level copy, (level, copy), with the copies the stream takes after it: after
    a copy come the levels its block's flows feed from it (the level graph's flow edges
    between levels) in the same pass of the block, every level of the block's later
    passes (`repeat`), and every level of the later blocks."""
    spec: ModelSpec = ir.spec
    feeds = nx.DiGraph((u, v) for u, v, k in ir.graph.edges(data="kind")
                       if k == "flow" and u.startswith("level:") and v.startswith("level:"))
    copies = [(lv, i) for b in spec.blocks for i in range(b.repeat) for lv in b.levels]
    after: dict[tuple[str, int], set] = {}
    for bi, b in enumerate(spec.blocks):
        later = {(lv, i) for c in spec.blocks[bi + 1:] for i in range(c.repeat) for lv in c.levels}
        for i in range(b.repeat):
            for lv in b.levels:
                node = f"level:{lv}"
                within = {n.split(":", 1)[1] for n in nx.descendants(feeds, node)} if node in feeds else set()
                after[lv, i] = ({(x, i) for x in within if x in b.levels and x != lv}
                                | {(x, j) for j in range(i + 1, b.repeat) for x in b.levels} | later)
    return copies, after


def _carries(lv: LevelSpec) -> bool:
    """Whether a level holds something across tokens that its inputs made (attention's
    keys, an in-context memory's state, a convolution's tail): a backward pass through
    it goes on into the tokens before."""
    if lv.scope == "sequence" and any(m.kind == "attention" or (l := lv.learn_of(m.name)) is not None
                                      and l.objective != "task" for m in lv.memories):
        return True
    return any(isinstance(c, Call) and c.func == "conv" for f in lv.flows for c in walk(f.value))


def _weights(n: int, carried: bool) -> list[float]:
    """How many inner gradient passes run through each of the n segments of a period.
    A segment's pass runs through the previous one too, by the prediction at its last
    token, whose pair with the segment's first token is in the loss; where a reached
    level carries state, back through every segment since the period began."""
    if carried:
        return [n - j for j in range(n)]
    return [2 if j < n - 1 else 1 for j in range(n)]


def task_costs(ir: LevelGraph) -> list[dict]:
    """Per period of the in-sequence task levels (levels of one period share one inner
    gradient pass), FLOPs per token of their inner gradients: `first`, taken first order
    (as with `detach`), and `exact`, as the model computes it, with the outer backward's
    second-order part and the passes run back to faster levels' given states; `ratio`
    exact/first. `reach` names the levels the pass goes through."""
    spec = ir.spec
    if not ir.is_model:
        return []
    s = spec.settings
    levels = {lv.name: lv for lv in spec.levels}
    copies, after = _stream(ir)
    before = {c: {d for d in copies if c in after[d]} for c in copies}
    fwd = {name: _forward(lv, s) for name, lv in levels.items()}
    own = {name: sum(_gradient(m, lv, s) for m in _task(lv)) for name, lv in levels.items()}
    # a level whose own gradient was taken passes the gradient on to its input: what a whole
    # backward through its memories (2 reads) leaves after that gradient
    rest = {name: fwd[name] + sum(read_flops(m, lv, s) - _gradient(m, lv, s) for m in _task(lv))
            for name, lv in levels.items()}
    head = 2 * s["dim"] * s["vocab"]
    tasks = [c for c in copies if _task(levels[c[0]])]
    exact = {c for c in tasks if any(not m.detach for m in _task(levels[c[0]]))}
    periods = sorted({levels[c[0]].period.count for c in tasks})
    if not periods:
        return []
    cut = math.gcd(*periods, *(levels[m.init.split(".")[0]].period.count for lv in levels.values()
                                for m in lv.memories if "." in m.init and levels[m.init.split(".")[0]].scope == "sequence"))
    rows = []
    for P in periods:
        group = [c for c in tasks if levels[c[0]].period.count == P]
        reach = set().union(*(after[c] for c in group))
        first_pass = head + sum(fwd[x] for x, _ in reach) + sum(own[x] for x, _ in group)
        n = P // cut
        w = _weights(n, any(_carries(levels[x]) for x, _ in reach))
        first = first_pass * sum(w) / n
        # faster exact task levels before this group on the stream: their updates inside
        # this period are given to it, but its pass still runs back to their states
        faster = [(Q, [c for c in exact if levels[c[0]].period.count == Q and any(c in before[g] for g in group)])
                  for Q in periods if Q < P]
        given_cost = 0.0
        for j in range(n):
            given = [c for Q, cs in faster if j * cut >= Q for c in cs]
            if given:
                path = {x for g in group for c in given if c in before[g] for x in after[c] & before[g]}
                path |= {g for g in group if any(c in before[g] for c in given)}
                given_cost += w[j] * (sum(rest[x] if (x, i) in group else fwd[x] for x, i in path)
                                      + sum(own[x] for x, _ in given))
        given_cost /= n
        is_exact = any(c in exact for c in group)
        total = first + (2 * first + given_cost if is_exact else given_cost)
        names = list(dict.fromkeys(x for x, _ in group))
        rows.append({"levels": names, "period": P, "copies": len(group), "passes": sum(w) / n,
                     "reach": sorted({x for x, _ in reach}), "first": first, "exact": total,
                     "given": given_cost, "ratio": total / first if first else 1.0,
                     "detach": not is_exact})
    return rows


def step_costs(ir: LevelGraph) -> dict:
    """A training step per token: forward and outer backward (≈ 3× the stream's forward,
    the head included) plus the task levels' inner gradients, `first` order or `exact`."""
    spec = ir.spec
    s = spec.settings
    copies, _ = _stream(ir)
    levels = {lv.name: lv for lv in spec.levels}
    base = 3 * (sum(_forward(levels[x], s) for x, _ in copies) + 2 * s["dim"] * s["vocab"])
    rows = task_costs(ir)
    first = base + sum(r["first"] for r in rows)
    exact = base + sum(r["exact"] for r in rows)
    return {"first": first, "exact": exact, "ratio": exact / first}


def cost_of(spec: ModelSpec) -> tuple[list[dict], dict]:
    """The task rows and the step's costs of a checked model, from its level graph."""
    ir = build(spec)
    return task_costs(ir), step_costs(ir)


def flops_text(x: float) -> str:
    """A count as `nldsl stats` writes it: 1.23M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.0f}"


def warn_costly(report, spec: ModelSpec) -> None:
    """NL158 at the learn statement of each exact task memory when the model's step,
    its inner gradients taken exactly, is estimated at more than RATIO× its first order."""
    rows, step = cost_of(spec)
    if step["ratio"] <= RATIO:
        return
    levels = {lv.name: lv for lv in spec.levels}
    for r in rows:
        if r["detach"]:
            continue
        for name in r["levels"]:
            lv = levels[name]
            for m in _task(lv):
                if m.detach:
                    continue
                learn = lv.learn_of(m.name)
                report.warning(
                    "NL158",
                    f"a training step of model `{spec.name}` is estimated at {step['ratio']:.1f}× its first-order "
                    f"cost ({flops_text(step['exact'])} against {flops_text(step['first'])} FLOPs per token): "
                    f"the exact inner gradient of `{name}` costs {r['ratio']:.1f}× its first-order "
                    f"{flops_text(r['first'])} FLOPs per token",
                    learn.span or lv.span,
                    f"write `detach` on the memory (`{m.name} : {m.kind}(..., detach)`) to take this gradient "
                    f"first order; `nldsl stats` shows what each task level costs")
