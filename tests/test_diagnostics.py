"""Golden diagnostics: what `nldsl check` tells a user about each kind of mistake.

Each `tests/golden/diagnostics/NAME.nl` is one small mistake (files in subfolders are
only imported by them); `NAME.err` is exactly what `nldsl check` prints on stderr for
it, run from the repository root so paths read `tests/golden/diagnostics/NAME.nl`.
Absolute paths (of imported files, of nldsl's library) are written `<root>/...`.
A case whose first line reads `# command: ARGS` is run as `nldsl ARGS NAME.nl`
instead (for mistakes made on the command line, like `compile --set dims=32`).

To accept new output after changing a message, rewrite the .err files and review
the diff:

    NLDSL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_diagnostics.py
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl import cli

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "diagnostics"
CASES = sorted(GOLDEN.glob("*.nl"))
UPDATE = os.environ.get("NLDSL_UPDATE_GOLDEN") == "1"


def run_check(rel: str, *flags: str, command: tuple[str, ...] = ("check",)) -> tuple[int, str, str]:
    """`nldsl check` (or another command) in this process, from the repository root:
    (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*command, *flags, rel])
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def normalise(text: str) -> str:
    return text.replace(str(ROOT), "<root>")


def test_there_are_enough_goldens():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path):
    rel = case.relative_to(ROOT).as_posix()
    first = case.read_bytes().partition(b"\n")[0].decode("utf-8", "replace")
    command = tuple(shlex.split(first.removeprefix("# command:"))) if first.startswith("# command:") else ("check",)
    code, out, err = run_check(rel, command=command)
    assert "Traceback" not in err and "internal error" not in err, err
    errors = re.findall(r"^\S+: error\[NL\d{3}\]", err, re.M)
    assert code == (1 if errors else 0), (code, err)
    if not errors and command == ("check",):
        assert out.startswith(f"{rel}: ok (")
    got = normalise(err)
    expected = case.with_suffix(".err")
    if UPDATE:
        expected.write_text(got, encoding="utf-8")
        return
    assert expected.exists(), f"no {expected.name}: run with NLDSL_UPDATE_GOLDEN=1 to write it"
    assert got == expected.read_text(encoding="utf-8")


def _codes_in(paths) -> set[str]:
    return {c for p in paths for c in re.findall(r'"(NL\d{3})"', p.read_text())}


def test_goldens_cover_every_code():
    front_end = [ROOT / "compiler" / f for f in ("parse.py", "load.py")] + sorted((ROOT / "compiler" / "check").glob("*.py"))
    emitted = _codes_in(front_end)
    covered = set()
    for err in GOLDEN.glob("*.err"):
        covered |= set(re.findall(r"(?:error|warning)\[(NL\d{3})\]", err.read_text(encoding="utf-8")))
    assert emitted - covered == set(), "codes without a golden"


def test_golden_files_are_small_and_have_expectations():
    for case in CASES:
        assert case.stat().st_size < 4096, case.name
        if not UPDATE:
            assert case.with_suffix(".err").exists(), case.name
    orphans = {e.stem for e in GOLDEN.glob("*.err")} - {c.stem for c in CASES}
    assert not orphans, f".err files without a .nl: {sorted(orphans)}"


# ------------------------------------------------------------- as a real process
def nldsl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nldsl", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_exit_codes_and_json():
    bad = ["tests/golden/diagnostics/unknown_name.nl", "tests/golden/diagnostics/syntax_unexpected_eof.nl",
           "tests/golden/diagnostics/import_circular.nl"]
    r = nldsl("check", "--error-format", "json", *bad)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    diags = json.loads(r.stdout)
    assert {d["code"] for d in diags} == {"NL100", "NL012", "NL021"}
    for d in diags:
        assert d["severity"] == "error"
        assert isinstance(d["line"], int) and isinstance(d["col"], int) and d["line"] >= 1 and d["col"] >= 1
        assert d["file"].endswith(".nl") and d["message"]
    (eof,) = [d for d in diags if d["code"] == "NL012"]
    assert (eof["file"], eof["line"], eof["col"]) == (bad[1], 5, 42)
    assert "never closed" in eof["help"]

    r = nldsl("check", "tests/golden/diagnostics/unknown_name.nl")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (GOLDEN / "unknown_name.err").read_text(encoding="utf-8")

    ok = nldsl("check", "examples/titans.nl")
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout == "examples/titans.nl: ok (model titans)\n"
    ok = nldsl("check", "--error-format", "json", "examples/titans.nl", "tests/golden/diagnostics/warning_unused_level.nl")
    assert ok.returncode == 0
    (warning,) = json.loads(ok.stdout)
    assert (warning["severity"], warning["code"], warning["line"], warning["col"]) == ("warning", "NL155", 6, 3)


def test_json_in_process_matches_text():
    code, out, err = run_check("tests/golden/diagnostics/multiple_errors.nl", "--error-format", "json")
    assert code == 1 and err == ""
    diags = json.loads(out)
    text = (GOLDEN / "multiple_errors.err").read_text(encoding="utf-8")
    heads = re.findall(r"^\S+?:(\d+):(\d+): (error|warning)\[(NL\d{3})\]", text, re.M)
    assert [(str(d["line"]), str(d["col"]), d["severity"], d["code"]) for d in diags] == heads
    assert len([d for d in diags if d["severity"] == "error"]) >= 5
