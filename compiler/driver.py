"""The front end as one call: source -> loaded program -> checked spec -> level graph.

Each stage reports into one `Report`; the driver stops after the first stage that
found errors and raises `NLError` carrying all of them.
"""
from __future__ import annotations

from pathlib import Path

from . import edit
from .check import check_program
from .diagnostics import NLError, Report
from .load import Program
from .load import load as _load
from .spec import ProgramSpec


def _is_path(source) -> bool:
    return isinstance(source, Path) or ("\n" not in source and source.endswith(".nl"))


def load(source: str | Path, report: Report | None = None, /) -> Program:
    """Parse a file (a path ending in `.nl`) or spec text, with its imports. A
    relative path that is not in the current directory is looked up in nldsl's
    library (`optim/adam.nl`)."""
    report = report or Report()
    if _is_path(source):
        program = _load(source, report)
    else:
        program = _load("<text>", report, text=source)
    report.raise_if_errors()
    return program


def check(source: str | Path, report: Report | None = None, /, **overrides) -> ProgramSpec:
    """Load and check a spec; `overrides` replace model settings (e.g. `dim=64`) or edit
    its levels (`cms1="outer"`, `**{"titans.rule": "gd(lr: 0.01)"}`: compiler/edit.py).
    The first two parameters are positional only, so every keyword is an override."""
    report = report or Report()
    program, settings = edit.apply(load(source, report), overrides, report)
    report.raise_if_errors()
    spec = check_program(program, report, settings)
    report.raise_if_errors()
    return spec.model_copy(update={"text": report.sources.get(program.root, "")})


__all__ = ["NLError", "Report", "check", "load"]
