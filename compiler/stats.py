"""`nldsl stats`: what a spec costs before it runs."""
from __future__ import annotations

from .costs import flops_text, step_costs, task_costs
from .ir import LevelGraph, level_name


_n = flops_text  # 1.23M


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


HEAD = ("level", "period", "copies", "outer params", "state/seq", "FLOPs/token")


def _cells(ir: LevelGraph) -> list[tuple[str, ...]]:
    """The table's rows as text, one per level, in the columns of `HEAD`."""
    return [(r["level"], r["period"] if r["scope"] != "outer" else "outer", str(r["copies"]), f"{r['params']:,}",
             f"{r['state']:,}", _n(r["flops"])) for r in level_rows(ir)]


def _summary(ir: LevelGraph) -> list[tuple[str, str]]:
    """The totals below the table, as (what, how much); none for an optimizer alone."""
    if not ir.is_model:
        return []
    t = totals(ir)
    s = ir.spec.settings
    return [("parameters (all outer):", f"{t['params']:,}"),
            ("inner state per sequence:", f"{t['state']:,} numbers ({_n(4 * t['state'])}B in fp32)"),
            ("optimizer state:", f"{t['optimizer_state']:,} numbers"),
            ("FLOPs per token, forward:", f"{_n(t['flops'])}  (training ≈ 3× forward: {_n(3 * t['flops'])})"),
            (f"one step (batch {int(s['batch'])} × context {int(s['context'])}):",
             f"{_n(3 * t['flops'] * s['batch'] * s['context'])} FLOPs")]


def _title(ir: LevelGraph) -> str:
    return f"{'model' if ir.is_model else 'optimizer'} {ir.spec.name}"


def stats_table(ir: LevelGraph) -> str:
    body = _cells(ir)
    widths = [max(len(x[i]) for x in [HEAD] + body) for i in range(len(HEAD))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [_title(ir), line(HEAD), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    summary = _summary(ir)
    if summary:
        out += [""] + [f"{what:<30} {value}" for what, value in summary[:-1]] + ["{} {}".format(*summary[-1])]
    return "\n".join(out + task_table(ir))


def task_table(ir: LevelGraph) -> list[str]:
    """The inner gradients of the task levels, per period (compiler/costs.py): FLOPs per
    token first order and as computed, and the training step's both ways."""
    body = _task_cells(ir)
    if not body:
        return []
    head = TASK_HEAD
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return (["", TASK_TITLE + ":", line(head), line(["-" * w for w in widths])]
            + [line(r) for r in body] + [_task_step(ir)])


TASK_HEAD = ("task level", "period", "copies", "passes", "first order", "exact", "× first")
TASK_TITLE = "inner gradients of the task levels, FLOPs per token"


def _task_cells(ir: LevelGraph) -> list[tuple[str, ...]]:
    """The task levels' rows as text, in the columns of `TASK_HEAD`; none without task levels."""
    return [("+".join(r["levels"]), f"every {r['period']} tokens", str(r["copies"]), f"{r['passes']:.2f}",
             _n(r["first"]), _n(r["exact"]) + (" (detach)" if r["detach"] else ""), f"{r['ratio']:.2f}")
            for r in task_costs(ir)]


def _task_step(ir: LevelGraph) -> str:
    step = step_costs(ir)
    return (f"training per token, exact:     {_n(step['exact'])}  (first order: {_n(step['first'])}, "
            f"{step['ratio']:.2f}×)")


def _html_table(head, body, caption: str) -> str:
    """A table of text cells, numbers (the columns after the second) to the right."""
    from html import escape
    right = ' style="text-align:right"'
    cell = lambda tag, i, c: f"<{tag}{right if i >= 2 else ''}>{escape(c)}</{tag}>"  # noqa: E731
    return "\n".join([f"<table><caption style=\"text-align:left\"><b>{escape(caption)}</b></caption>",
                      "<thead><tr>" + "".join(cell("th", i, c) for i, c in enumerate(head)) + "</tr></thead><tbody>",
                      *("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in body),
                      "</tbody></table>"])


class Stats:
    """What `nldsl.stats` returns: prints as `nldsl stats` does, shows as a table in a
    notebook. `rows` are the levels' numbers (`level_rows`), `totals` the model's,
    `tasks` the task levels' inner gradients (`task_costs`), `step` a training step's
    FLOPs per token with them exact and first order (`step_costs`)."""

    def __init__(self, ir: LevelGraph):
        self.ir = ir
        self.rows = level_rows(ir)
        self.totals = totals(ir) if ir.is_model else None
        self.tasks = task_costs(ir)  # the task levels' inner gradients (compiler/costs.py)
        self.step = step_costs(ir) if self.tasks else None

    def __str__(self) -> str:
        return stats_table(self.ir)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape
        out = [_html_table(HEAD, _cells(self.ir), _title(self.ir))]
        summary = _summary(self.ir)
        if summary:
            out.append("<table><tbody>" + "".join(f"<tr><td>{escape(what.rstrip(':'))}</td><td>{escape(value)}</td></tr>"
                                                  for what, value in summary) + "</tbody></table>")
        tasks = _task_cells(self.ir)
        if tasks:
            out += [_html_table(TASK_HEAD, tasks, TASK_TITLE), f"<p>{escape(_task_step(self.ir))}</p>"]
        return "\n".join(out)
