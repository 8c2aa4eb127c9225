"""Memories (`memory M : KIND(...)`): kinds, sizes, options, and the nested CMS links (`init: level.memory`)."""
from __future__ import annotations

from ...vocab import ACTIVATIONS, DEFAULT_ACTIVATION, MEMORY_FLAGS, MEMORY_KINDS
from .. import ast
from ..diagnostics import did_you_mean
from ..spec import LevelSpec, MemorySpec
from .consts import const, count
from .context import Context, Env


def memory(ck: Context, m: ast.Memory, name: str, level: str, env: Env, optimizer: bool) -> MemorySpec | None:
    kind, args = ast.head(m.kind)
    span = m.kind.span
    if kind not in MEMORY_KINDS:
        ck.err("NL110", f"unknown memory kind `{kind or '?'}`", span,
               did_you_mean(kind or "", MEMORY_KINDS) or f"kinds are {', '.join(MEMORY_KINDS)}")
        return None
    row = MEMORY_KINDS[kind]
    allowed = row.options
    flags = set(MEMORY_FLAGS) & set(allowed)
    ck.once(args)
    opts: dict = {}
    shape = []
    for a in args:
        v = a.value
        if a.key is None and isinstance(v, ast.Name) and v.id in flags:
            opts[v.id] = True
        elif a.key is None and isinstance(v, ast.Name) and v.id in MEMORY_FLAGS:  # another kind's flag
            ck.err("NL113", f"`{kind}` memories have no option `{v.id}`", a.span,
                   f"options: {', '.join(allowed)}")
        elif a.key is None:
            shape.append(v)
        elif a.key not in allowed:
            ck.err("NL113", f"`{kind}` memories have no option `{a.key}`", a.span,
                   did_you_mean(a.key, allowed) or f"options: {', '.join(allowed)}")
        elif a.key in flags:
            b = const(ck, v, env, f"option `{a.key}`")
            opts[a.key] = bool(b)
        else:
            opts[a.key] = v
    dim = None if optimizer else int(env.consts["dim"])
    d_in = d_out = dim
    if not row.sized and shape:
        ck.err("NL115", f"`{kind}` memories take no size; their shape comes from "
               f"{'the stream' if kind == 'elementwise' else 'their keys and values'}", shape[0].span)
        return None
    if len(shape) > 1:
        ck.err("NL115", f"a memory has one size (`d` or `d_in -> d_out`), not {len(shape)}", shape[1].span)
        return None
    if shape:
        s = shape[0]
        if isinstance(s, ast.Arrow):
            d_in = count(ck, s.src, env, "a memory's input size")
            d_out = count(ck, s.dst, env, "a memory's output size")
        else:
            d_in = d_out = count(ck, s, env, "a memory's size")
        if d_in is None or d_out is None:
            return None
    if optimizer and row.sized and (d_in, d_out) != (1, 1):
        ck.err("NL130", f"in optimizer levels `{kind}` memories act on each coordinate of the stream, so their size "
               f"is 1", span, f"write `{kind}(1{', hidden: 8' if kind == 'mlp' else ''})`")
        return None
    if not optimizer and not row.model:
        ck.err("NL110", "`elementwise` memories hold optimizer moments; model levels use linear, mlp or attention",
               span)
        return None
    if optimizer and not row.optimizer:
        ck.err("NL110", "`attention` memories belong to model levels", span)
        return None
    # the options that count something, with their defaults and least values (persistent:
    # 0 is none, as in the paper's ablation)
    counts = {}
    for key, default, lo in (("heads", 1, 1), ("window", None, 1), ("persistent", 0, 0), ("items", 1, 1)):
        counts[key] = count(ck, opts[key], env, f"`{key}`", lo=lo) if key in opts else default
        if key in opts and counts[key] is None:
            return None
    heads = counts["heads"]
    hidden = None
    if kind == "mlp":
        hidden = count(ck, opts["hidden"], env, "`hidden`") if "hidden" in opts else d_in
        if hidden is None:
            return None
    if row.sized or (kind == "attention" and not optimizer):
        sizes = {"model": dim} if kind == "attention" else {"input": d_in, "output": d_out, "hidden": hidden}
        for what, size in sizes.items():
            if size is not None and size % heads:
                ck.err("NL131", f"{heads} heads do not divide the {what} size {size}", span)
                return None
    if opts.get("residual") and d_in != d_out:
        ck.err("NL130", f"a residual memory maps a size to itself, not {d_in} -> {d_out}", span)
        return None
    if opts.get("norm") and d_out is not None and d_out // heads < 2:
        ck.err("NL130", f"`norm` normalises each head's output, which needs at least 2 numbers, not "
               f"{d_out // heads}", span, "the layer norm of one number is its bias alone")
        return None
    act = DEFAULT_ACTIVATION
    if "act" in opts:
        act, _ = ast.head(opts["act"])
        if act not in ACTIVATIONS:
            ck.err("NL115", f"unknown activation `{act or '?'}`", opts["act"].span,
                   did_you_mean(act or "", ACTIVATIONS) or f"activations: {', '.join(ACTIVATIONS)}")
            return None
    init = initial_state(ck, opts.get("init"), row.init, row.inits, (d_in, d_out), optimizer)
    if init is None:
        return None
    return MemorySpec(name=name, level=level, kind=kind, d_in=d_in, d_out=d_out, heads=heads, hidden=hidden,
                      act=act, residual=opts.get("residual", False), bias=opts.get("bias", False),
                      norm=opts.get("norm", False), init=init,
                      fixed=opts.get("fixed", False), detach=opts.get("detach", False), window=counts["window"],
                      alibi=opts.get("alibi", False), persistent=counts["persistent"], items=counts["items"],
                      segment=opts.get("segment", False), span=m.span)


