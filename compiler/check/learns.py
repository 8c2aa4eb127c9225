"""Learn statements (`learn M : OBJECTIVE(k, v) by ...`): objectives, keys and values, and their scopes."""
from __future__ import annotations

from ...vocab import OBJECTIVES
from .. import ast
from ..diagnostics import did_you_mean
from ..spec import LIKE_W, LearnSpec, MemorySpec, PeriodSpec
from .consts import const
from .context import Context, Env, zip_spans
from .rules import rule
from .typer import expect_size


def learns(ck: Context, lv: ast.Level, scope: str, period: PeriodSpec, env: Env, memories) -> list[LearnSpec]:
    """The level's learn statements; NL150 for a memory that must learn and has none."""
    out, learned = [], {}
    for s in (s for s in lv.body if isinstance(s, ast.Learn)):
        for name, span in zip_spans(s):
            if name not in memories:
                if name not in env.broken:
                    ck.err("NL100", f"level `{lv.name}` has no memory `{name}`", span, did_you_mean(name, memories))
                continue
            if name in learned:
                ck.err("NL151", f"memory `{name}` is learned twice (first at line {learned[name].line})", span)
                continue
            learned[name] = s.span
            spec = learn(ck, s, memories[name], scope, period, env)
            if spec:
                out.append(spec)
    for name, m in memories.items():
        if name in learned:
            continue
        if scope == "sequence" or scope == "optimizer":
            ck.err("NL150", f"memory `{name}` of level `{lv.name}` ({period}) has no learn statement", m.span,
                   f"add e.g. `learn {name} : dot(g) by gd(lr: 1, decay: 0.9)`" if scope == "optimizer" else
                   f"add e.g. `learn {name} : l2(k, v) by gd(lr: 0.1)`, or make the level `outer`")
        elif m.kind == "attention":
            ck.err("NL150", f"attention memory `{name}` needs `learn {name} : l2(k, v)` to say its keys and values",
                   m.span)
    return out


def learn(ck: Context, s: ast.Learn, mem: MemorySpec, scope: str, period: PeriodSpec, env: Env) -> LearnSpec | None:
    obj, args = ast.head(s.objective)
    if obj not in OBJECTIVES:
        ck.err("NL111", f"unknown objective `{obj or '?'}`", s.objective.span,
               did_you_mean(obj or "", OBJECTIVES) or f"objectives: {', '.join(OBJECTIVES)}")
        return None
    if scope in ("outer", "frozen"):
        ck.err("NL153", f"level `{mem.level}` is `{scope}`: "
               + ("the outer optimizer trains its memories" if scope == "outer" else "its memories never change"),
               s.span, "remove the learn statement, or give the level a period like `every 64 tokens`")
        return None
    if obj == "task":
        if not task_ok(ck, s, mem, scope, period, args):
            return None
    elif scope == "cross":
        ck.err("NL152", f"level `{mem.level}` ({period}) is slower than a sequence; only `task` (multi-rate "
               "outer training) reaches it", s.objective.span)
        return None
    key = value = None
    args, mean = objective_flags(ck, obj, args, env)
    if mean is not None and not mean_ok(ck, mem, scope, period, mean):
        return None
    if OBJECTIVES[obj].args:
        items = key_value(ck, s, obj, mem, args, env)
        if items is None:
            return None
        key, value = items
    how = rule(ck, s, mem, obj, scope, period, env)
    if how is None:
        return None
    return LearnSpec(memory=mem.name, objective=obj, key=key, value=value, **how, mean=mean is not None,
                     read=s.read or "before", span=s.span)


def objective_flags(ck: Context, obj: str, args, env: Env):
    """An objective's flags (`l2(k, v, mean)`, or `mean: true`) taken from its arguments:
    (the other arguments, the span of `mean` when it is on, else None)."""
    rest, mean = [], None
    for a in args:
        bare = a.value.id if a.key is None and isinstance(a.value, ast.Name) else None
        if bare in OBJECTIVES[obj].flags:
            mean = a.span
        elif a.key in OBJECTIVES[obj].flags:
            mean = a.span if const(ck, a.value, env, f"option `{a.key}`") else None
        else:
            rest.append(a)
    return tuple(rest), mean


