"""The command line, end to end, as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def nldsl(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nldsl", *args], cwd=cwd, capture_output=True, text=True)


def test_check_all_examples():
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "examples").rglob("*.nl"))]
    r = nldsl("check", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok (") == len(files)


def test_check_reports_every_error_and_exits_1(tmp_path):
    bad = tmp_path / "bad.nl"
    bad.write_text("model m {\n  vocab 10\n  dim 8\n  level a every 0 tokens { memory M : linaer(dim) }\n"
                   "  block { x = x + b(x) }\n  objective next_token\n  optimizer adamw(lr: 1e-3)\n}\n")
    r = nldsl("check", str(bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{bad}:4:17: error[NL120]" in r.stderr
    assert "error[NL116]: unknown function `b`" in r.stderr
    r = nldsl("check", "--error-format", "json", str(bad))
    diags = json.loads(r.stdout)
    assert {d["code"] for d in diags} >= {"NL120", "NL116"}
    assert all({"file", "line", "col", "message"} <= set(d) for d in diags)


def test_ir_stats_and_levels():
    r = nldsl("ir", "examples/hope.nl", "--levels")
    assert r.returncode == 0
    assert r.stdout.splitlines()[1].split()[1:4] == ["every", "16M", "tokens"]
    r = nldsl("stats", "examples/hope.nl")
    assert r.returncode == 0 and "parameters (all outer):" in r.stdout
    r = nldsl("ir", "examples/optim/adam.nl")
    assert r.returncode == 0 and r.stdout.startswith("optimizer adam")


def test_missing_file_is_a_diagnostic_not_a_traceback(tmp_path):
    r = nldsl("check", str(tmp_path / "nope.nl"))
    assert r.returncode == 1 and "error[NL001]: cannot read" in r.stderr and "Traceback" not in r.stderr


def test_unknown_name_for_ir():
    r = nldsl("ir", "examples/cms.nl", "--name", "cms_nope")
    assert r.returncode == 1 and "nothing named `cms_nope`" in r.stderr


def test_fmt_check_then_format_in_place(tmp_path):
    messy = tmp_path / "t.nl"
    canonical = (ROOT / "examples" / "titans.nl").read_text()
    messy.write_text(canonical.replace("  dim 128\n", "  dim    128;\n"))
    r = nldsl("fmt", "--check", str(messy))
    assert r.returncode == 1 and "would be reformatted" in r.stdout
    assert nldsl("fmt", str(messy)).returncode == 0
    assert messy.read_text() == canonical
    assert nldsl("fmt", "--check", str(messy)).returncode == 0


def test_fmt_on_a_syntax_error_changes_nothing(tmp_path):
    bad = tmp_path / "bad.nl"
    bad.write_text("model m { dim }\n")
    r = nldsl("fmt", str(bad))
    assert r.returncode == 1 and "error[NL011]" in r.stderr
    assert bad.read_text() == "model m { dim }\n"


def test_flush_subnormals_flushes_and_restores():
    """The commands that run models flush subnormal floats (their arithmetic is slow on
    x86); nldsl.flush_subnormals(False) gives IEEE behaviour back."""
    import torch

    import nldsl

    tiny = torch.tensor(1e-30)
    try:
        if not nldsl.flush_subnormals():
            pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returned False)")
        assert (tiny * 1e-10).item() == 0.0
    finally:
        nldsl.flush_subnormals(False)
    assert 0.0 < (tiny * 1e-10).item() < 1e-38
