"""Model levels: period and scope, memories, flows, learn statements, `out`, and the outer parameters they own."""
from __future__ import annotations

from ...vocab import RATES
from .. import ast
from ..spec import LevelSpec, OuterParam, PeriodSpec
from .causality import causality
from .consts import count
from .context import Context, Env, zip_spans
from .flows import flows as check_flows
from .learns import learns as check_learns
from .memories import memory
from .typer import param_sites, typeof


def period(ck: Context, p: ast.Period, consts, optimizer: bool) -> PeriodSpec | None:
    if p.kind != "every":
        if optimizer:
            ck.err("NL121", f"optimizer levels count steps; `{p.kind}` is for model levels", p.span,
                   "write `every 1 step`")
            return None
        return PeriodSpec(kind=p.kind)
    unit = "steps" if optimizer else "tokens"
    if p.unit != unit:
        ck.err("NL121", f"{'optimizer' if optimizer else 'model'} levels count {unit}, not {p.unit}",
               p.span, f"write `every N {unit}`" + ("" if optimizer else
               "; a level slower than a batch is written in tokens too (e.g. `every 1M tokens`)"))
        return None
    n = count(ck, p.count, Env(consts), "a period")
    if n is None:
        return None
    return PeriodSpec(kind=unit, count=n)


def scope(period: PeriodSpec, consts, optimizer: bool) -> str:
    if optimizer:
        return "optimizer"
    if period.kind in ("outer", "frozen"):
        return period.kind
    return "sequence" if period.count <= consts["context"] else "cross"


def level(ck: Context, lv: ast.Level, consts, optimizer: bool, shared: Env | None = None) -> LevelSpec | None:
    errors_before = len(ck.report.errors)
    ck.name_ok(lv.name, lv.span)
    per = period(ck, lv.period, consts, optimizer)
    env = shared or Env(consts, {"x": int(consts["dim"])})
    mems = [s for s in lv.body if isinstance(s, ast.Memory)]
    ck.unique([(n, sp or m.span) for m in mems for n, sp in zip_spans(m)], "memory")
    ck.clashes([(n, sp or m.span) for m in mems for n, sp in zip_spans(m)], env)
    memories = {}
    for m in mems:
        for name, span in zip_spans(m):
            spec = memory(ck, m, name, lv.name, env, optimizer)
            if spec and name not in memories:
                memories[name] = spec
                env.memories[name] = spec
    env.broken.update(n for m in mems for n in m.names if n not in memories)
    flows = check_flows(ck, [s for s in lv.body if isinstance(s, ast.Flow)], env, lv.name)
    if per is None:  # its memories and flows are checked; learning needs the period
        return None
    where = scope(per, consts, optimizer)
    learns = check_learns(ck, lv, where, per, env, memories)
    out = out_of(ck, lv, consts, env, memories, mems, optimizer)
    if len(ck.report.errors) > errors_before:
        return None
    params = tuple(level_params(ck, lv.name, flows, out, learns, env, memories, where))
    spec = LevelSpec(name=lv.name, period=per, scope=where, memories=tuple(memories.values()),
                     flows=tuple(flows), learns=tuple(learns), out=out, params=params, span=lv.span)
    causality(ck, spec, env)
    return spec


def out_of(ck: Context, lv: ast.Level, consts, env: Env, memories, mems, optimizer: bool):
    """What a level returns: its `out`, or its one memory of the blocks' size applied to `x`."""
    outs = [s for s in lv.body if isinstance(s, ast.Out)]
    dim = int(consts["dim"]) if not optimizer else None
    if outs and optimizer:
        ck.err("NL115", "optimizer levels have no `out`; the `update` statements use their memories", outs[0].span)
    elif outs:
        for extra in outs[1:]:
            ck.err("NL101", f"level `{lv.name}` has two `out` statements", extra.span)
        out = outs[0].value
        size = typeof(ck, out, env, params=[], owner=f"{lv.name}.out")
        if size is not None and size != consts["dim"]:
            ck.err("NL130", f"level `{lv.name}` outputs size {size}, but blocks carry size {dim}", out.span,
                   "project it back, e.g. `out proj(...)`")
        return out
    elif not optimizer and not env.broken & {n for m in mems for n in m.names}:
        if len(memories) != 1:
            ck.err("NL157", f"level `{lv.name}` has {len(memories)} memories and no `out` statement", lv.span,
                   "say what the level returns, e.g. `out mem(q)`")
            return None
        (only,) = memories.values()
        if only.kind == "attention":
            ck.err("NL157", f"level `{lv.name}` needs an `out` statement to query its attention memory", lv.span,
                   f"e.g. `out proj({only.name}(q))`")
        elif only.d_in != consts["dim"] or only.d_out != consts["dim"]:
            ck.err("NL130", f"level `{lv.name}` has no `out`, and its memory `{only.name}` does not map "
                   f"size {dim} to {dim}", lv.span, "add `out ...`")
        else:
            return ast.Call(only.name, (ast.Arg(ast.Name("x", lv.span), None, lv.span),), lv.span)
    return None


def level_params(ck: Context, level, flows, out, learns, env, memories, scope):
    """Outer parameters of a level: those its flows create, and the θ₀ of its memories."""
    for f in flows:
        yield from param_sites(ck, f.value, f"{level}.{f.name}", env)
    if out is not None:
        yield from param_sites(ck, out, f"{level}.out", env)
    for l in learns:
        for role in ("key", "value") + RATES:
            if getattr(l, role) is not None:
                yield from param_sites(ck, getattr(l, role), f"{level}.{l.memory}.{role}", env)
    for m in memories.values():
        if m.norm:  # the layer norm's scale and bias: outer parameters, which the inner rule does not change
            for k in ("norm_scale", "norm_bias"):
                yield OuterParam(name=f"{level}.{m.name}.{k}", shape=(m.heads, m.d_out // m.heads), role="norm",
                                 span=m.span)
        # a frozen level's memories never change: their θ₀ are constants, not trained
        # (an attention memory's θ₀ is its persistent items, if any: an outer parameter, never moved inside)
        if m.kind == "elementwise" or m.fixed or m.init.count(".") or scope == "frozen":
            continue
        for k, shape in m.state_shapes().items():
            yield OuterParam(name=f"{level}.{m.name}.{k}", shape=shape, role="init", span=m.span)
