"""Edit: a variant's changes to what a level is, applied to the loaded program before
the check (docs/evaluation.md, "Variants").

A setting override (`dim=64`) is a number the checker reads in place of the spec's. An
edit is an override whose value is text, and it changes the program itself, so that an
ablation is one line rather than a copy of a file:

    LEVEL=outer | frozen | every N tokens   the level's period (outer and frozen drop its learn statements)
    LEVEL=none                              the level goes, with the block statements and hints that use it
    LEVEL.rule=RULE                         the rule of each of its learn statements
    LEVEL.objective=OBJECTIVE               the inner objective of each
    LEVEL.read=before | within              where each reads
    LEVEL.NAME=EXPR                         the definition of its flow NAME, or the kind of its memory NAME

A value is parsed by the spec grammar as an expression or a period, under the source
name `<KEY>`, so that a mistake in it, or one the checker then finds in what it
brought, is a diagnostic pointing into it. The edited program is checked as a whole,
like any spec: an edit can make a model that does not check, never one that runs
unchecked.
"""
from __future__ import annotations

from dataclasses import replace

from . import ast
from .diagnostics import Report, did_you_mean
from .load import Program
from .parse import fragment

PARTS = ("rule", "objective", "read")  # what of a level's learn statements an edit replaces
READS = ("before", "within")


def apply(program: Program, overrides: dict, report: Report) -> tuple[Program, dict]:
    """(the program with the edits among `overrides` made in its root file's models, in
    the order given; the settings among them). An override is an edit when its value is
    text and its key is a level's name or `LEVEL.PART`; any other is the checker's (a
    setting given text is NL115, an override of nothing NL124)."""
    root = program.modules.get(program.root)
    models = [i for i in root.items if isinstance(i, ast.Model)] if root else []
    levels = {s.name for m in models for s in m.body if isinstance(s, ast.Level)}
    edits = {k: v for k, v in overrides.items() if isinstance(v, str) and ("." in k or k in levels)}
    if not edits:
        return program, overrides
    for key, value in edits.items():
        models = _edit(models, key, value, report)
    by_name = {m.name: m for m in models}
    items = tuple(by_name.get(i.name, i) if isinstance(i, ast.Model) else i for i in root.items)
    modules = {**program.modules, program.root: replace(root, items=items)}
    return replace(program, modules=modules), {k: v for k, v in overrides.items() if k not in edits}


def _edit(models: list[ast.Model], key: str, value: str, report: Report) -> list[ast.Model]:
    name, _, part = key.partition(".")
    item = f"`{key}={value}`"
    levels = {s.name for m in models for s in m.body if isinstance(s, ast.Level)}
    if name not in levels:
        report.error("NL125", f"edit {item}: the spec has no level `{name}`", None,
                     did_you_mean(name, levels) or f"levels: {', '.join(sorted(levels)) or 'none'}")
        return models
    source = f"<{key}>"
    if not part:
        change = _period(value, source, report)
    elif part in PARTS:
        change = _learns(part, value, source, report)
    else:
        change = _definition(part, value, source, report)
    if change is None:  # the value did not parse
        return models
    # a change maps the level to the level edited, None (the level goes) or what is wrong
    out = []
    for m in models:
        level = next((s for s in m.body if isinstance(s, ast.Level) and s.name == name), None)
        if level is not None:
            new = change(level)
            if isinstance(new, str):
                report.error("NL125", f"edit {item}: {new}", level.span)
            elif new is None:
                m = _without(m, name)
            else:
                m = replace(m, body=tuple(new if s is level else s for s in m.body))
        out.append(m)
    return out


def _period(value: str, source: str, report: Report):
    """`LEVEL=PERIOD` or `LEVEL=none`: a function of the level giving the new level, or
    None (the level goes)."""
    if value.strip() == "none":
        return lambda level: None
    period = fragment(value, "period", source, report)
    if period is None:
        return None

    def change(level: ast.Level):
        body = level.body if period.kind == "every" else tuple(s for s in level.body if not isinstance(s, ast.Learn))
        return replace(level, period=period, body=body)
    return change


def _learns(part: str, value: str, source: str, report: Report):
    """`LEVEL.rule=`, `.objective=`, `.read=`: the same part of every learn statement."""
    if part == "read":
        if value.strip() not in READS:
            report.error("NL125", f"`read` is `before` or `within`, not `{value}`", None)
            return None
        new = value.strip()
    else:
        new = fragment(value, "expr", source, report)
        if new is None:
            return None

    def change(level: ast.Level):
        if not any(isinstance(s, ast.Learn) for s in level.body):
            return f"level `{level.name}` learns nothing: it has no {part} to replace"
        return replace(level, body=tuple(replace(s, **{part: new}) if isinstance(s, ast.Learn) else s
                                         for s in level.body))
    return change


def _definition(part: str, value: str, source: str, report: Report):
    """`LEVEL.NAME=`: a flow's expression, or a memory's kind (a memory declared with
    others, `memory k, v : ...`, is split off them)."""
    new = fragment(value, "expr", source, report)
    if new is None:
        return None

    def change(level: ast.Level):
        body = []
        found = False
        for s in level.body:
            if isinstance(s, ast.Flow) and s.name == part:
                s, found = replace(s, value=new), True
            elif isinstance(s, ast.Memory) and part in s.names:
                found = True
                i = s.names.index(part)
                rest = tuple(n for n in s.names if n != part)
                if rest:
                    spans = s.name_spans[:i] + s.name_spans[i + 1:] if s.name_spans else ()
                    body.append(replace(s, names=rest, name_spans=spans))
                s = replace(s, names=(part,), kind=new, name_spans=s.name_spans[i:i + 1])
            body.append(s)
        if not found:
            own = [n for s in level.body if isinstance(s, (ast.Flow, ast.Memory))
                   for n in ((s.name,) if isinstance(s, ast.Flow) else s.names)]
            hint = did_you_mean(part, own + list(PARTS))
            return (f"level `{level.name}` has no flow or memory `{part}`"
                    + (f" ({hint})" if hint else f"; it has {', '.join(own + list(PARTS))}"))
        return replace(level, body=tuple(body))
    return change


def _without(m: ast.Model, name: str) -> ast.Model:
    """The model without level `name`, the block statements that call it and its hints."""
    body = []
    for s in m.body:
        if isinstance(s, ast.Level) and s.name == name:
            continue
        if isinstance(s, ast.Block):
            s = replace(s, body=tuple(a for a in s.body if name not in ast.names(a.value)))
        elif isinstance(s, ast.Schedule):
            s = replace(s, hints=tuple(h for h in s.hints if h.level != name))
        body.append(s)
    return replace(m, body=tuple(body))
