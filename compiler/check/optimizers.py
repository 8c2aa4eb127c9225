"""Optimizers: their definitions, and the `optimizer NAME(...) for GROUP` lines of models that use them."""
from __future__ import annotations

from ...vocab import FUNCTIONS, OPTIMIZER_FUNCS, OPTIMIZER_INPUTS, RULE_FLAGS, SELECTORS
from .. import ast
from ..diagnostics import did_you_mean
from ..spec import LIKE_W, LevelSpec, OptimizerSpec, OptimizerUseSpec, UpdateSpec
from .causality import causality, level_cycles
from .consts import const
from .context import Context, Env, zip_spans
from .flows import flows as check_flows
from .learns import learns as check_learns
from .levels import period
from .memories import memory
from .typer import expect_size


def visible(ck: Context, file: str) -> dict[str, tuple[ast.OptimizerDef, str]]:
    """The optimizers a file may use: its own and those of the files it imports directly."""
    out = {}
    for f in ck.program.imports.get(file, []) + [file]:
        for item in ck.program.modules[f].items if f in ck.program.modules else ():
            if isinstance(item, ast.OptimizerDef):
                out[item.name] = (item, f)
    return out


def uses(ck: Context, m: ast.Model, file: str) -> tuple[OptimizerUseSpec, ...]:
    """A model's `optimizer NAME(...)` lines: each found in the file, its direct imports
    or the library (which the loader read), with its options and parameter group."""
    lines = [s for s in m.body if isinstance(s, ast.OptimizerUse)]
    if not lines:
        ck.err("NL114", f"model `{m.name}` has no optimizer", m.span, "add `optimizer adamw(lr: 3e-4)`")
    found_here = visible(ck, file)
    out, selectors = [], {}
    for u in lines:
        name, args = ast.head(u.value)
        if name is None:
            ck.err("NL115", "an optimizer is a name with options, like `adamw(lr: 3e-4)`", u.value.span)
            continue
        found = found_here.get(name) or ck.program.library.get(name)
        if found is None:
            ck.unknown("optimizer", name, u.value.span, list(found_here) + list(ck.program.library_names))
            continue
        sel = u.selector or "all"
        if sel not in SELECTORS:
            ck.unknown("parameter group", sel, u.span, SELECTORS, "NL113")
            continue
        if sel in selectors:
            ck.err("NL101", f"two optimizers for the parameter group `{sel}`", u.span)
        selectors[sel] = u
        hp = {}
        ck.once(args)
        for a in args:
            if a.key is None:
                ck.err("NL115", "optimizer options are named, like `lr: 3e-4`", a.span)
                continue
            v = const(ck, a.value, Env({}), f"option `{a.key}`")
            if v is not None:
                hp[a.key] = v
        definition, where = found
        spec = optimizer(ck, definition, where, hp, use_args=args)
        if spec:
            out.append(OptimizerUseSpec(optimizer=spec, selector=sel, span=u.span))
    if "all" in selectors and len(selectors) > 1:
        ck.err("NL101", "an optimizer for `all` parameters leaves none for the others",
               selectors["all"].span, "name the rest `for rest`")
    elif selectors and not ({"all", "rest"} & set(selectors) or {"matrices", "vectors"} <= set(selectors)):
        (only,) = selectors
        other = "vectors" if only == "matrices" else "matrices"
        ck.err("NL114", f"no optimizer trains the {other}", selectors[only].span,
               "add one `for rest`, e.g. `optimizer adamw(lr: 3e-4) for rest`")
    return tuple(out)


