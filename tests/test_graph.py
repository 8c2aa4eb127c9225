"""Diagrams: golden DOT for HOPE in both views, determinism, nesting by frequency,
bundled edges, no `dot` needed.

Regenerate the golden files after an intended change with
    NLDSL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_graph.py
and review the diff.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl import cli
from nldsl.compiler import passes
from nldsl.compiler.backends import graphviz
from nldsl.compiler.driver import check
from nldsl.compiler.stats import level_rows

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "hope.dot"
GOLDEN_LEVELS = ROOT / "tests" / "golden" / "hope_levels.dot"


def hope_dot(view: str = "full") -> str:
    return graphviz.to_dot(passes.run(check(ROOT / "examples" / "hope.nl").models[0]), view=view)


@pytest.mark.parametrize("view, golden", [("full", GOLDEN), ("levels", GOLDEN_LEVELS)])
def test_hope_dot_matches_golden(view, golden):
    dot = hope_dot(view)
    if os.environ.get("NLDSL_UPDATE_GOLDEN"):
        golden.write_text(dot)
    assert dot == golden.read_text()


EDGE = re.compile(r'\s*"([^"]*)" -> "([^"]*)" \[label="((?:[^"\\]|\\.)*)"(.*)\];')


def edges(dot: str) -> list[tuple[str, str, str, str]]:
    """Each drawn edge: tail, head, label, the rest of its attributes."""
    return [m.groups() for m in map(EDGE.match, dot.splitlines()) if m]


def test_full_view_draws_the_flows_between_two_memories_as_one_edge_saying_each_way():
    """Read back from the drawing, the flows among HOPE's self-modifying memories are
    exactly the level graph's, each with its labels, though no two edges join the same
    two memories."""
    ir = passes.run(check(ROOT / "examples" / "hope.nl").models[0])
    titans = [n for n in ir.graph if n.startswith("memory:titans.")]
    want = {(u, v): set(d["label"].split(", ")) for u, v, d in ir.graph.edges(data=True)
            if d["kind"] == "flow" and u in titans and v in titans}
    assert len(want) == 21  # k, v, eta and alpha feed all five, mem itself
    drawn, pairs = {}, []
    for a, b, label, rest in edges(graphviz.to_dot(ir)):
        if a not in titans or b not in titans:
            continue
        pairs.append(frozenset((a, b)))
        if "dir=both" in rest:
            for way in label.split("\\n"):
                ends, carried = way.split(": ")
                x, y = ends.split(" → ")
                drawn[f"memory:titans.{x}", f"memory:titans.{y}"] = set(carried.split(", "))
        else:
            drawn[a, b] = set(label.split(", "))
    assert drawn == want
    assert len(pairs) == len(set(pairs)) == 15  # 6 both ways, 4 into mem, 5 loops


def test_levels_view_is_one_box_per_level_and_the_flows_between_levels():
    ir = passes.run(check(ROOT / "examples" / "hope.nl").models[0])
    dot = graphviz.to_dot(ir, view="levels")
    assert "memory:" not in dot and "subgraph \"cluster_level:" not in dot
    levels = {n for n, d in ir.graph.nodes(data=True) if d["kind"] == "level"}
    assert {n for n in levels if f'  "{n}" [label=' in dot} == levels  # each a box of its own
    assert 'label="titans  × 2\\nevery 16 tokens\\nl2 · gd, per token\\nmemories alpha, eta, k, mem, v\\n' \
           '101,896 params"' in dot
    # HOPE: the stream enters titans, then the continuum memory runs fast to slow; the
    # optimizer's moments read g and update W
    assert {(a, b, label) for a, b, label, _ in edges(dot)} == {
        ("input:x", "level:titans", "x"), ("level:titans", "level:cms1", "x"), ("level:cms1", "level:cms2", "x"),
        ("level:cms2", "level:cms3", "x"), ("input:g", "level:adamw/moments", "g"),
        ("level:adamw/moments", "weights", "update"), ("weights", "input:g", "∇L")}
    # the same tiers, nested alike, as in the full view
    full = {cid: c["parent"] for cid, c in clusters(hope_dot()).items() if not cid.startswith("level:")}
    assert {cid: c["parent"] for cid, c in clusters(dot).items()} == full


def test_levels_view_of_parameter_groups_keeps_each_optimizers_part_of_w():
    dot = graphviz.to_dot(passes.run(check(TWO_GROUPS).models[0]), view="levels")
    got = {(a, b, label) for a, b, label, _ in edges(dot)}
    assert ("level:muon/buffer", "weights@optimizer:muon", "update") in got
    assert ("level:adamw/moments", "weights@optimizer:adamw", "update") in got
    assert not any(a == b for a, b, _ in got)


def test_graph_command_view(capsys):
    hope = str(ROOT / "examples" / "hope.nl")
    assert cli.main(["graph", hope]) == 0
    assert capsys.readouterr().out == hope_dot("full")
    assert cli.main(["graph", hope, "--view", "levels"]) == 0
    assert capsys.readouterr().out == hope_dot("levels")
    with pytest.raises(SystemExit):
        cli.main(["graph", hope, "--view", "memories"])
    with pytest.raises(ValueError, match="no view `memories`"):
        hope_dot("memories")


def test_same_input_gives_byte_identical_dot_across_processes():
    code = ("import sys; from nldsl.compiler import passes; from nldsl.compiler.driver import check; "
            "from nldsl.compiler.backends.graphviz import to_dot; "
            "sys.stdout.write(to_dot(passes.run(check(sys.argv[1]).models[0])))")
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / "hope.nl")], env=env,
                                capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1 and outs.pop() == hope_dot()


def clusters(dot: str) -> dict[str, dict]:
    """Each cluster of DOT text: its parent cluster, the first line of its label, its
    fill, and the nodes written directly inside it."""
    found, stack = {}, [None]
    for line in dot.splitlines():
        if m := re.match(r'\s*subgraph "cluster_(.*)" \{', line):
            found[m.group(1)] = {"parent": stack[-1], "label": None, "fill": None, "nodes": []}
            stack.append(m.group(1))
        elif line.strip() == "}":
            stack.pop()
        elif stack[-1] and (m := re.match(r'\s*label="([^"]*)"', line)):
            found[stack[-1]]["label"] = m.group(1).split("\\n")[0]
            fill = re.search(r'fillcolor="([^"]*)"', line)
            found[stack[-1]]["fill"] = fill.group(1) if fill else None
        elif stack[-1] and (m := re.match(r'\s*"([^"]*)" \[label=', line)):
            found[stack[-1]]["nodes"].append(m.group(1))
    return found


def ancestors(found: dict, cid: str) -> list[str]:
    chain = []
    while (cid := found[cid]["parent"]) is not None:
        chain.append(cid)
    return chain


def test_clusters_nest_slowest_outermost_inside_the_optimizer():
    found = clusters(hope_dot())
    depth_of = {}
    for cid, c in found.items():
        depth_of.setdefault(c["label"], len(ancestors(found, cid)))
    order = ["optimizer adamw", "every 16M tokens", "every 1M tokens", "every 1 step", "every 64 tokens",
             "every 16 tokens"]
    depths = [depth_of[label] for label in order]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    for level in ("titans  × 2", "cms1  × 2", "cms2  × 2", "cms3  × 2", "adamw/moments"):
        assert level in depth_of


TWO_GROUPS = """
model two_groups {
  vocab 256
  dim 64
  level ffn outer { memory f : mlp(dim) }
  block { x = x + learned(1) * ffn(rmsnorm(x)) }
  objective next_token
  optimizer muon(lr: 2e-2) for matrices
  optimizer adamw(lr: 3e-4, weight_decay: 0) for rest
}
"""


def two_groups_dot() -> str:
    return graphviz.to_dot(passes.run(check(TWO_GROUPS).models[0]))


def test_every_parameter_groups_optimizer_is_drawn_around_its_levels_and_its_part_of_w():
    dot = two_groups_dot()
    found = clusters(dot)
    boxes = {c["label"]: cid for cid, c in found.items() if c["label"].startswith("optimizer ")}
    assert set(boxes) == {"optimizer muon (for matrices)", "optimizer adamw (for rest)"}
    for label, level, memories, part in (("optimizer muon (for matrices)", "muon/buffer", ["b"], "W: matrices"),
                                         ("optimizer adamw (for rest)", "adamw/moments", ["m", "s"], "W: rest")):
        box = boxes[label]
        (lid,) = [cid for cid, c in found.items() if c["label"] == level]
        assert box in ancestors(found, lid)
        (w,) = [n for n in found[box]["nodes"] if n.startswith("weights")]
        assert f'"{w}" [label="{part}\\n' in dot
        for m in memories:  # each optimizer updates its own part of W
            assert f'"memory:{level}.{m}" -> "{w}" [label="update"]' in dot
    # the parts add up to all of W: matrices 64·64·2 (ffn) + 256·64·2 (embedding, head); the rest
    # the final norm and the block's norm, 64 each, and the learned scalar
    assert "W: matrices\\n40,960 params" in dot and "W: rest\\n129 params" in dot
    assert "optimizer:muon" not in found and "optimizer:adamw" not in found  # neither is drawn around the other


def test_one_optimizer_on_two_groups_is_two_optimizers_each_with_its_settings():
    """`adamw ... for matrices` and `adamw ... for rest` are two optimizers, named by
    their group, each drawn with its own hyperparameters and moments."""
    text = TWO_GROUPS.replace("muon(", "adamw(weight_decay: 0.5, ")
    assert text != TWO_GROUPS
    ir = passes.run(check(text).models[0])
    assert sorted(n for n, d in ir.graph.nodes(data=True) if d["kind"] == "optimizer") == \
        ["optimizer:adamw[matrices]", "optimizer:adamw[rest]"]
    dot = graphviz.to_dot(ir)
    assert "weight_decay=0.5\"" in dot and "weight_decay=0\"" in dot
    levels = {c["label"] for c in clusters(dot).values()}
    assert {"adamw[matrices]/moments", "adamw[rest]/moments"} <= levels


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` is not installed here")
def test_both_optimizers_reach_the_rendered_picture(tmp_path):
    """An empty cluster is dropped by `dot`: the picture must still name both optimizers."""
    spec = tmp_path / "two.nl"
    spec.write_text(TWO_GROUPS)
    assert cli.main(["graph", str(spec), "-o", str(tmp_path / "two.svg")]) == 0
    svg = (tmp_path / "two.svg").read_text()
    assert "optimizer muon (for matrices)" in svg and "optimizer adamw (for rest)" in svg


def test_levels_are_named_alike_by_ir_stats_and_the_diagram():
    for spec in (check(ROOT / "examples" / "hope.nl").models[0], check(TWO_GROUPS).models[0]):
        ir = passes.run(spec)
        listed = set()
        for line in ir.describe_levels().splitlines()[1:]:
            listed |= set(re.match(r"\s*\d+\. every \S+ \S+\s+(.*?)(  [\d,]+ params)?$", line).group(1).split(", "))
        drawn = {c["label"].split("  ×")[0] for cid, c in clusters(graphviz.to_dot(ir)).items()
                 if cid.startswith("level:")}
        assert listed - {"W"} == drawn == {r["level"] for r in level_rows(ir)}
        assert any("/" in name for name in drawn)  # an optimizer's levels carry its name


def test_grey_means_frozen_and_nothing_else():
    deep = check(ROOT / "examples" / "hope.nl").models[0]
    frozen = check("""
