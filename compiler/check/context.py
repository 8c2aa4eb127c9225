"""What one check shares: the program, report and overrides (`Context`), and what names mean (`Env`)."""
from __future__ import annotations

import keyword
from dataclasses import dataclass, field

from ...vocab import INPUTS, MEMORY_FLAGS, MODEL_FUNCS, RULE_FLAGS, WORDS
from .. import ast
from ..diagnostics import Report, Span, did_you_mean
from ..load import Program
from ..spec import LIKE_W, LevelSpec, MemorySpec, Size


@dataclass
class Env:
    """What names mean where an expression is typed."""

    consts: dict[str, float]  # settings or hyperparameters
    values: dict[str, Size] = field(default_factory=dict)  # x, g, W, flows, block variables
    memories: dict[str, MemorySpec] = field(default_factory=dict)
    levels: dict[str, LevelSpec] = field(default_factory=dict)  # callable in blocks
    funcs: tuple[str, ...] = MODEL_FUNCS
    this: MemorySpec | None = None  # the memory `self` means, inside a learn statement
    optimizer: bool = False
    broken: set[str] = field(default_factory=set)  # defined, but with an error already reported


class Context:
    """The program being checked, where its diagnostics go, and the settings that
    `nldsl.check(..., dim=64)` overrides."""

    def __init__(self, program: Program, report: Report, overrides: dict | None = None):
        self.program, self.report = program, report
        self.overrides = dict(overrides or {})

    def err(self, code, msg, span, help=None):
        self.report.error(code, msg, span, help)

    def unknown(self, what: str, name: str, span, candidates, code="NL100") -> None:
        self.err(code, f"unknown {what} `{name}`", span, did_you_mean(name, candidates))

    def name_ok(self, name: str, span: Span | None) -> bool:
        """NL102 for a name a spec cannot give: a word of the language, a Python keyword, a dunder."""
        if name in WORDS:
            self.err("NL102", f"`{name}` is a word of the language ({WORDS[name]}) and cannot name anything "
                     "in a spec", span, f"rename it, e.g. `{name}_`")
            return False
        if keyword.iskeyword(name) or name.startswith("__"):
            what = "a Python keyword" if keyword.iskeyword(name) else "a reserved (dunder) name"
            self.err("NL102", f"`{name}` is {what} and cannot name anything in a spec", span,
                     f"rename it, e.g. `{name.strip('_')}_`" if name.strip("_") else "choose another name")
            return False
        return True

    def unique(self, items, what: str) -> None:
        """NL101 for every name declared twice among `items` of (name, span)."""
        seen: dict[str, Span | None] = {}
        for name, span in items:
            self.name_ok(name, span)
            if name in seen:
                where = f" (first at line {seen[name].line})" if seen[name] else ""
                self.err("NL101", f"{what} `{name}` is declared twice{where}", span)
            else:
                seen[name] = span

    def once(self, args) -> None:
        """NL101 for an option given twice in one call; a flag like `residual` counts as its option."""
        seen: set[str] = set()
        for a in args:
            key = a.key if a.key is not None else a.value.id if isinstance(a.value, ast.Name) else None
            if key in seen:
                self.err("NL101", f"option `{key}` is given twice", a.span)
            elif a.key is not None or key in MEMORY_FLAGS + RULE_FLAGS:
                seen.add(key)

    def clashes(self, memories, env: Env) -> None:
        """NL101 for memories named like a setting, a hyperparameter or the stream (`x`, `g`, `W`, `step`)."""
        for name, span in memories:
            if name in env.consts or name in env.values:
                what = INPUTS.get(name, "a hyperparameter" if env.optimizer else "a setting")
                self.err("NL101", f"memory `{name}` has the name of {what}", span, f"rename it, e.g. `{name}_mem`")


def num(v: float) -> str:
    """A number as a message writes it: integers without a fraction."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def size_text(s) -> str:
    return "shaped like W" if s == LIKE_W else str(s)


def zip_spans(stmt):
    """(name, span) for each name a `memory` or `learn` statement declares."""
    spans = stmt.name_spans or (stmt.span,) * len(stmt.names)
    return list(zip(stmt.names, spans))