def optimizer(ck: Context, o: ast.OptimizerDef, file: str, hp: dict, use_args=()) -> OptimizerSpec | None:
    """An optimizer definition, with the hyperparameters `hp` of a use in place of its defaults."""
    errors_before = len(ck.report.errors)
    ck.name_ok(o.name, o.span)
    ck.unique([(p.name, p.span) for p in o.params], "hyperparameter")
    consts: dict[str, float] = {}
    for p in o.params:
        if p.name in OPTIMIZER_INPUTS:
            ck.err("NL101", f"`{p.name}` is predefined inside an optimizer", p.span)
        v = const(ck, p.default, Env(consts), f"the default of `{p.name}`")
        if p.name in hp:  # the use site's value, which later defaults may depend on
            v = hp[p.name]
        if v is not None:
            consts.setdefault(p.name, v)
    for a in use_args:
        if a.key is not None and a.key not in consts:
            ck.err("NL113", f"optimizer `{o.name}` has no option `{a.key}`", a.span,
                   did_you_mean(a.key, consts) or f"options: {', '.join(consts)}")
    env = Env(consts, {"g": LIKE_W, "W": LIKE_W, "step": 1}, funcs=OPTIMIZER_FUNCS, optimizer=True)
    levels_ast = [s for s in o.body if isinstance(s, ast.Level)]
    ck.unique([(l.name, l.span) for l in levels_ast], "level")
    ck.unique([(n, sp or m.span) for lv in levels_ast for m in lv.body if isinstance(m, ast.Memory)
               for n, sp in zip_spans(m)], "memory")  # one namespace for all its levels
    # memories are visible across the optimizer's levels: declare them all first
    for lv in levels_ast:
        for m in (s for s in lv.body if isinstance(s, ast.Memory)):
            ck.clashes([(n, sp or m.span) for n, sp in zip_spans(m)], env)
            for name, span in zip_spans(m):
                spec = memory(ck, m, name, lv.name, env, optimizer=True)
                if spec and name not in env.memories:
                    env.memories[name] = spec
                else:  # an error, or declared twice: reported
                    env.broken.add(name)
    flows = check_flows(ck, [s for s in o.body if isinstance(s, ast.Flow)], env, o.name)
    levels = []
    for lv in levels_ast:  # a level's flows are its own: the next level does not see them
        local = Env(consts, dict(env.values), {}, funcs=OPTIMIZER_FUNCS, optimizer=True, broken=set(env.broken))
        local.memories = env.memories
        spec = optimizer_level(ck, lv, consts, local, env)
        if spec:
            levels.append(spec)
    level_cycles(ck, levels, flows)
    updates = [s for s in o.body if isinstance(s, ast.Update)]
    if not updates:
        ck.err("NL114", f"optimizer `{o.name}` has no `update W ...` statement", o.span)
    for u in updates:
        if u.target != "W":
            ck.err("NL100", f"an optimizer updates `W`, the parameter, not `{u.target}`", u.span)
        expect_size(ck, u.value, LIKE_W, env, "the update")
    if len(ck.report.errors) > errors_before:
        return None
    return OptimizerSpec(name=o.name, hparams=consts, levels=tuple(levels), flows=tuple(flows),
                         updates=tuple(UpdateSpec(op=u.op, value=u.value, span=u.span) for u in updates),
                         file=file, span=o.span, fixed=shaping(o, consts))


def shaping(o: ast.OptimizerDef, consts: dict) -> tuple[str, ...]:
    """The hyperparameters that shape the compiled step, which stay constants of it: those
    that periods, memories and rule flags name, and the arguments that must be constants
    (select's condition, newton_schulz's steps and eps, options like `heads:`). The step
    reads the others from its parameter group at each step, where schedulers change them."""
    levels = [s for s in o.body if isinstance(s, ast.Level)]
    exprs = [lv.period.count for lv in levels]
    for item in (item for lv in levels for item in lv.body):
        if isinstance(item, ast.Memory):
            exprs.append(item.kind)
        elif isinstance(item, ast.Learn) and isinstance(item.rule, ast.Call):
            exprs += [a.value for a in item.rule.args if a.key in RULE_FLAGS]
    calls = (n for e in _expressions(o) for n in ast.walk(e) if isinstance(n, ast.Call) and n.func in FUNCTIONS)
    exprs += [a for call in calls for a in _constant_args(call)]
    named = {name for e in exprs for name in ast.names(e)}
    return tuple(k for k in consts if k in named)


def _expressions(o: ast.OptimizerDef):
    """Every expression of an optimizer's flows, learn statements and updates."""
    for s in o.body:
        if isinstance(s, ast.Level):
            for item in s.body:
                if isinstance(item, ast.Learn):
                    yield from (item.objective, item.rule)
                elif isinstance(item, ast.Flow):
                    yield item.value
        else:
            yield s.value


def _constant_args(call: ast.Call) -> tuple:
    """The arguments of a built-in function that the checker requires to be constants."""
    size, pos = FUNCTIONS[call.func].size, call.positional
    given = pos[:1] if size == "select" else pos[1:] if size == "orthogonal" else ()
    return (*given, *(a.value for a in call.args if a.key is not None))


def optimizer_level(ck: Context, lv: ast.Level, consts, env: Env, shared: Env) -> LevelSpec | None:
    per = period(ck, lv.period, consts, optimizer=True)
    if per is None:
        return None
    for s in lv.body:
        if isinstance(s, ast.Out):
            ck.err("NL115", "optimizer levels have no `out`; the `update` statements use their memories", s.span)
    mems = {m.name: m for m in shared.memories.values() if m.level == lv.name}
    flows = check_flows(ck, [s for s in lv.body if isinstance(s, ast.Flow)], env, lv.name)
    learns = check_learns(ck, lv, "optimizer", per, env, mems)
    spec = LevelSpec(name=lv.name, period=per, scope="optimizer", memories=tuple(mems.values()),
                     flows=tuple(flows), learns=tuple(learns), span=lv.span)
    causality(ck, spec, env)
    return spec