model with_table {
  vocab 256
  dim 64
  level table frozen { memory f : linear(dim, init: identity) }
  level fast every 4 tokens { memory f : mlp(dim); learn f : task by gd(lr: 1e-2) }
  block { x = x + table(rmsnorm(x)); x = x + fast(rmsnorm(x)) }
  objective next_token
  optimizer adamw(lr: 3e-4)
}
""").models[0]
    fills = {}
    for spec in (deep, frozen, check(TWO_GROUPS).models[0]):
        for cid, c in clusters(graphviz.to_dot(passes.run(spec))).items():
            if cid.startswith("tier:"):
                fills.setdefault(c["fill"], set()).add(c["label"])
    assert fills.pop(graphviz.FROZEN) == {"frozen"}
    assert graphviz.FROZEN not in graphviz.PALETTE
    assert set(fills) <= set(graphviz.PALETTE) and len(fills) >= 5  # hope's tiers keep distinct colours


def test_level_labels_carry_period_objective_rule_and_parameters():
    dot = hope_dot()
    assert 'label="titans  × 2\\nevery 16 tokens\\nl2 · gd, per token\\n101,896 params"' in dot
    assert 'label="k\\nmlp(128, hidden 128, residual) ×4 heads\\nl2 · gd, per token"' in dot
    assert "cms1  × 2\\nevery 64 tokens\\ntask · gd" in dot


def test_labels_are_escaped():
    assert graphviz._q('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_missing_dot_writes_dot_text_and_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc = cli.main(["graph", str(ROOT / "examples" / "hope.nl"), "-o", str(tmp_path / "hope.svg")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "apt-get install graphviz" in err
    assert (tmp_path / "hope.dot").read_text() == hope_dot()
    assert not (tmp_path / "hope.svg").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` is not installed here")
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_renders_through_dot(tmp_path, fmt):
    out = tmp_path / f"hope.{fmt}"
    assert cli.main(["graph", str(ROOT / "examples" / "hope.nl"), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in data


def test_dot_to_stdout_and_unknown_format(capsys, tmp_path):
    assert cli.main(["graph", str(ROOT / "examples" / "transformer.nl")]) == 0
    assert capsys.readouterr().out == graphviz.to_dot(passes.run(check(ROOT / "examples/transformer.nl").models[0]))
    assert cli.main(["graph", str(ROOT / "examples" / "transformer.nl"), "-o", str(tmp_path / "x.jpg")]) == 1


EXAMPLES = sorted((ROOT / "examples").rglob("*.nl"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_example_draws_in_both_views(path):
    """Both views of every model and optimizer of the examples: the compact one holds no
    memory and no edge from a thing to itself; `dot` reads both, bundled edges and all."""
    program = check(path)
    for spec in (*program.models, *program.optimizers):
        ir = passes.run(spec)
        levels = graphviz.to_dot(ir, view="levels")
        assert "memory:" not in levels and not any(a == b for a, b, _, _ in edges(levels))
        pairs = [frozenset((a, b)) for a, b, _, _ in edges(graphviz.to_dot(ir))]
        assert len(pairs) == len(set(pairs))  # one edge between any two drawn things
        if shutil.which("dot"):
            for dot in (levels, graphviz.to_dot(ir)):
                assert b"<svg" in graphviz.render(dot, "svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` is not installed here")
def test_what_dot_rejects_is_said_in_one_line():
    with pytest.raises(RuntimeError, match=r"^dot failed: .*syntax error"):
        graphviz.render("digraph { a -> }", "svg")
