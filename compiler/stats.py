"""`nldsl stats`: what a spec costs before it runs."""
from __future__ import annotations

from .ir import LevelGraph, level_name


def _n(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.0f}"


def level_rows(ir: LevelGraph) -> list[dict]:
    g = ir.graph
    rows = []
    for n, d in g.nodes(data=True):
        if d["kind"] == "level":
            rows.append({"level": level_name(n), "period": d["period"], "scope": d["scope"],
                         "copies": d["copies"], "params": d["params"], "state": d["state"], "flops": d["flops"]})
    order = {t: i for i, tier in enumerate(ir.tiers) for t in tier["nodes"]}
    return sorted(rows, key=lambda r: (order.get(f"level:{r['level']}", 99), r["level"]))


def outer_params(ir: LevelGraph) -> list[tuple[int, ...]]:
    """Shapes of every trained outer parameter, one entry per copy."""
    spec = ir.spec
    shapes = [p.shape for p in spec.params]
    shapes += [p.shape for b in spec.blocks for _ in range(b.repeat) for p in b.params]
    copies = spec.depth_of
    shapes += [p.shape for lv in spec.levels for _ in range(copies.get(lv.name, 1)) for p in lv.params]
    return shapes


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def group_shapes(ir: LevelGraph, selector: str) -> list[tuple[int, ...]]:
    """The outer parameters an `optimizer ... for SELECTOR` line trains: `matrices` have
    two or more dimensions, `vectors` fewer, `rest` are those no other line names."""
    shapes = outer_params(ir)
    groups = {"matrices": [s for s in shapes if len(s) >= 2], "vectors": [s for s in shapes if len(s) < 2]}
    if selector == "all":
        return shapes
    if selector == "rest":
        named = {u.selector for u in ir.spec.optimizers}
        return [s for k, g in groups.items() if k not in named for s in g]
    return groups[selector]


def optimizer_state(ir: LevelGraph) -> int:
    """Numbers the optimizers hold: an elementwise memory per coordinate of each
    parameter in its group, a coordinate-wise memory's own state per parameter."""
    total = 0
    for use in ir.spec.optimizers:
        group = group_shapes(ir, use.selector)
        for lv in use.optimizer.levels:
            for m in lv.memories:
                per = sum(_numel(s) for s in group) if m.kind == "elementwise" else m.state_numel * len(group)
                total += per
    return total


def totals(ir: LevelGraph) -> dict:
    g = ir.graph
    rows = level_rows(ir)
    params = sum(_numel(s) for s in outer_params(ir)) if ir.is_model else 0
    flops = sum(r["flops"] for r in rows if r["scope"] != "optimizer") + g.nodes["weights"].get("flops", 0)
    return {"params": params, "state": sum(r["state"] for r in rows),
            "optimizer_state": optimizer_state(ir) if ir.is_model else 0, "flops": flops}


def stats_table(ir: LevelGraph) -> str:
    rows = level_rows(ir)
    head = ("level", "period", "copies", "outer params", "state/seq", "FLOPs/token")
    body = [(r["level"], r["period"] if r["scope"] != "outer" else "outer", str(r["copies"]), f"{r['params']:,}",
             f"{r['state']:,}", _n(r["flops"])) for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [f"{'model' if ir.is_model else 'optimizer'} {ir.spec.name}", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    if ir.is_model:
        t = totals(ir)
        s = ir.spec.settings
        out += ["",
                f"parameters (all outer):        {t['params']:,}",
                f"inner state per sequence:      {t['state']:,} numbers ({_n(4 * t['state'])}B in fp32)",
                f"optimizer state:               {t['optimizer_state']:,} numbers",
                f"FLOPs per token, forward:      {_n(t['flops'])}  (training ≈ 3× forward: {_n(3 * t['flops'])})",
                f"one step (batch {int(s['batch'])} × context {int(s['context'])}): "
                f"{_n(3 * t['flops'] * s['batch'] * s['context'])} FLOPs"]
    return "\n".join(out)
