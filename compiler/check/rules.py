"""The rule of a learn statement (`by gd(lr: ..., per_token)`): its options, rates and flags."""
from __future__ import annotations

from ...vocab import ELEMENTWISE, MEMORY_KINDS, RATES, RULE_FLAGS, RULES
from .. import ast
from ..diagnostics import Span, did_you_mean
from ..spec import MemorySpec, PeriodSpec
from .consts import const
from .context import Context, Env
from .typer import expect_rate


def rule(ck: Context, s: ast.Learn, mem: MemorySpec, obj: str, scope: str, period: PeriodSpec, env: Env) -> dict | None:
    """The LearnSpec fields a rule gives (`rule`, the rates, the flags), or None after an error."""
    rule_name, rule_args = ast.head(s.rule) if s.rule is not None else (None, ())
    if rule_name is None:
        rule_name = MEMORY_KINDS[mem.kind].rule
        if rule_name is None and obj != "task":
            ck.err("NL112", f"`learn {mem.name}` needs a rule, e.g. `by gd(lr: 0.1)`", s.span)
            return None
    elif rule_name not in RULES:
        ck.err("NL112", f"unknown rule `{rule_name}`", s.rule.span,
               did_you_mean(rule_name, RULES) or f"rules: {', '.join(RULES)}")
        return None
    if (rule_name == "append") != (mem.kind == "attention"):
        ck.err("NL112", "attention memories append their keys and values; other kinds take gd, momentum or implicit"
               if mem.kind == "attention" else "`append` is the rule of attention memories", s.rule.span)
        return None
    if rule_name == "implicit" and (mem.kind != "linear" or obj != "l2"):
        ck.err("NL112", "`implicit` (the exact proximal step) has a closed form only for `linear` memories on `l2`",
               s.rule.span)
        return None
    if rule_name == "implicit" and mem.norm:
        ck.err("NL112", "`implicit` (the exact proximal step) has no closed form through a memory's `norm`",
               s.rule.span, "use `gd`, or remove `norm`")
        return None
    rates: dict = {}
    flags: dict[str, tuple[bool, Span | None]] = {}
    if rule_name is not None:
        options(ck, s, rule_name, rule_args, mem, obj, env, rates, flags)
    decay_first, flag_span = flags.get("decay_first", (False, None))
    if decay_first and not decay_first_ok(ck, s, obj, scope, period, "decay" in rates, flag_span):
        return None
    per_token, flag_span = flags.get("per_token", (False, None))
    if per_token and not per_token_ok(ck, obj, scope, period, rule_name, "decay" in rates, flag_span):
        return None
    return dict(rule=rule_name, **{r: rates.get(r) for r in RATES}, decay_first=decay_first, per_token=per_token)


def options(ck: Context, s: ast.Learn, name: str, args, mem: MemorySpec, obj: str, env: Env, rates: dict,
            flags: dict) -> None:
    """A rule's options: its rates into `rates`, its flags into `flags`."""
    row = RULES[name]
    required, optional = row.required, row.optional
    ck.once(args)
    for a in args:
        bare = a.value.id if a.key is None and isinstance(a.value, ast.Name) else None
        option = a.key or bare
        if bare in row.flags:
            flags[bare] = (True, a.span)
        elif option in RULE_FLAGS and option not in optional:
            owners = " and ".join(f"`{r.name}`" for r in RULES.values() if option in r.optional)
            ck.err("NL113", f"`{name}` has no option `{option}`", a.span,
                   f"`{option}` is an option of {owners}; `{name}` has {', '.join(required + optional) or 'none'}")
        elif a.key is None:
            ck.err("NL115", f"`{name}` options are named, like `lr: 0.1`", a.span)
        elif a.key not in required + optional:
            ck.err("NL113", f"`{name}` has no option `{a.key}`", a.span,
                   did_you_mean(a.key, required + optional) or f"options: {', '.join(required + optional) or 'none'}")
        elif a.key in row.flags:
            on = const(ck, a.value, env, f"option `{a.key}`")
            flags[a.key] = (bool(on), a.span)
        else:
            rates[a.key] = a.value
            size = expect_rate(ck, a.value, mem, env, f"`{a.key}`")
            if obj == "task" and not per_period(a.value, env):
                ck.err("NL130", f"rate `{a.key}` of a `task` objective is one number per period: a constant "
                       "or `learned(c)`, not a value of each token", a.value.span,
                       "the period's gradient is of the whole chunk's loss")
            elif obj == "task" and size not in (1, None):
                ck.err("NL130", f"rate `{a.key}` of a `task` objective is one number, not one per head",
                       a.value.span, "write `learned(c)`, one scalar for all heads")
    for r in required:
        if r not in rates:
            ck.err("NL114", f"`{name}` needs `{r}:`", s.rule.span)


def decay_first_ok(ck: Context, s: ast.Learn, obj: str, scope: str, period: PeriodSpec, has_decay: bool,
                   span) -> bool:
    """`gd(..., decay_first)`: each token's gradient is taken at the state its own decay
    made, α_t S_{t−1} (Gated DeltaNet's order). Only a token's own decay is known
    before its gradient, so the level learns every token, from `l2` or `dot`."""
    if scope == "optimizer":
        ck.err("NL112", "`decay_first` is for model levels; an optimizer's memories decay after their step",
               span, "remove `decay_first`")
    elif obj == "task":
        ck.err("NL112", "`decay_first` takes each token's gradient at its decayed state; `task` learns from "
               "a whole period's loss", span, "remove `decay_first`, or learn from `l2(k, v)`")
    elif period.count != 1:
        ck.err("NL112", f"`decay_first` needs a level that learns every token, not {period}: a token's "
               "gradient is taken at the state its own decay made, α_t S_{t-1}", span,
               "write `every 1 token`, or remove `decay_first` (the period's decay then applies after its step)")
    elif not has_decay:
        ck.err("NL114", "`decay_first` needs `decay:`, the decay it applies before the step", s.rule.span)
    else:
        return True
    return False


def per_token_ok(ck: Context, obj: str, scope: str, period: PeriodSpec, rule: str, has_decay: bool, span) -> bool:
    """`gd(..., per_token)`, `momentum(..., per_token)`: the rule steps at every token of a
    period, each gradient taken at the state the period started with (Titans' mini-batch
    rule). An optimizer's items are steps, and `task` has one gradient per period: NL112.
    Where the per-token steps add up to the one step of the period, it changes nothing: NL118."""
    if scope == "optimizer":
        ck.err("NL112", "`per_token` is for model levels, which count tokens; an optimizer level steps "
               "once per period", span, "remove `per_token`")
        return False
    if obj == "task":
        ck.err("NL112", "`per_token` steps on each token's gradient; `task` has one gradient per period, "
               "of the whole period's loss", span, "remove `per_token`")
        return False
    if period.count == 1:
        ck.report.warning("NL118", "`per_token` changes nothing at `every 1 token`: a period of one token "
                          "has one step either way", span, "remove `per_token`")
    elif rule == "gd" and not has_decay:
        ck.report.warning("NL118", "`per_token` changes nothing for `gd` without `decay:`: a period's "
                          "per-token steps, all taken at its start, add up to its one step", span,
                          "remove `per_token`, or give `gd` a `decay:`")
    return True


def per_period(e, env: Env) -> bool:
    """Whether a rate is the same for every token: numbers, constants, constant vectors,
    `learned(c)`, and arithmetic or elementwise functions of them."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name) and not (n.id in env.consts or n.id in ("true", "false")):
            return False
        if isinstance(n, ast.Call) and n.func not in ("learned", "range") and n.func not in ELEMENTWISE:
            return False
    return True
