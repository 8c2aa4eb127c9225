"""Models: levels, schedule hints, blocks and the outer objective, put together into a ModelSpec."""
from __future__ import annotations

from ...vocab import HINTS, OUTER_OBJECTIVE_FLAGS, OUTER_OBJECTIVES
from .. import ast
from ..diagnostics import Span, did_you_mean
from ..costs import warn_costly
from ..spec import AssignSpec, BlockSpec, LevelSpec, ModelSpec, OuterParam
from .consts import count
from .context import Context, Env
from .levels import level
from .memories import cms_links
from .optimizers import uses
from .settings import settings
from .typer import typeof


def model(ck: Context, m: ast.Model, file: str) -> ModelSpec | None:
    errors_before = len(ck.report.errors)
    consts = settings(ck, m)
    levels_ast = [s for s in m.body if isinstance(s, ast.Level)]
    ck.unique([(l.name, l.span) for l in levels_ast], "level")
    levels: dict[str, LevelSpec] = {}
    for lv in levels_ast:
        spec = level(ck, lv, consts, optimizer=False)
        if spec and lv.name not in levels:
            levels[lv.name] = spec
    cms_links(ck, levels, levels_ast)
    apply_hints(ck, m, levels, consts)

    blocks = []
    used: dict[str, Span] = {}
    broken = {lv.name for lv in levels_ast} - set(levels)
    for i, b in enumerate(s for s in m.body if isinstance(s, ast.Block)):
        spec = block(ck, b, i, consts, levels, used, broken)
        if spec:
            blocks.append(spec)
    if not any(isinstance(s, ast.Block) for s in m.body):
        ck.err("NL156", f"model `{m.name}` has no block", m.span,
               "add `block repeat depth { x = x + level(rmsnorm(x)) }`")
    for name, spec in levels.items():
        if name not in used:
            ck.report.warning("NL155", f"level `{name}` is never used in a block", spec.span)

    objective, flags = outer_objective(ck, m)
    optimizers = uses(ck, m, file)
    dim, vocab = int(consts.get("dim", 1)), int(consts.get("vocab", 1))
    params = (OuterParam(name="embed", shape=(vocab, dim), role="embedding", span=m.span),
              OuterParam(name="norm", shape=(dim,), role="norm", span=m.span))
    if "tied" not in flags:  # tied: the logits are the embedding's scores of the normed output
        params += (OuterParam(name="head", shape=(vocab, dim), role="head", span=m.span),)
    if len(ck.report.errors) > errors_before or objective is None:
        return None
    # levels in the order the blocks use them, unused ones last
    order = [n for b in blocks for n in b.levels] + [n for n in levels if n not in used]
    spec = ModelSpec(name=m.name, settings=consts, levels=tuple(levels[n] for n in order), blocks=tuple(blocks),
                     objective=objective, optimizers=optimizers, params=params, file=file, span=m.span)
    warn_costly(ck.report, spec)  # NL158: exact task gradients far above their first order
    return spec


def outer_objective(ck: Context, m: ast.Model) -> tuple[str | None, tuple[str, ...]]:
    """The model's outer objective and the flags written with it (`next_token(tied)`)."""
    stmts = [s for s in m.body if isinstance(s, ast.Objective)]
    if not stmts:
        ck.err("NL114", f"model `{m.name}` has no objective", m.span, "add `objective next_token`")
        return None, ()
    for extra in stmts[1:]:
        ck.err("NL101", "a model has one objective", extra.span)
    name, args = ast.head(stmts[0].value)
    if name not in OUTER_OBJECTIVES:
        ck.err("NL111", f"unknown outer objective `{name or '?'}`", stmts[0].value.span,
               did_you_mean(name or "", OUTER_OBJECTIVES) or "the outer objective is `next_token`")
        return None, ()
    flags = []
    for a in args:
        flag = a.value.id if a.key is None and isinstance(a.value, ast.Name) else None
        if flag not in OUTER_OBJECTIVE_FLAGS or flag in flags:
            ck.err("NL113", f"`{name}` takes only the flag `tied`" if flag not in OUTER_OBJECTIVE_FLAGS
                   else f"`{flag}` is written twice", a.span,
                   f"write `objective {name}`, or `objective {name}(tied)` to share the embedding with the head")
            return None, ()
        flags.append(flag)
    return name, tuple(flags)


def apply_hints(ck: Context, m: ast.Model, levels: dict[str, LevelSpec], consts) -> None:
    """`schedule { level.key: value }`: each hint recorded on its level."""
    seen: dict[tuple[str, str], Span | None] = {}
    for sched in (s for s in m.body if isinstance(s, ast.Schedule)):
        for h in sched.hints:
            if (h.level, h.key) in seen:
                first = seen[h.level, h.key]
                ck.err("NL101", f"hint `{h.level}.{h.key}` is given twice"
                       + (f" (first at line {first.line})" if first else ""), h.span)
                continue
            seen[h.level, h.key] = h.span
            if h.level not in levels:
                if not any(isinstance(s, ast.Level) and s.name == h.level for s in m.body):  # else reported
                    ck.unknown("level", h.level, h.span, levels)
                continue
            kind = HINTS.get(h.key)
            if kind is None:
                ck.unknown("schedule hint", h.key, h.span, HINTS, "NL113")
                continue
            if kind is int:
                value = count(ck, h.value, Env(consts), f"hint `{h.key}`")
            else:
                value, _ = ast.head(h.value)
                if value not in kind:
                    ck.err("NL115", f"hint `{h.key}` is one of {', '.join(kind)}", h.value.span,
                           did_you_mean(value or "", kind))
                    value = None
            if value is not None:
                levels[h.level] = levels[h.level].model_copy(update={"hints": {**levels[h.level].hints, h.key: value}})


def block(ck: Context, b: ast.Block, index: int, consts, levels, used: dict, broken=()) -> BlockSpec | None:
    """`block repeat N { x = ... }`: its assignments typed in order, and the levels it applies."""
    repeat = 1 if b.repeat is None else count(ck, b.repeat, Env(consts), "`repeat`")
    env = Env(consts, {"x": int(consts["dim"])}, levels=levels, broken=set(broken))
    applied, params = [], []
    for a in b.body:
        ck.name_ok(a.name, a.span)
        if a.name in levels or a.name in consts:
            ck.err("NL101", f"`{a.name}` already names a {'level' if a.name in levels else 'setting'}", a.span)
            continue
        for name, span in _calls_with_spans(a.value):
            if name in levels:
                if name in used:
                    ck.err("NL154", f"level `{name}` is applied twice (first at line {used[name].line}); "
                           "a level holds one fast state", span, "declare a second level")
                else:
                    used[name] = span
                    applied.append(name)
        size = typeof(ck, a.value, env, params, f"block{index}.{a.name}")
        if size is not None:
            env.values[a.name] = size
        elif a.name not in env.values:
            env.broken.add(a.name)
    if env.values.get("x") != consts["dim"]:
        ck.err("NL130", f"a block must leave `x` at size {int(consts['dim'])}", b.span)
    if repeat is None:
        return None
    return BlockSpec(repeat=repeat, body=tuple(AssignSpec(name=a.name, value=a.value, span=a.span) for a in b.body),
                     levels=tuple(applied), params=tuple(params), span=b.span)


def _calls_with_spans(e):
    calls = [n for n in ast.walk(e) if isinstance(n, ast.Call)]
    return sorted(((n.func, n.span) for n in calls), key=lambda t: (t[1].line, t[1].col) if t[1] else (0, 0))
