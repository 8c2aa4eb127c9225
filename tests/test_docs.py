"""Every command and Python snippet of README.md and docs/tutorial.md runs as written.

What the test reads in a page, in order:

- a ```sh block: each line that is neither blank nor a comment is a command, which
  must exit with 0 (an indented comment on the lines below continues its comment);
- a ```console block: each line starting with `$ ` is a command; the lines after it,
  up to the next command, are what it prints (standard output and error together),
  compared exactly;
- a ```python block: one script, which must exit with 0;
- markers, HTML comments that a reader of the rendered page does not see, which make
  the files the commands read and say what they expect:
  - `<!-- test: write FILE -->`: the next block is FILE;
  - `<!-- test: FILE equals the next block -->`: what the page's edits made of FILE
    is what the next block shows;
  - `<!-- test: add the next block to FILE after "TEXT" -->`: a blank line and the
    next block go after TEXT (at the end without `after`);
  - `<!-- test: in FILE replace "OLD" with "NEW" -->`, or `with the next block`;
  - `<!-- test: exit N -->`: each command of the next block exits with N;
  strings are JSON strings (`\\n` is a newline).

A command that would take minutes carries, visibly in its comment,
`[not run by tests/test_docs.py: WHY]`. A command that renders through Graphviz
(`nldsl graph ... -o X.svg`) is skipped where `dot` is not installed.

Each page runs in a fresh folder holding a copy of `examples/`, commands and scripts
in the order written (later ones read what earlier ones wrote), with this
environment's `nldsl` and `python` first on the PATH and one thread each.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = "[not run by tests/test_docs.py:"
MARKER = re.compile(r"<!-- test: (.*?) -->")
STRING = r'"((?:[^"\\]|\\.)*)"'
RENDERS = re.compile(r"nldsl graph .* -o \S+\.(svg|png|pdf)\b")
TIMEOUT = 120  # one command; the page as a whole is far quicker


def parse(page: Path) -> list[tuple[int, str, str]]:
    """The page's markers and fenced blocks, in order: (line, "marker", text) or
    (line, language, text)."""
    items, fence = [], None
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(keepends=True), 1):
        if fence is not None:
            if line.rstrip() == "```":
                items.append(fence)
                fence = None
            else:
                fence = (fence[0], fence[1], fence[2] + line)
        elif line.startswith("```"):
            fence = (n, line[3:].strip(), "")
        elif m := MARKER.fullmatch(line.strip()):
            items.append((n, "marker", m.group(1)))
    return items


def sh_commands(block: str) -> list[tuple[str, int]]:
    """The commands of a ```sh block, each with its line in the block (from 1); a
    comment on the lines below a command, indented, continues the command's comment."""
    found = []
    for i, row in enumerate(block.splitlines(), 1):
        if row.strip() and not row.startswith("#") and row.lstrip().startswith("#") and found:
            found[-1] = (found[-1][0] + "\n" + row, found[-1][1])
        elif row.strip() and not row.lstrip().startswith("#"):
            found.append((row, i))
    return found


def _strings(text: str) -> list[str]:
    return [json.loads(f'"{s}"') for s in re.findall(STRING, text)]


class Page:
    """Runs one page's blocks in a folder of its own."""

    def __init__(self, page: Path, folder: Path):
        self.name, self.folder = page.name, folder
        shutil.copytree(ROOT / "examples", folder / "examples")
        venv_bin = str(Path(sys.executable).parent)
        # one thread: the models are small, and threads only contend on a shared machine
        self.env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1")

    def run(self, items) -> None:
        pending: list[str] = []  # markers waiting for the next block
        for line, kind, text in items:
            if kind == "marker":
                pending.append(text)
                if not re.search(r"next block|^write |^exit ", text):
                    self.edit(pending.pop(), None, line)
                continue
            status = 0
            for marker in pending:
                if m := re.fullmatch(r"exit (\d+)", marker):
                    status = int(m.group(1))
                else:
                    self.edit(marker, text, line)
            pending = []
            if kind == "sh":
                for cmd, at in sh_commands(text):
                    self.command(cmd, line + at, status)
            elif kind == "console":
                self.console(text, line, status)
            elif kind == "python":
                (self.folder / "snippet.py").write_text(text)
                self.command("python snippet.py", line, status)
        assert not pending, f"{self.name}: markers without a block after them: {pending}"

    def edit(self, marker: str, block: str | None, line: int) -> None:
        where = f"{self.name}:{line}: `{marker}`"
        if m := re.fullmatch(r"write (\S+)", marker):
            (self.folder / m.group(1)).write_text(block)
            return
        if m := re.fullmatch(r"(\S+) equals the next block", marker):
            assert (self.folder / m.group(1)).read_text() == block, where
            return
        m = re.fullmatch(r"(?:add the next block to|in) (\S+) ?(.*)", marker)
        assert m, f"{where}: not a marker this test knows"
        path = self.folder / m.group(1)
        text, args = path.read_text(), _strings(m.group(2))
        if marker.startswith("add"):
            anchor = args[0] if args else text
            assert anchor in text, f"{where}: the file has no {anchor!r}"
            i = text.index(anchor) + len(anchor)
            text = text[:i] + "\n" + block + text[i:]
        else:
            new = block if m.group(2).endswith("with the next block") else args[1]
            assert args[0] in text, f"{where}: the file has no {args[0]!r}"
            text = text.replace(args[0], new, 1)
        path.write_text(text)

    def command(self, cmd: str, line: int, status: int) -> str | None:
        """What the command printed; None if it is not run."""
        if SKIP in cmd:
            return None
        if RENDERS.search(cmd) and shutil.which("dot") is None:
            return None  # Graphviz's `dot` is not installed here: `nldsl graph` writes DOT text instead
        proc = subprocess.run(cmd, shell=True, executable="/bin/bash", cwd=self.folder, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
        assert proc.returncode == status, (f"{self.name}:{line}: `{cmd}` exited with {proc.returncode}, "
                                           f"not {status}:\n{proc.stdout}")
        return proc.stdout

    def console(self, text: str, line: int, status: int) -> None:
        cmd, shown = None, []
        for i, row in enumerate(text.splitlines() + ["$ "]):
            if row.startswith("$ "):
                printed = self.command(*cmd, status) if cmd else None
                assert printed is None or printed.rstrip("\n") == "\n".join(shown), (
                    f"{self.name}:{cmd[1]}: `{cmd[0]}` printed\n{printed}\nnot what the page shows")
                cmd, shown = (row[2:], line + 1 + i), []
            else:
                shown.append(row)


@pytest.mark.parametrize("page", ["README.md", "docs/tutorial.md"])
def test_every_command_and_snippet_of_the_page_runs(page, tmp_path):
    Page(ROOT / page, tmp_path).run(parse(ROOT / page))


def test_the_markers_are_ones_this_test_reads():
    """A misspelt marker would be skipped silently; every one must be read."""
    known = re.compile(r'write \S+|\S+ equals the next block|exit \d+|add the next block to \S+( after ".*")?'
                       r'|in \S+ replace ".*" with (".*"|the next block)')
    for page in ("README.md", "docs/tutorial.md"):
        for line, kind, text in parse(ROOT / page):
            assert kind != "marker" or known.fullmatch(text), f"{page}:{line}: unknown marker `{text}`"
