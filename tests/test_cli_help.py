"""docs/cli.md shows each command's `--help` as the command prints it (80 columns), so
the page cannot drift from the parser. After changing a command's options, write the
blocks again with `.venv/bin/python tests/test_cli_help.py --write`."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import pytest

from nldsl.cli import main

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
BLOCK = re.compile(r"```console\n\$ nldsl ((?:[a-z]+ )*)--help\n(.*?)```", re.S)


def printed(words: list[str]) -> str:
    """What `nldsl WORDS --help` prints at 80 columns."""
    out, before = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*words, "--help"])
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return out.getvalue()


def blocks() -> list[tuple[list[str], str]]:
    return [(m.group(1).split(), m.group(2)) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]


def test_the_page_shows_every_command():
    shown = {" ".join(words) for words, _ in blocks()}
    commands = re.search(r"\{([a-z,]+)\}", printed([])).group(1).split(",")
    assert {c for c in commands if c != "data"} | {"data prepare", ""} <= shown


@pytest.mark.parametrize("words,text", blocks(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_help_blocks_are_what_the_commands_print(words, text):
    assert printed(words) == text, f"run `python tests/test_cli_help.py --write` after changing `nldsl {' '.join(words)}`"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    page = PAGE.read_text(encoding="utf-8")
    page = BLOCK.sub(lambda m: f"```console\n$ nldsl {m.group(1)}--help\n{printed(m.group(1).split())}```", page)
    PAGE.write_text(page, encoding="utf-8")
