"""Diagrams: golden DOT for HOPE, determinism, nesting by frequency, no `dot` needed.

Regenerate the golden file after an intended change with
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

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "hope.dot"


def hope_dot() -> str:
    return graphviz.to_dot(passes.run(check(ROOT / "examples" / "hope.nl").models[0]))


def test_hope_dot_matches_golden():
    dot = hope_dot()
    if os.environ.get("NLDSL_UPDATE_GOLDEN"):
        GOLDEN.write_text(dot)
    assert dot == GOLDEN.read_text()


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


def test_clusters_nest_slowest_outermost_inside_the_optimizer():
    """Walk the DOT's cluster nesting and read each cluster's label."""
    depth, chain, fresh = 0, [], False
    for line in hope_dot().splitlines():
        if re.match(r'\s*subgraph "cluster_', line):
            depth, fresh = depth + 1, True
        elif fresh and (m := re.match(r'\s*label="([^"]*)"', line)):
            chain.append((depth, m.group(1).split("\\n")[0]))
            fresh = False
        elif line.strip() == "}":
            depth -= 1
    depth_of = {}
    for depth, label in chain:
        depth_of.setdefault(label, depth)
    order = ["optimizer adamw", "every 16M tokens", "every 1M tokens", "every 1 step", "every 64 tokens",
             "every 16 tokens"]
    depths = [depth_of[label] for label in order]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    for level in ("titans  × 2", "cms1  × 2", "cms2  × 2", "cms3  × 2", "moments"):
        assert level in depth_of


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
