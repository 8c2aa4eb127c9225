"""Notebooks: what shows how, and the `%%nl` cell magic.

A checked spec (`nldsl.check`) shows its text highlighted, a level graph
(`nldsl.graph`) and a compiled model (`nldsl.compile`) their level diagram, compact
(`.diagram("full")` for every memory), `nldsl.stats` a table. `%load_ext nldsl.notebook`
adds the cell magic

    %%nl [NAME] [KEY=VALUE ...]

which checks the spec written in the cell, prints its diagnostics as `nldsl check`
does (lines counted from the first line below `%%nl`), and compiles it: a model, or
the first optimizer's level graph when the cell defines no model. NAME binds the
result in the notebook; KEY=VALUE override settings or edit levels, as `--set` does
(in quotes when the value has spaces). The cell shows the compact diagram.
"""
from __future__ import annotations

import keyword
import shlex
import sys
from html import escape


def highlight_html(text: str, file: str = "") -> str:
    """A spec's text as HTML: highlighted by the `.nl` Pygments lexer where Pygments
    finds it (nldsl registers it as `nl`), else as it is in a <pre>."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound
    except ImportError:
        lexer = None
    else:
        try:
            lexer = get_lexer_by_name("nl")
        except ClassNotFound:
            lexer = None
    title = f"<div><code>{escape(file)}</code></div>" if file and not file.startswith("<") else ""
    if lexer is None:
        return f"{title}<pre>{escape(text)}</pre>"
    return title + highlight(text, lexer, HtmlFormatter(noclasses=True))


class MagicError(Exception):
    """A `%%nl` line that cannot be read: said in one line, never a traceback."""


def parse_line(line: str) -> tuple[str | None, dict]:
    """`%%nl`'s line: an optional name to bind the result to, then KEY=VALUE settings."""
    from .run import RunError, parse_overrides

    try:  # quotes keep an edit's spaces: %%nl m "titans.rule=gd(lr: 0.01)"
        words = shlex.split(line)
    except ValueError as e:
        raise MagicError(f"`%%nl {line.strip()}`: {e}") from None
    names = [w for w in words if "=" not in w]
    if len(names) > 1:
        raise MagicError(f"`%%nl {line.strip()}`: one name to bind the result to, then KEY=VALUE settings")
    name = names[0] if names else None
    if name is not None and (not name.isidentifier() or keyword.iskeyword(name)):
        raise MagicError(f"`%%nl {line.strip()}`: `{name}` is not a Python name to bind the result to")
    try:
        settings = parse_overrides([w for w in words if "=" in w]) or {}
    except RunError as e:
        raise MagicError(str(e).replace("--set", "%%nl")) from None
    return name, settings


def run_cell(line: str, cell: str, namespace: dict, err=None):
    """What `%%nl` does, without a kernel: check the cell's spec, print its diagnostics
    to `err`, compile it and bind it in `namespace` under the line's name. Returns what
    it compiled, or None when the line or the spec has a mistake."""
    from . import api
    from .compiler import passes
    from .compiler.diagnostics import NLError, Report, render
    from .compiler.driver import check

    err = err or sys.stderr
    try:
        name, settings = parse_line(line)
    except MagicError as e:
        print(f"error: {e}", file=err)
        return None
    report = Report()
    try:
        program = check(cell, report, **settings)
    except NLError as e:
        print(render(e.diagnostics, e.sources), file=err)
        return None
    if report.diagnostics:  # warnings
        print(render(report.sorted(), report.sources), file=err)
    if program.models:
        result = api.compile(cell, name=program.models[0].name, **settings)
    elif program.optimizers:
        result = api.drawn(passes.run(program.optimizers[0]))
    else:
        print("error: the cell defines no model or optimizer", file=err)
        return None
    if name is not None:
        namespace[name] = result
    return result


def load_ipython_extension(ipython) -> None:
    """`%load_ext nldsl.notebook`: the `%%nl` cell magic."""
    from IPython.display import display

    def nl(line: str, cell: str) -> None:
        result = run_cell(line, cell, ipython.user_ns)
        if result is not None:
            display(result.diagram())

    ipython.register_magic_function(nl, magic_kind="cell", magic_name="nl")


__all__ = ["highlight_html", "load_ipython_extension", "parse_line", "run_cell"]
