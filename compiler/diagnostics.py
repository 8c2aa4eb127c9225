"""Located diagnostics: every user mistake becomes one of these, never a traceback.

A stage collects diagnostics into a `Report`; the driver stops after a stage that
reported errors. Rendering is gcc-style (`file:line:col: error[NL123]: message`, the
source line, a caret) or JSON.
"""
from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field


MAX_SHOWN = 240  # characters of a source line shown under a diagnostic


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    help: str | None = None
    severity: str = "error"

    def as_dict(self) -> dict:
        d = {"severity": self.severity, "code": self.code, "message": self.message}
        if self.span:
            s = self.span
            d.update(file=s.file, line=s.line, col=s.col, end_line=s.end_line, end_col=s.end_col)
        if self.help:
            d["help"] = self.help
        return d


class NLError(Exception):
    """Raised by the driver when a stage reported errors; carries all of them."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str]):
        self.diagnostics = diagnostics
        self.sources = sources
        super().__init__(render(diagnostics, sources))

    def __reduce__(self):  # crosses process boundaries (a pool of runs) whole
        return type(self), (self.diagnostics, self.sources)


@dataclass
class Report:
    """Collects the diagnostics of a compilation, and the sources they point into."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    _seen: set = field(default_factory=set, repr=False, compare=False)  # no duplicates, in constant time

    def _add(self, d: Diagnostic) -> None:
        if d not in self._seen:
            self._seen.add(d)
            self.diagnostics.append(d)

    def error(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self._add(Diagnostic(code, message, span, help))

    def warning(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self._add(Diagnostic(code, message, span, help, "warning"))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise NLError(self.sorted(), self.sources)

    def sorted(self) -> list[Diagnostic]:
        def key(d: Diagnostic):
            s = d.span
            return (s.file, s.line, s.col) if s else ("", 0, 0)

        return sorted(self.diagnostics, key=key)


def did_you_mean(name: str, candidates) -> str | None:
    """A `help:` text naming the closest candidate, if one is close enough."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def render_one(d: Diagnostic, sources: dict[str, str]) -> str:
    head = f"{d.span}: " if d.span else ""
    out = [f"{head}{d.severity}[{d.code}]: {d.message}"]
    src = sources.get(d.span.file) if d.span else None
    if src is not None:
        lines = _lines(src)
        if 1 <= d.span.line <= len(lines):
            text, col = lines[d.span.line - 1].rstrip("\r"), d.span.col
            if len(text) > MAX_SHOWN:  # a very long line: the part around the column
                start = max(0, min(col - 1 - MAX_SHOWN // 4, len(text) - MAX_SHOWN))
                text, col = text[start:start + MAX_SHOWN], col - start
                if start:
                    text, col = "…" + text, col + 1
                if start + MAX_SHOWN < len(lines[d.span.line - 1].rstrip("\r")):
                    text += "…"
            text = text.expandtabs(1)
            text = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)  # no raw control bytes
            gutter = f"{d.span.line:>4} | "
            width = d.span.end_col - d.span.col if d.span.end_line == d.span.line else len(text) - col + 1
            out.append(gutter + text)
            out.append(" " * (len(gutter) + col - 1) + "^" * max(1, min(width, len(text) - col + 1)))
    if d.help:
        out.append(f"  help: {d.help}")
    return "\n".join(out)


@functools.lru_cache(maxsize=4)
def _lines(src: str) -> list[str]:
    """A source's lines, split once however many diagnostics point into it; as the
    parser counts lines: at "\\n" only, not at form feeds and the like."""
    return src.split("\n")


def render(diagnostics: list[Diagnostic], sources: dict[str, str], fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps([d.as_dict() for d in diagnostics], indent=2)
    return "\n".join(render_one(d, sources) for d in diagnostics)