def initial_state(ck: Context, v, default: str, valid, shape, optimizer: bool) -> str | None:
    """The `init:` option's initial state (`default` when not given), or None after an error."""
    if v is None:
        return default
    if isinstance(v, ast.Member) and optimizer:
        ck.err("NL115", "only model levels restart from another level's memory (`init: level.memory`)",
               v.span, "give it an initial state like `init: zeros`")
        return None
    if isinstance(v, ast.Member):
        return f"{v.owner}.{v.name}"  # resolved in cms_links, once all levels are known
    init, _ = ast.head(v)
    if init not in valid:
        ck.err("NL115", f"unknown initial state `{init or '?'}`", v.span,
               did_you_mean(init or "", valid) or f"initial states: {', '.join(valid)}, or `level.memory`")
        return None
    d_in, d_out = shape
    if init == "identity" and d_in != d_out:
        ck.err("NL130", f"an identity initial state needs a square memory, not {d_in} -> {d_out}", v.span)
        return None
    return init


def cms_links(ck: Context, levels: dict[str, LevelSpec], levels_ast) -> None:
    """`init: slow.ffn`: the nested CMS. The source must be a slower level whose
    period is a multiple of this one's, holding a memory of the same shape."""
    spans = {l.name: l for l in levels_ast}
    for lv in levels.values():
        for m in lv.memories:
            if "." not in m.init:
                continue
            owner, name = m.init.split(".", 1)
            src_level = levels.get(owner)
            if src_level is None:
                if owner not in spans:  # a level with errors of its own is not reported again
                    ck.unknown("level", owner, m.span, levels)
                continue
            src = next((x for x in src_level.memories if x.name == name), None)
            if src is None:
                ck.err("NL100", f"level `{owner}` has no memory `{name}`", m.span,
                       did_you_mean(name, [x.name for x in src_level.memories]))
                continue
            if (src.kind, src.d_in, src.d_out, src.hidden, src.heads) != (m.kind, m.d_in, m.d_out, m.hidden, m.heads):
                ck.err("NL130", f"memory `{lv.name}.{m.name}` cannot start from `{owner}.{name}`: their shapes differ",
                       m.span)
            p, q = lv.period, src_level.period
            if p.count is None or q.count is None or q.count <= p.count or q.count % p.count:
                ck.err("NL122", f"level `{lv.name}` ({p}) restarts from `{owner}` ({q}), which must be slower "
                       f"with a period that is a multiple of {p.count or 'it'}", m.span)