def mean_ok(ck: Context, mem: MemorySpec, scope: str, period: PeriodSpec, span) -> bool:
    """`l2(k, v, mean)`: each item's gradient divided by the period's length P, the mean of
    the period's losses (TTT's mini-batch). For model levels that count tokens; an
    attention memory appends, with no rate to divide. At P = 1 it changes nothing: NL118."""
    if scope == "optimizer":
        ck.err("NL112", "`mean` is for model levels, whose periods count tokens; an optimizer level learns "
               "from one item a step", span, "remove `mean`, or scale `lr:` by the period yourself")
        return False
    if mem.kind == "attention":
        ck.err("NL112", "`mean` divides a rule's rate by the period's length; attention memories append, "
               "with no rate", span, "remove `mean`")
        return False
    if period.count == 1:
        ck.report.warning("NL118", "`mean` changes nothing at `every 1 token`: the mean of one item's loss is "
                          "that loss", span, "remove `mean`")
    return True


def task_ok(ck: Context, s: ast.Learn, mem: MemorySpec, scope: str, period: PeriodSpec, args) -> bool:
    """`learn M : task`: the outer objective's gradient, for model levels only; in a
    sequence with a rule and read before, slower than one without a rule."""
    if args:
        ck.err("NL115", "`task` takes no arguments: it is the outer objective's gradient", s.objective.span)
        return False
    if scope == "optimizer":
        ck.err("NL111", "optimizer levels have no `task` objective; use `dot` or `l2` on the gradient stream",
               s.objective.span)
        return False
    if mem.kind == "attention":
        ck.err("NL111", "attention memories learn by `l2(k, v)`, not `task`", s.objective.span)
        return False
    if scope == "cross":
        if s.rule is not None:
            ck.err("NL152", f"level `{mem.level}` ({period}) is slower than a sequence: the outer optimizer "
                   "trains it every few steps, so it takes no rule", s.rule.span, f"write `learn {mem.name} : task`")
            return False
    elif s.rule is None:
        ck.err("NL112", "`task` inside a sequence needs a rule, e.g. `by gd(lr: 1e-3)`", s.span)
        return False
    if s.read == "within":
        ck.err("NL140", "`read within` a `task` objective reads the future: the gradient of a chunk's "
               "next-token loss needs the outputs of the whole chunk", s.span,
               "remove `read within`: the default, `read before`, reads the state the chunk started with")
        return False
    return True


def key_value(ck: Context, s: ast.Learn, obj: str, mem: MemorySpec, args, env: Env):
    """The (key, value) of `l2(k, v)` or `dot(k, v)`, each of the size the memory expects;
    an elementwise memory's key may be left out. None after an error."""
    for a in args:
        if a.key is not None:
            ck.err("NL113", f"`{obj}` takes a key and a value, not `{a.key}:`", a.span)
            return None
    keyless = mem.kind == "elementwise"
    if len(args) == 2:
        key, value = args[0].value, args[1].value
    elif len(args) == 1 and keyless:
        key, value = None, args[0].value
    else:
        want = "a value, or a key and a value" if keyless else "a key and a value"
        ck.err("NL117", f"`{obj}` takes {want}, got {len(args)} argument(s)", s.objective.span, f"e.g. `{obj}(k, v)`")
        return None
    if mem.kind == "attention" and obj != "l2":
        ck.err("NL111", "attention memories learn by `l2(k, v)`: softmax attention is the non-parametric "
               "solution of that regression", s.objective.span)
        return None
    inner = Env(env.consts, env.values, env.memories, env.levels, env.funcs, this=mem, optimizer=env.optimizer,
                broken=env.broken)
    # optimizer memories act on each coordinate: keys and values are shaped like W
    coordinatewise = env.optimizer or mem.kind == "elementwise"
    if key is not None:
        expect_size(ck, key, LIKE_W if coordinatewise else mem.d_in * mem.items, inner, f"the key of `{mem.name}`")
    expect_size(ck, value, LIKE_W if coordinatewise else mem.d_out * mem.items, inner, f"the value of `{mem.name}`")
    return key, value
