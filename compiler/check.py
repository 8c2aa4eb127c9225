"""Check: resolve names, evaluate sizes, type flows, and rule out acausal specs.

Input: a loaded `Program` (ASTs of the root file and its imports). Output: a
`ProgramSpec` of concrete, validated models and optimizers, or diagnostics. Every
error found in a file is reported, not just the first.
"""
from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field

import networkx as nx

from . import ast, fold
from .diagnostics import Report, Span, did_you_mean
from .fold import MAX_NUMBER
from .load import Program, library_root, read_source
from .parse import parse
from .spec import (LIKE_W, AssignSpec, BlockSpec, FlowSpec, LearnSpec, LevelSpec, MemorySpec, ModelSpec,
                   OptimizerSpec, OptimizerUseSpec, OuterParam, PeriodSpec, ProgramSpec, Size, UpdateSpec,
                   unique_name)

# ------------------------------------------------------------------ vocabulary
MEMORY_KINDS = ("linear", "mlp", "elementwise", "attention")
OBJECTIVES = ("l2", "dot", "task")
RULES = {  # rule -> (required options, optional options)
    "gd": (("lr",), ("decay", "decay_first", "per_token")),
    "momentum": (("lr", "beta"), ("decay", "per_token")),
    "implicit": (("lr",), ()),
    "append": ((), ()),
}
ACTIVATIONS = ("silu", "gelu", "relu", "tanh", "sigmoid", "identity")
ELEMENTWISE = ("silu", "gelu", "relu", "tanh", "sigmoid", "softplus", "exp", "sqrt", "abs", "sign")
MODEL_FUNCS = ELEMENTWISE + ("proj", "conv", "l2norm", "rmsnorm", "learned", "max", "min", "select")
OPTIMIZER_FUNCS = ELEMENTWISE + ("l2norm", "max", "min", "select", "newton_schulz", "rows", "cols")
SETTINGS = {"vocab": None, "dim": None, "heads": 1, "depth": 1, "context": 512, "batch": 8}
OBJECTIVE_STMTS = ("next_token",)
SELECTORS = ("all", "matrices", "vectors", "rest")
HINTS = {"tile": int, "kernel": ("auto", "torch", "triton"), "group": ("off", "on")}
RULE_FLAGS = ("decay_first", "per_token")  # rule options written bare, like a memory's `residual`
INITS = ("zeros", "ones", "normal", "identity")
MAX_SIZE = 1 << 24  # a dimension beyond this is a typo, and would not fit anyway
WORDS = {"self": "inside a learn statement, the memory being learned", "true": "the constant 1",
         "false": "the constant 0"}  # names the language gives a meaning of its own


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


class Checker:
    def __init__(self, program: Program, report: Report, overrides: dict | None = None):
        self.program, self.report = program, report
        self.overrides = dict(overrides or {})

    # ------------------------------------------------------------ helpers
    def err(self, code, msg, span, help=None):
        self.report.error(code, msg, span, help)

    def name_ok(self, name: str, span: Span | None) -> bool:
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
            elif a.key is not None or key in ("residual", "bias", "fixed", "detach") + RULE_FLAGS:
                seen.add(key)

    def clashes(self, memories, env: Env) -> None:
        """NL101 for memories named like a setting, a hyperparameter or the stream (`x`, `g`, `W`, `step`)."""
        for name, span in memories:
            if name in env.consts or name in env.values:
                what = {"x": "the stream", "g": "the gradient", "W": "the parameter", "step": "the step count"}.get(
                    name, "a hyperparameter" if env.optimizer else "a setting")
                self.err("NL101", f"memory `{name}` has the name of {what}", span, f"rename it, e.g. `{name}_mem`")

    def unknown(self, what: str, name: str, span, candidates, code="NL100") -> None:
        self.err(code, f"unknown {what} `{name}`", span, did_you_mean(name, candidates))

    def const(self, e: ast.Expr, env: Env, what: str) -> float | None:
        """Evaluate a compile-time constant, or report why it is not one."""
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in env.consts:
                return env.consts[e.id]
            if e.id in ("true", "false"):
                return float(e.id == "true")
            if e.id in env.values or e.id in env.memories:
                self.err("NL115", f"{what} must be a constant, but `{e.id}` changes with the input", e.span)
                return None
            self.unknown("name", e.id, e.span, list(env.consts) + ["true", "false"])
            return None
        if isinstance(e, ast.Neg):
            v = self.const(e.operand, env, what)
            return None if v is None else -v
        if isinstance(e, ast.BinOp):
            return self.folded(e.op, (e.left, e.right), e, env, what)
        if isinstance(e, ast.Call) and _foldable(e, env):
            arity = fold.FUNCS[e.func][1]
            if len(e.args) != arity:
                self.err("NL117", f"`{e.func}` takes {arity} argument{'s' if arity > 1 else ''}, got {len(e.args)}",
                         e.span)
                return None
            return self.folded(e.func, e.positional, e, env, what)
        self.err("NL115", f"{what} must be a constant expression", getattr(e, "span", None))
        return None

    def folded(self, op: str, operands, e: ast.Expr, env: Env, what: str) -> float | None:
        """`op` on the values of constant operands, or NL160 at `e` if it has none in range."""
        values = [self.const(x, env, what) for x in operands]
        if None in values:
            return None
        try:
            return fold.apply(op, *values)
        except fold.FoldError as reason:
            self.err("NL160", f"{what} {reason}", e.span, reason.help)
            return None

    def count(self, e: ast.Expr, env: Env, what: str, lo: int = 1) -> int | None:
        v = self.const(e, env, what)
        if v is None:
            return None
        if v != int(v) or v < lo:
            bound = "a positive integer" if lo == 1 else f"an integer of at least {lo}"
            self.err("NL120" if "period" in what else "NL115", f"{what} must be {bound}, not {_num(v)}", e.span)
            return None
        if v > MAX_SIZE and "period" not in what:
            self.err("NL160", f"{what} {_num(v)} is out of range (at most {MAX_SIZE:,})", e.span)
            return None
        return int(v)

    # ------------------------------------------------------------ program
    def run(self) -> ProgramSpec:
        models, optimizers = [], []
        root = self.program.modules.get(self.program.root)
        self.unknown_overrides([i for i in root.items if isinstance(i, ast.Model)] if root else [])
        for file, module in list(self.program.modules.items()):
            defs = [(i.name, i.span) for i in module.items if isinstance(i, (ast.Model, ast.OptimizerDef))]
            self.unique(defs, "definition")
            for item in module.items:
                if isinstance(item, ast.OptimizerDef):
                    spec = self.optimizer(item, file, {})
                    if spec and module is root:
                        optimizers.append(spec)
                elif isinstance(item, ast.Model) and module is root:
                    spec = self.model(item, file)
                    if spec:
                        models.append(spec)
        return ProgramSpec(file=self.program.root, models=tuple(models), optimizers=tuple(optimizers))

    def unknown_overrides(self, models: list[ast.Model]) -> None:
        """NL124 for an override that names no setting: misspelt, it would otherwise
        become a new constant that nothing reads."""
        known = set(SETTINGS) | {s.name for m in models for s in m.body if isinstance(s, ast.Setting)}
        for key, value in self.overrides.items():
            if key not in known:
                self.err("NL124", f"override `{key}={value!r}` names no setting of this spec",
                         models[0].span if models else None,
                         did_you_mean(key, known) or f"settings: {', '.join(sorted(known))}")

    def visible_optimizers(self, file: str) -> dict[str, tuple[ast.OptimizerDef, str]]:
        out = {}
        for f in self.program.imports.get(file, []) + [file]:
            for item in self.program.modules[f].items if f in self.program.modules else ():
                if isinstance(item, ast.OptimizerDef):
                    out[item.name] = (item, f)
        return out

    def library_optimizer(self, name: str) -> tuple[ast.OptimizerDef, str] | None:
        """`optimizer adam(...)` with no import finds examples/optim/adam.nl."""
        path = library_root() / "optim" / f"{name}.nl"
        try:
            found = name.isidentifier() and path.is_file()
        except OSError:  # e.g. a name too long for the file system
            found = False
        if not found:
            return None
        key = str(path.resolve())
        if key not in self.program.modules:
            text = read_source(path, self.report)
            module = parse(text, key, self.report) if text is not None else None
            if module is None:
                return None
            self.program.modules[key] = module
        item = next((i for i in self.program.modules[key].items
                     if isinstance(i, ast.OptimizerDef) and i.name == name), None)
        return (item, key) if item else None

    # ------------------------------------------------------------ models
    def model(self, m: ast.Model, file: str) -> ModelSpec | None:
        errors_before = len(self.report.errors)
        consts = self.settings(m)
        levels_ast = [s for s in m.body if isinstance(s, ast.Level)]
        self.unique([(l.name, l.span) for l in levels_ast], "level")
        levels: dict[str, LevelSpec] = {}
        for lv in levels_ast:
            spec = self.level(lv, consts, optimizer=False)
            if spec and lv.name not in levels:
                levels[lv.name] = spec
        self.cms_links(levels, levels_ast)
        self.apply_hints(m, levels, consts)

        blocks = []
        used: dict[str, Span] = {}
        broken = {lv.name for lv in levels_ast} - set(levels)
        for i, b in enumerate(s for s in m.body if isinstance(s, ast.Block)):
            spec = self.block(b, i, consts, levels, used, broken)
            if spec:
                blocks.append(spec)
        if not any(isinstance(s, ast.Block) for s in m.body):
            self.err("NL156", f"model `{m.name}` has no block", m.span,
                     "add `block repeat depth { x = x + level(rmsnorm(x)) }`")
        for name, spec in levels.items():
            if name not in used:
                self.report.warning("NL155", f"level `{name}` is never used in a block", spec.span)

        objective = self.objective(m)
        optimizers = self.optimizer_uses(m, file)
        dim, vocab = int(consts.get("dim", 1)), int(consts.get("vocab", 1))
        params = (OuterParam(name="embed", shape=(vocab, dim), role="embedding", span=m.span),
                  OuterParam(name="norm", shape=(dim,), role="norm", span=m.span),
                  OuterParam(name="head", shape=(vocab, dim), role="head", span=m.span))
        if len(self.report.errors) > errors_before or objective is None:
            return None
        # levels in the order the blocks use them, unused ones last
        order = [n for b in blocks for n in b.levels] + [n for n in levels if n not in used]
        return ModelSpec(name=m.name, settings=consts, levels=tuple(levels[n] for n in order),
                         blocks=tuple(blocks), objective=objective, optimizers=optimizers,
                         params=params, file=file, span=m.span)

    def settings(self, m: ast.Model) -> dict[str, float]:
        settings = [s for s in m.body if isinstance(s, ast.Setting)]
        self.unique([(s.name, s.span) for s in settings], "setting")
        consts: dict[str, float] = {}
        env = Env(consts)
        # the spec's settings in order, then overrides of settings it leaves to their defaults
        given = [(s.name, s.value, s.value.span) for s in settings]
        written = {s.name for s in settings}
        given += [(k, None, m.span) for k in self.overrides if k in SETTINGS and k not in written]
        for name, value, span in given:
            what = f"setting `{name}`" if name not in self.overrides else f"override `{name}={self.overrides[name]!r}`"
            v = self.overrides[name] if name in self.overrides else self.const(value, env, what)
            stand_in = SETTINGS.get(name) or 64  # after an error, so that what uses the setting is not reported too
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                if v is not None:
                    self.err("NL115", f"{what} must be a number", span)
                consts.setdefault(name, stand_in)
                continue
            if abs(v) > MAX_NUMBER:  # an override: the spec's own values were folded in range
                self.err("NL160", f"{what} is out of range", span, f"numbers must be at most {MAX_NUMBER:.0e} in size")
                v = stand_in
            if name in SETTINGS and (v != int(v) or v < 1):
                self.err("NL115", f"{what} must be a positive integer, not {_num(v)}", span)
                v = stand_in
            elif name in SETTINGS and v > MAX_SIZE:
                self.err("NL160", f"{what} {_num(v)} is out of range (at most {MAX_SIZE:,})", span)
                v = stand_in
            consts.setdefault(name, int(v) if v == int(v) else v)
        for name, default in SETTINGS.items():
            if name not in consts:
                if default is None:
                    self.err("NL123", f"model `{m.name}` does not set `{name}`", m.span,
                             f"add a line `{name} 256` to the model")
                    consts[name] = 1
                else:
                    consts[name] = default
        return consts

    def objective(self, m: ast.Model) -> str | None:
        stmts = [s for s in m.body if isinstance(s, ast.Objective)]
        if not stmts:
            self.err("NL114", f"model `{m.name}` has no objective", m.span, "add `objective next_token`")
            return None
        for extra in stmts[1:]:
            self.err("NL101", "a model has one objective", extra.span)
        name, args = ast.head(stmts[0].value)
        if name in OBJECTIVE_STMTS and args:
            self.err("NL117", f"`{name}` takes no arguments", stmts[0].value.span, f"write `objective {name}`")
            return None
        if name not in OBJECTIVE_STMTS:
            self.err("NL111", f"unknown outer objective `{name or '?'}`", stmts[0].value.span,
                     did_you_mean(name or "", OBJECTIVE_STMTS) or "the outer objective is `next_token`")
            return None
        return name

    def optimizer_uses(self, m: ast.Model, file: str) -> tuple[OptimizerUseSpec, ...]:
        uses = [s for s in m.body if isinstance(s, ast.OptimizerUse)]
        if not uses:
            self.err("NL114", f"model `{m.name}` has no optimizer", m.span, "add `optimizer adamw(lr: 3e-4)`")
        visible = self.visible_optimizers(file)
        out, selectors = [], {}
        for u in uses:
            name, args = ast.head(u.value)
            if name is None:
                self.err("NL115", "an optimizer is a name with options, like `adamw(lr: 3e-4)`", u.value.span)
                continue
            found = visible.get(name) or self.library_optimizer(name)
            if found is None:
                lib = [p.stem for p in (library_root() / "optim").glob("*.nl")]
                self.unknown("optimizer", name, u.value.span, list(visible) + lib)
                continue
            sel = u.selector or "all"
            if sel not in SELECTORS:
                self.unknown("parameter group", sel, u.span, SELECTORS, "NL113")
                continue
            if sel in selectors:
                self.err("NL101", f"two optimizers for the parameter group `{sel}`", u.span)
            selectors[sel] = u
            hp = {}
            self.once(args)
            for a in args:
                if a.key is None:
                    self.err("NL115", "optimizer options are named, like `lr: 3e-4`", a.span)
                    continue
                v = self.const(a.value, Env({}), f"option `{a.key}`")
                if v is not None:
                    hp[a.key] = v
            definition, where = found
            spec = self.optimizer(definition, where, hp, use_span=u.value.span, use_args=args)
            if spec:
                out.append(OptimizerUseSpec(optimizer=spec, selector=sel, span=u.span))
        if "all" in selectors and len(selectors) > 1:
            self.err("NL101", "an optimizer for `all` parameters leaves none for the others",
                     selectors["all"].span, "name the rest `for rest`")
        elif selectors and not ({"all", "rest"} & set(selectors) or {"matrices", "vectors"} <= set(selectors)):
            (only,) = selectors
            other = "vectors" if only == "matrices" else "matrices"
            self.err("NL114", f"no optimizer trains the {other}", selectors[only].span,
                     "add one `for rest`, e.g. `optimizer adamw(lr: 3e-4) for rest`")
        return tuple(out)

    def apply_hints(self, m: ast.Model, levels: dict[str, LevelSpec], consts) -> None:
        seen: dict[tuple[str, str], Span | None] = {}
        for sched in (s for s in m.body if isinstance(s, ast.Schedule)):
            for h in sched.hints:
                if (h.level, h.key) in seen:
                    first = seen[h.level, h.key]
                    self.err("NL101", f"hint `{h.level}.{h.key}` is given twice"
                             + (f" (first at line {first.line})" if first else ""), h.span)
                    continue
                seen[h.level, h.key] = h.span
                if h.level not in levels:
                    if not any(isinstance(s, ast.Level) and s.name == h.level for s in m.body):  # else reported
                        self.unknown("level", h.level, h.span, levels)
                    continue
                kind = HINTS.get(h.key)
                if kind is None:
                    self.unknown("schedule hint", h.key, h.span, HINTS, "NL113")
                elif kind is int:
                    v = self.count(h.value, Env(consts), f"hint `{h.key}`")
                    if v is not None:
                        levels[h.level] = levels[h.level].model_copy(
                            update={"hints": {**levels[h.level].hints, h.key: v}})
                else:
                    name, _ = ast.head(h.value)
                    if name not in kind:
                        self.err("NL115", f"hint `{h.key}` is one of {', '.join(kind)}", h.value.span,
                                 did_you_mean(name or "", kind))
                    else:
                        levels[h.level] = levels[h.level].model_copy(
                            update={"hints": {**levels[h.level].hints, h.key: name}})

    # ------------------------------------------------------------ levels
    def period(self, p: ast.Period, consts, optimizer: bool) -> PeriodSpec | None:
        if p.kind != "every":
            if optimizer:
                self.err("NL121", f"optimizer levels count steps; `{p.kind}` is for model levels", p.span,
                         "write `every 1 step`")
                return None
            return PeriodSpec(kind=p.kind)
        unit = "steps" if optimizer else "tokens"
        if p.unit != unit:
            self.err("NL121", f"{'optimizer' if optimizer else 'model'} levels count {unit}, not {p.unit}",
                     p.span, f"write `every N {unit}`" + ("" if optimizer else
                     "; a level slower than a batch is written in tokens too (e.g. `every 1M tokens`)"))
            return None
        n = self.count(p.count, Env(consts), "a period")
        if n is None:
            return None
        return PeriodSpec(kind=unit, count=n)

    def scope(self, period: PeriodSpec, consts, optimizer: bool) -> str:
        if optimizer:
            return "optimizer"
        if period.kind in ("outer", "frozen"):
            return period.kind
        return "sequence" if period.count <= consts["context"] else "cross"

    def level(self, lv: ast.Level, consts, optimizer: bool, shared: Env | None = None) -> LevelSpec | None:
        errors_before = len(self.report.errors)
        self.name_ok(lv.name, lv.span)
        period = self.period(lv.period, consts, optimizer)
        env = shared or Env(consts, {"x": int(consts["dim"])}, funcs=MODEL_FUNCS)
        mems = [s for s in lv.body if isinstance(s, ast.Memory)]
        self.unique([(n, sp or m.span) for m in mems for n, sp in _zip_spans(m)], "memory")
        self.clashes([(n, sp or m.span) for m in mems for n, sp in _zip_spans(m)], env)
        memories: dict[str, MemorySpec] = {}
        for m in mems:
            for name, span in _zip_spans(m):
                spec = self.memory(m, name, lv.name, env, optimizer)
                if spec and name not in memories:
                    memories[name] = spec
                    env.memories[name] = spec
        env.broken.update(n for m in mems for n in m.names if n not in memories)
        flows_ast = [s for s in lv.body if isinstance(s, ast.Flow)]
        flows = self.flows(flows_ast, env, lv.name)
        if period is None:  # its memories and flows are checked; learning needs the period
            return None
        scope = self.scope(period, consts, optimizer)
        learns = self.learns(lv, scope, period, env, memories)
        outs = [s for s in lv.body if isinstance(s, ast.Out)]
        out = None
        if outs and optimizer:
            self.err("NL115", "optimizer levels have no `out`; the `update` statements use their memories", outs[0].span)
        elif outs:
            for extra in outs[1:]:
                self.err("NL101", f"level `{lv.name}` has two `out` statements", extra.span)
            out = outs[0].value
            size = self.typeof(out, env, params=[], owner=f"{lv.name}.out")
            if size is not None and size != consts["dim"]:
                self.err("NL130", f"level `{lv.name}` outputs size {size}, but blocks carry size {int(consts['dim'])}",
                         out.span, "project it back, e.g. `out proj(...)`")
        elif not optimizer and not env.broken & {n for m in mems for n in m.names}:
            if len(memories) == 1:
                (only,) = memories.values()
                if only.kind == "attention":
                    self.err("NL157", f"level `{lv.name}` needs an `out` statement to query its attention memory", lv.span,
                             f"e.g. `out proj({only.name}(q))`")
                elif only.d_in != consts["dim"] or only.d_out != consts["dim"]:
                    self.err("NL130", f"level `{lv.name}` has no `out`, and its memory `{only.name}` does not map "
                             f"size {int(consts['dim'])} to {int(consts['dim'])}", lv.span, "add `out ...`")
                else:
                    out = ast.Call(only.name, (ast.Arg(ast.Name("x", lv.span), None, lv.span),), lv.span)
            else:
                self.err("NL157", f"level `{lv.name}` has {len(memories)} memories and no `out` statement", lv.span,
                         "say what the level returns, e.g. `out mem(q)`")
        if len(self.report.errors) > errors_before:
            return None
        params = tuple(self.level_params(lv.name, flows, out, learns, env, memories, scope))
        spec = LevelSpec(name=lv.name, period=period, scope=scope, memories=tuple(memories.values()),
                         flows=tuple(flows), learns=tuple(learns), out=out, params=params, span=lv.span)
        self.causality(spec, env)
        return spec

    def level_params(self, level, flows, out, learns, env, memories, scope):
        """Outer parameters of a level: those its flows create, and the θ₀ of its memories."""
        for f in flows:
            yield from self.param_sites(f.value, f"{level}.{f.name}", env)
        if out is not None:
            yield from self.param_sites(out, f"{level}.out", env)
        for l in learns:
            for role in ("key", "value", "lr", "decay", "beta"):
                if getattr(l, role) is not None:
                    yield from self.param_sites(getattr(l, role), f"{level}.{l.memory}.{role}", env)
        for m in memories.values():
            # a frozen level's memories never change: their θ₀ are constants, not trained
            if m.kind in ("attention", "elementwise") or m.fixed or m.init.count(".") or scope == "frozen":
                continue
            for k, shape in m.state_shapes().items():
                yield OuterParam(name=f"{level}.{m.name}.{k}", shape=shape, role="init", span=m.span)

    def param_sites(self, e: ast.Expr, owner: str, env: Env):
        params: list[OuterParam] = []
        self.typeof(e, env, params, owner, quiet=True)
        return params

    # ------------------------------------------------------------ memories
    def memory(self, m: ast.Memory, name: str, level: str, env: Env, optimizer: bool) -> MemorySpec | None:
        kind, args = ast.head(m.kind)
        span = m.kind.span
        if kind not in MEMORY_KINDS:
            self.err("NL110", f"unknown memory kind `{kind or '?'}`", span,
                     did_you_mean(kind or "", MEMORY_KINDS) or f"kinds are {', '.join(MEMORY_KINDS)}")
            return None
        allowed = {
            "linear": ("heads", "init", "fixed", "detach"),
            "mlp": ("heads", "hidden", "act", "residual", "bias", "init", "fixed", "detach"),
            "elementwise": ("init", "detach"),
            "attention": ("heads", "window"),
        }[kind]
        flags = {"residual", "bias", "fixed", "detach"} & set(allowed)
        self.once(args)
        opts: dict = {}
        shape = []
        for a in args:
            v = a.value
            if a.key is None and isinstance(v, ast.Name) and v.id in flags:
                opts[v.id] = True
            elif a.key is None:
                shape.append(v)
            elif a.key not in allowed:
                self.err("NL113", f"`{kind}` memories have no option `{a.key}`", a.span,
                         did_you_mean(a.key, allowed) or f"options: {', '.join(allowed)}")
            elif a.key in flags:
                b = self.const(v, env, f"option `{a.key}`")
                opts[a.key] = bool(b)
            else:
                opts[a.key] = v
        dim = None if optimizer else int(env.consts["dim"])
        d_in = d_out = dim
        if kind in ("elementwise", "attention") and shape:
            self.err("NL115", f"`{kind}` memories take no size; their shape comes from {'the stream' if kind == 'elementwise' else 'their keys and values'}",
                     shape[0].span)
            return None
        if len(shape) > 1:
            self.err("NL115", f"a memory has one size (`d` or `d_in -> d_out`), not {len(shape)}", shape[1].span)
            return None
        if shape:
            s = shape[0]
            if isinstance(s, ast.Arrow):
                d_in = self.count(s.src, env, "a memory's input size")
                d_out = self.count(s.dst, env, "a memory's output size")
            else:
                d_in = d_out = self.count(s, env, "a memory's size")
            if d_in is None or d_out is None:
                return None
        if optimizer and kind in ("linear", "mlp") and (d_in, d_out) != (1, 1):
            self.err("NL130", f"in optimizer levels `{kind}` memories act on each coordinate of the stream, so their size is 1",
                     span, f"write `{kind}(1{', hidden: 8' if kind == 'mlp' else ''})`")
            return None
        if not optimizer and kind == "elementwise":
            self.err("NL110", "`elementwise` memories hold optimizer moments; model levels use linear, mlp or attention",
                     span)
            return None
        if optimizer and kind == "attention":
            self.err("NL110", "`attention` memories belong to model levels", span)
            return None
        heads = 1
        if "heads" in opts:
            heads = self.count(opts["heads"], env, "`heads`")
            if heads is None:
                return None
        hidden = None
        if kind == "mlp":
            hidden = self.count(opts["hidden"], env, "`hidden`") if "hidden" in opts else d_in
            if hidden is None:
                return None
        if kind in ("linear", "mlp") or (kind == "attention" and not optimizer):
            sizes = {"input": d_in, "output": d_out, "hidden": hidden}
            if kind == "attention":
                sizes = {"model": dim}
            for what, size in sizes.items():
                if size is not None and size % heads:
                    self.err("NL131", f"{heads} heads do not divide the {what} size {size}", span)
                    return None
        if opts.get("residual") and d_in != d_out:
            self.err("NL130", f"a residual memory maps a size to itself, not {d_in} -> {d_out}", span)
            return None
        act = "silu"
        if "act" in opts:
            act, _ = ast.head(opts["act"])
            if act not in ACTIVATIONS:
                self.err("NL115", f"unknown activation `{act or '?'}`", opts["act"].span,
                         did_you_mean(act or "", ACTIVATIONS) or f"activations: {', '.join(ACTIVATIONS)}")
                return None
        window = None
        if "window" in opts:
            window = self.count(opts["window"], env, "`window`")
            if window is None:
                return None
        init = {"linear": "zeros", "mlp": "normal", "elementwise": "zeros", "attention": "zeros"}[kind]
        if "init" in opts:
            v = opts["init"]
            if isinstance(v, ast.Member) and optimizer:
                self.err("NL115", "only model levels restart from another level's memory (`init: level.memory`)",
                         v.span, "give it an initial state like `init: zeros`")
                return None
            if isinstance(v, ast.Member) and optimizer:
                self.err("NL115", "an optimizer's memories start from `zeros` or `ones`, not another memory", v.span)
                return None
            if isinstance(v, ast.Member):
                init = f"{v.owner}.{v.name}"  # resolved in cms_links, once all levels are known
            else:
                init, _ = ast.head(v)
                valid = ("zeros", "ones") if kind == "elementwise" else INITS
                if init not in valid:
                    self.err("NL115", f"unknown initial state `{init or '?'}`", v.span,
                             did_you_mean(init or "", valid) or f"initial states: {', '.join(valid)}, or `level.memory`")
                    return None
                if init == "identity" and d_in != d_out:
                    self.err("NL130", f"an identity initial state needs a square memory, not {d_in} -> {d_out}", v.span)
                    return None
        return MemorySpec(name=name, level=level, kind=kind, d_in=d_in, d_out=d_out, heads=heads, hidden=hidden,
                          act=act, residual=opts.get("residual", False), bias=opts.get("bias", False), init=init,
                          fixed=opts.get("fixed", False), detach=opts.get("detach", False), window=window,
                          span=m.span)

    def cms_links(self, levels: dict[str, LevelSpec], levels_ast) -> None:
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
                        self.unknown("level", owner, m.span, levels)
                    continue
                src = next((x for x in src_level.memories if x.name == name), None)
                if src is None:
                    self.err("NL100", f"level `{owner}` has no memory `{name}`", m.span,
                             did_you_mean(name, [x.name for x in src_level.memories]))
                    continue
                if (src.kind, src.d_in, src.d_out, src.hidden, src.heads) != (m.kind, m.d_in, m.d_out, m.hidden, m.heads):
                    self.err("NL130", f"memory `{lv.name}.{m.name}` cannot start from `{owner}.{name}`: their shapes differ",
                             m.span)
                p, q = lv.period, src_level.period
                if p.count is None or q.count is None or q.count <= p.count or q.count % p.count:
                    self.err("NL122", f"level `{lv.name}` ({p}) restarts from `{owner}` ({q}), which must be slower "
                             f"with a period that is a multiple of {p.count or 'it'}", m.span)

    # ------------------------------------------------------------ flows
    def flows(self, flows_ast, env: Env, owner: str) -> list[FlowSpec]:
        self.unique([(f.name, f.span) for f in flows_ast], "flow")
        clash = [f for f in flows_ast if f.name in env.memories or f.name in ("x", "g", "W", "step")
                 or f.name in env.consts]
        for f in clash:
            self.err("NL101", f"flow `{f.name}` has the name of something already defined", f.span)
        by_name = {f.name: f for f in flows_ast}
        # flows may be written in any order; type them in dependency order
        graph = nx.DiGraph()
        for f in flows_ast:
            graph.add_node(f.name)
            for n in ast.names(f.value):
                if n in by_name and n != f.name:
                    graph.add_edge(n, f.name)
                elif n == f.name:
                    self.err("NL141", f"flow `{f.name}` is defined in terms of itself", f.span)
                    env.broken.add(f.name)
        try:
            order = list(nx.lexicographical_topological_sort(graph))
        except nx.NetworkXUnfeasible:
            cycle = _cycle(graph)
            names = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
            self.err("NL141", f"flows depend on each other in a cycle: {names}", by_name[cycle[0][0]].span)
            env.broken.update(by_name)
            return []
        out = []
        for name in order:
            f = by_name[name]
            if name in env.broken:  # defined in terms of itself
                continue
            size = self.typeof(f.value, env, [], f"{owner}.{name}")
            if size is not None:
                env.values[name] = size
                out.append(FlowSpec(name=name, value=f.value, size=size, span=f.span))
            else:
                env.broken.add(name)
        written: dict[str, int] = {}
        for i, f in enumerate(flows_ast):
            written.setdefault(f.name, i)
        return sorted(out, key=lambda f: written[f.name])  # in the order they are written

    # ------------------------------------------------------------ learning
    def learns(self, lv: ast.Level, scope: str, period: PeriodSpec, env: Env, memories) -> list[LearnSpec]:
        out, learned = [], {}
        for s in (s for s in lv.body if isinstance(s, ast.Learn)):
            for name, span in _zip_spans(s):
                if name not in memories:
                    if name not in env.broken:
                        self.err("NL100", f"level `{lv.name}` has no memory `{name}`", span, did_you_mean(name, memories))
                    continue
                if name in learned:
                    self.err("NL151", f"memory `{name}` is learned twice (first at line {learned[name].line})", span)
                    continue
                learned[name] = s.span
                spec = self.learn(s, memories[name], scope, period, env)
                if spec:
                    out.append(spec)
        for name, m in memories.items():
            if name in learned:
                continue
            if scope == "sequence" or scope == "optimizer":
                self.err("NL150", f"memory `{name}` of level `{lv.name}` ({period}) has no learn statement", m.span,
                         f"add e.g. `learn {name} : dot(g) by gd(lr: 1, decay: 0.9)`" if scope == "optimizer" else
                         f"add e.g. `learn {name} : l2(k, v) by gd(lr: 0.1)`, or make the level `outer`")
            elif m.kind == "attention":
                self.err("NL150", f"attention memory `{name}` needs `learn {name} : l2(k, v)` to say its keys and values", m.span)
        return out

    def learn(self, s: ast.Learn, mem: MemorySpec, scope: str, period: PeriodSpec, env: Env) -> LearnSpec | None:
        obj, args = ast.head(s.objective)
        if obj not in OBJECTIVES:
            self.err("NL111", f"unknown objective `{obj or '?'}`", s.objective.span,
                     did_you_mean(obj or "", OBJECTIVES) or f"objectives: {', '.join(OBJECTIVES)}")
            return None
        if scope in ("outer", "frozen"):
            self.err("NL153", f"level `{mem.level}` is `{scope}`: "
                     + ("the outer optimizer trains its memories" if scope == "outer" else "its memories never change"),
                     s.span, "remove the learn statement, or give the level a period like `every 64 tokens`")
            return None
        rule_name, rule_args = ast.head(s.rule) if s.rule is not None else (None, ())
        if obj == "task":
            if args:
                self.err("NL115", "`task` takes no arguments: it is the outer objective's gradient", s.objective.span)
                return None
            if scope == "optimizer":
                self.err("NL111", "optimizer levels have no `task` objective; use `dot` or `l2` on the gradient stream",
                         s.objective.span)
                return None
            if mem.kind == "attention":
                self.err("NL111", "attention memories learn by `l2(k, v)`, not `task`", s.objective.span)
                return None
            if scope == "cross":
                if s.rule is not None:
                    self.err("NL152", f"level `{mem.level}` ({period}) is slower than a sequence: the outer optimizer "
                             "trains it every few steps, so it takes no rule", s.rule.span, f"write `learn {mem.name} : task`")
                    return None
            elif s.rule is None:
                self.err("NL112", "`task` inside a sequence needs a rule, e.g. `by gd(lr: 1e-3)`", s.span)
                return None
            if s.read == "within":
                self.err("NL140", "`read within` a `task` objective reads the future: the gradient of a chunk's "
                         "next-token loss needs the outputs of the whole chunk", s.span,
                         "remove `read within`: the default, `read before`, reads the state the chunk started with")
                return None
        elif scope == "cross":
            self.err("NL152", f"level `{mem.level}` ({period}) is slower than a sequence; only `task` (multi-rate "
                     "outer training) reaches it", s.objective.span)
            return None
        key = value = None
        if obj in ("l2", "dot"):
            positional = [a for a in args]
            for a in positional:
                if a.key is not None:
                    self.err("NL113", f"`{obj}` takes a key and a value, not `{a.key}:`", a.span)
                    return None
            keyless = mem.kind == "elementwise"
            if len(positional) == 2:
                key, value = positional[0].value, positional[1].value
            elif len(positional) == 1 and keyless:
                value = positional[0].value
            else:
                want = "a value, or a key and a value" if keyless else "a key and a value"
                self.err("NL117", f"`{obj}` takes {want}, got {len(positional)} argument(s)", s.objective.span,
                         f"e.g. `{obj}(k, v)`")
                return None
            if mem.kind == "attention" and obj != "l2":
                self.err("NL111", "attention memories learn by `l2(k, v)`: softmax attention is the non-parametric "
                         "solution of that regression", s.objective.span)
                return None
            inner = Env(env.consts, env.values, env.memories, env.levels, env.funcs, this=mem, optimizer=env.optimizer,
                        broken=env.broken)
            # optimizer memories act on each coordinate: keys and values are shaped like W
            coordinatewise = env.optimizer or mem.kind == "elementwise"
            if key is not None:
                self.expect_size(key, LIKE_W if coordinatewise else mem.d_in, inner, f"the key of `{mem.name}`")
            self.expect_size(value, LIKE_W if coordinatewise else mem.d_out, inner, f"the value of `{mem.name}`")
        # the rule
        default_rule = "append" if mem.kind == "attention" else None
        if rule_name is None:
            rule_name = default_rule
            if rule_name is None and obj != "task":
                self.err("NL112", f"`learn {mem.name}` needs a rule, e.g. `by gd(lr: 0.1)`", s.span)
                return None
        elif rule_name not in RULES:
            self.err("NL112", f"unknown rule `{rule_name}`", s.rule.span,
                     did_you_mean(rule_name, RULES) or f"rules: {', '.join(RULES)}")
            return None
        if (rule_name == "append") != (mem.kind == "attention"):
            self.err("NL112", "attention memories append their keys and values; other kinds take gd, momentum or implicit"
                     if mem.kind == "attention" else "`append` is the rule of attention memories", s.rule.span)
            return None
        if rule_name == "implicit" and (mem.kind != "linear" or obj != "l2"):
            self.err("NL112", "`implicit` (the exact proximal step) has a closed form only for `linear` memories on `l2`",
                     s.rule.span)
            return None
        rates: dict = {}
        flags: dict[str, tuple[bool, Span | None]] = {}
        if rule_name is not None:
            required, optional = RULES[rule_name]
            self.once(rule_args)
            for a in rule_args:
                bare = a.value.id if a.key is None and isinstance(a.value, ast.Name) else None
                option = a.key or bare
                if bare in RULE_FLAGS and bare in optional:
                    flags[bare] = (True, a.span)
                elif option in RULE_FLAGS and option not in optional:
                    owners = " and ".join(f"`{r}`" for r, (_, opts) in RULES.items() if option in opts)
                    self.err("NL113", f"`{rule_name}` has no option `{option}`", a.span,
                             f"`{option}` is an option of {owners}; `{rule_name}` has "
                             f"{', '.join(required + optional) or 'none'}")
                elif a.key is None:
                    self.err("NL115", f"`{rule_name}` options are named, like `lr: 0.1`", a.span)
                elif a.key not in required + optional:
                    self.err("NL113", f"`{rule_name}` has no option `{a.key}`", a.span,
                             did_you_mean(a.key, required + optional) or f"options: {', '.join(required + optional) or 'none'}")
                elif a.key in RULE_FLAGS:
                    on = self.const(a.value, env, f"option `{a.key}`")
                    flags[a.key] = (bool(on), a.span)
                else:
                    rates[a.key] = a.value
                    size = self.expect_rate(a.value, mem, env, f"`{a.key}`")
                    if obj == "task" and not _per_period(a.value, env):
                        self.err("NL130", f"rate `{a.key}` of a `task` objective is one number per period: a constant "
                                 "or `learned(c)`, not a value of each token", a.value.span,
                                 "the period's gradient is of the whole chunk's loss")
                    elif obj == "task" and size not in (1, None):
                        self.err("NL130", f"rate `{a.key}` of a `task` objective is one number, not one per head",
                                 a.value.span, "write `learned(c)`, one scalar for all heads")
            for r in required:
                if r not in rates:
                    self.err("NL114", f"`{rule_name}` needs `{r}:`", s.rule.span)
        decay_first, flag_span = flags.get("decay_first", (False, None))
        if decay_first and not self.decay_first_ok(s, obj, scope, period, "decay" in rates, flag_span):
            return None
        per_token, flag_span = flags.get("per_token", (False, None))
        if per_token and not self.per_token_ok(obj, scope, period, rule_name, "decay" in rates, flag_span):
            return None
        return LearnSpec(memory=mem.name, objective=obj, key=key, value=value, rule=rule_name,
                         lr=rates.get("lr"), decay=rates.get("decay"), beta=rates.get("beta"),
                         decay_first=decay_first, per_token=per_token, read=s.read or "before", span=s.span)

    def decay_first_ok(self, s: ast.Learn, obj: str, scope: str, period: PeriodSpec, has_decay: bool, span) -> bool:
        """`gd(..., decay_first)`: each token's gradient is taken at the state its own decay
        made, α_t S_{t−1} (Gated DeltaNet's order). Only a token's own decay is known
        before its gradient, so the level learns every token, from `l2` or `dot`."""
        if scope == "optimizer":
            self.err("NL112", "`decay_first` is for model levels; an optimizer's memories decay after their step",
                     span, "remove `decay_first`")
        elif obj == "task":
            self.err("NL112", "`decay_first` takes each token's gradient at its decayed state; `task` learns from "
                     "a whole period's loss", span, "remove `decay_first`, or learn from `l2(k, v)`")
        elif period.count != 1:
            self.err("NL112", f"`decay_first` needs a level that learns every token, not {period}: a token's "
                     "gradient is taken at the state its own decay made, α_t S_{t-1}", span,
                     "write `every 1 token`, or remove `decay_first` (the period's decay then applies after its step)")
        elif not has_decay:
            self.err("NL114", "`decay_first` needs `decay:`, the decay it applies before the step", s.rule.span)
        else:
            return True
        return False

    def per_token_ok(self, obj: str, scope: str, period: PeriodSpec, rule: str, has_decay: bool, span) -> bool:
        """`gd(..., per_token)`, `momentum(..., per_token)`: the rule steps at every token of a
        period, each gradient taken at the state the period started with (Titans' mini-batch
        rule). An optimizer's items are steps, and `task` has one gradient per period: NL112.
        Where the per-token steps add up to the one step of the period, it changes nothing: NL118."""
        if scope == "optimizer":
            self.err("NL112", "`per_token` is for model levels, which count tokens; an optimizer level steps "
                     "once per period", span, "remove `per_token`")
            return False
        if obj == "task":
            self.err("NL112", "`per_token` steps on each token's gradient; `task` has one gradient per period, "
                     "of the whole period's loss", span, "remove `per_token`")
            return False
        if period.count == 1:
            self.report.warning("NL118", "`per_token` changes nothing at `every 1 token`: a period of one token "
                                "has one step either way", span, "remove `per_token`")
        elif rule == "gd" and not has_decay:
            self.report.warning("NL118", "`per_token` changes nothing for `gd` without `decay:`: a period's "
                                "per-token steps, all taken at its start, add up to its one step", span,
                                "remove `per_token`, or give `gd` a `decay:`")
        return True

    def expect_size(self, e, want, env: Env, what: str) -> None:
        size = self.typeof(e, env, [], "")
        if size is not None and want is not None and size != want and not (want == LIKE_W and size == 1):
            self.err("NL130", f"{what} has size {_size(size)}, but the memory expects {_size(want)}", e.span)

    def expect_rate(self, e, mem: MemorySpec, env: Env, what: str) -> Size | None:
        """The size of a rate (None after an error): one number, or one per head."""
        size = self.typeof(e, env, [], "")
        ok = (1, mem.heads) + ((LIKE_W,) if mem.kind == "elementwise" else ())
        if size is not None and size not in ok:
            self.err("NL130", f"rate {what} has size {_size(size)}; a rate is one number"
                     + (f" or one per head ({mem.heads})" if mem.heads > 1 else ""), e.span)
            return None
        return size

    # ------------------------------------------------------------ causality
    def causality(self, level: LevelSpec, env: Env) -> None:
        """Within one token, what needs what: a cycle here has no period boundary to
        break it, so it would need its own result (reads of the future)."""
        g = nx.DiGraph()
        read = {l.memory: l.read for l in level.learns}
        if env.optimizer:
            read = {m: "within" for m in read}  # optimizer updates see this step's moments
        flows = {f.name for f in level.flows}

        def depend(e, target):
            for n, _ in _uses(e) if e is not None else ():
                src = _node(n, read, flows)
                if src is not None:
                    g.add_edge(src, target)

        for f in level.flows:
            depend(f.value, f"flow {f.name}")
        for l in level.learns:
            for e in (l.key, l.value, l.lr, l.decay, l.beta):
                depend(e, f"update {l.memory}")
        cycle = _cycle(g)
        if cycle is None:
            return
        path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
        learn = next((l for l in level.learns if f"update {l.memory}" in path), None)
        self.err("NL141", f"level `{level.name}` has a cycle within one token that no period breaks: {path}",
                 learn.span if learn else level.span,
                 "read the memory `before` (the default), so the cycle crosses a period boundary")

    # ------------------------------------------------------------ blocks
    def block(self, b: ast.Block, index: int, consts, levels, used: dict, broken=()) -> BlockSpec | None:
        repeat = 1 if b.repeat is None else self.count(b.repeat, Env(consts), "`repeat`")
        env = Env(consts, {"x": int(consts["dim"])}, levels=levels, broken=set(broken))
        applied, params = [], []
        for a in b.body:
            self.name_ok(a.name, a.span)
            if a.name in levels or a.name in consts:
                self.err("NL101", f"`{a.name}` already names a {'level' if a.name in levels else 'setting'}", a.span)
                continue
            for name, span in _calls_with_spans(a.value):
                if name in levels:
                    if name in used:
                        self.err("NL154", f"level `{name}` is applied twice (first at line {used[name].line}); "
                                 "a level holds one fast state", span, "declare a second level")
                    else:
                        used[name] = span
                        applied.append(name)
            size = self.typeof(a.value, env, params, f"block{index}.{a.name}")
            if size is not None:
                env.values[a.name] = size
            elif a.name not in env.values:
                env.broken.add(a.name)
        if env.values.get("x") != consts["dim"]:
            self.err("NL130", f"a block must leave `x` at size {int(consts['dim'])}", b.span)
        if repeat is None:
            return None
        return BlockSpec(repeat=repeat, body=tuple(AssignSpec(name=a.name, value=a.value, span=a.span) for a in b.body),
                         levels=tuple(applied), params=tuple(params), span=b.span)

    # ------------------------------------------------------------ optimizers
    def optimizer(self, o: ast.OptimizerDef, file: str, hp: dict, use_span=None, use_args=()) -> OptimizerSpec | None:
        errors_before = len(self.report.errors)
        self.name_ok(o.name, o.span)
        self.unique([(p.name, p.span) for p in o.params], "hyperparameter")
        consts: dict[str, float] = {}
        for p in o.params:
            if p.name in ("g", "W", "step"):
                self.err("NL101", f"`{p.name}` is predefined inside an optimizer", p.span)
            v = self.const(p.default, Env(consts), f"the default of `{p.name}`")
            if p.name in hp:  # the use site's value, which later defaults may depend on
                v = hp[p.name]
            if v is not None:
                consts.setdefault(p.name, v)
        for a in use_args:
            if a.key is not None and a.key not in consts:
                self.err("NL113", f"optimizer `{o.name}` has no option `{a.key}`", a.span,
                         did_you_mean(a.key, consts) or f"options: {', '.join(consts)}")
        env = Env(consts, {"g": LIKE_W, "W": LIKE_W, "step": 1}, funcs=OPTIMIZER_FUNCS, optimizer=True)
        levels_ast = [s for s in o.body if isinstance(s, ast.Level)]
        self.unique([(l.name, l.span) for l in levels_ast], "level")
        self.unique([(n, sp or m.span) for lv in levels_ast for m in lv.body if isinstance(m, ast.Memory)
                     for n, sp in _zip_spans(m)], "memory")  # one namespace for all its levels
        # memories are visible across the optimizer's levels: declare them all first
        levels = []
        top_flows = [s for s in o.body if isinstance(s, ast.Flow)]
        for lv in levels_ast:
            for m in (s for s in lv.body if isinstance(s, ast.Memory)):
                self.clashes([(n, sp or m.span) for n, sp in _zip_spans(m)], env)
                for name, span in _zip_spans(m):
                    spec = self.memory(m, name, lv.name, env, optimizer=True)
                    if spec and name not in env.memories:
                        env.memories[name] = spec
                    else:  # an error, or declared twice: reported
                        env.broken.add(name)
        flows = self.flows(top_flows, env, o.name)
        for lv in levels_ast:  # a level's flows are its own: the next level does not see them
            local = Env(consts, dict(env.values), {}, funcs=OPTIMIZER_FUNCS, optimizer=True, broken=set(env.broken))
            local.memories = env.memories
            spec = self.optimizer_level(lv, consts, local, env)
            if spec:
                levels.append(spec)
        self.level_cycles(levels, flows)
        updates = [s for s in o.body if isinstance(s, ast.Update)]
        if not updates:
            self.err("NL114", f"optimizer `{o.name}` has no `update W ...` statement", o.span)
        for u in updates:
            if u.target != "W":
                self.err("NL100", f"an optimizer updates `W`, the parameter, not `{u.target}`", u.span)
            self.expect_size(u.value, LIKE_W, env, "the update")
        if len(self.report.errors) > errors_before:
            return None
        return OptimizerSpec(name=o.name, hparams=consts, levels=tuple(levels), flows=tuple(flows),
                             updates=tuple(UpdateSpec(op=u.op, value=u.value, span=u.span) for u in updates),
                             file=file, span=o.span)

    def optimizer_level(self, lv: ast.Level, consts, env: Env, shared: Env) -> LevelSpec | None:
        period = self.period(lv.period, consts, optimizer=True)
        if period is None:
            return None
        for s in lv.body:
            if isinstance(s, ast.Out):
                self.err("NL115", "optimizer levels have no `out`; the `update` statements use their memories", s.span)
        mems = {m.name: m for m in shared.memories.values() if m.level == lv.name}
        flows = self.flows([s for s in lv.body if isinstance(s, ast.Flow)], env, lv.name)
        learns = self.learns(lv, "optimizer", period, env, mems)
        spec = LevelSpec(name=lv.name, period=period, scope="optimizer", memories=tuple(mems.values()),
                         flows=tuple(flows), learns=tuple(learns), span=lv.span)
        self.causality(spec, env)
        return spec

    def level_cycles(self, levels: list[LevelSpec], flows: list[FlowSpec]) -> None:
        """An optimizer's memories are visible across its levels, and read within the step:
        levels of one period that read each other's memories have no boundary to break
        the cycle (levels of different periods are ordered by their periods)."""
        owner = {m.name: lv.name for lv in levels for m in lv.memories}
        period = {lv.name: (lv.period.kind, lv.period.count) for lv in levels}
        g = nx.DiGraph()
        for lv in levels:
            defs = {f.name: f.value for f in (*flows, *lv.flows)}
            for l in lv.learns:
                seen, todo = set(), [e for e in (l.key, l.value, l.lr, l.decay, l.beta) if e is not None]
                while todo:
                    for name in ast.names(todo.pop()):
                        if name in defs and name not in seen:
                            seen.add(name)
                            todo.append(defs[name])
                        src = owner.get(name)
                        if src is not None and src != lv.name and period[src] == period[lv.name]:
                            g.add_edge(src, lv.name, span=l.span)
        cycle = _cycle(g)
        if cycle is None:
            return
        path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
        self.err("NL141", f"levels read each other's memories within one step, with no period to break the cycle: {path}",
                 g.edges[cycle[0]]["span"], "one of them must not read the other's memory, or must run at another period")

    # ------------------------------------------------------------ typing
    def typeof(self, e: ast.Expr, env: Env, params: list, owner: str, quiet: bool = False) -> Size | None:
        """The size of an expression's value per item, collecting the outer parameters
        its calls create into `params`. None after reporting an error."""
        T = _Typer(self, env, params, owner, quiet)
        return T(e)


class _Typer:
    def __init__(self, checker: Checker, env: Env, params: list, owner: str, quiet: bool):
        self.c, self.env, self.params, self.owner, self.quiet = checker, env, params, owner, quiet

    def err(self, *a, **k):
        if not self.quiet:
            self.c.err(*a, **k)

    def param(self, role: str, kind: str, shape, span):
        name = unique_name(f"{self.owner}.{kind}", {p.name for p in self.params})
        self.params.append(OuterParam(name=name, shape=tuple(int(s) for s in shape), role=role, span=span))

    def __call__(self, e) -> Size | None:
        env = self.env
        if not self.quiet and isinstance(e, (ast.BinOp, ast.Call)) and _constant(e, env):
            # e.g. a rate `1 / 0` or a factor `exp(1000)`: fold it now, as the backend will
            return None if self.c.const(e, env, "a constant expression") is None else 1
        if isinstance(e, ast.Number):
            return 1
        if isinstance(e, ast.Name):
            if e.id in env.values:
                return env.values[e.id]
            if e.id in env.consts or e.id in ("true", "false"):
                return 1
            if e.id in env.memories:
                m = env.memories[e.id]
                if m.kind == "elementwise":
                    return LIKE_W
                self.err("NL115", f"memory `{e.id}` is read by applying it, like `{e.id}(q)`", e.span)
                return None
            if e.id == "self" and env.this is not None:
                if env.this.kind == "elementwise":
                    return LIKE_W
                self.err("NL115", "`self` is applied to a key, like `self(v)`", e.span)
                return None
            if e.id in env.levels:
                self.err("NL115", f"level `{e.id}` is applied to its input, like `{e.id}(rmsnorm(x))`", e.span)
                return None
            if e.id in env.broken:
                return None
            candidates = list(env.values) + list(env.consts) + list(env.memories)
            self.err("NL100", f"unknown name `{e.id}`", e.span, did_you_mean(e.id, candidates))
            return None
        if isinstance(e, ast.Member):
            self.err("NL115", f"`{e.owner}.{e.name}` names another level's memory; it can only be an initial state "
                     "(`init: level.memory`)", e.span)
            return None
        if isinstance(e, ast.Arrow):
            self.err("NL115", "`a -> b` gives a memory's sizes, inside its kind", e.span)
            return None
        if isinstance(e, ast.Neg):
            return self(e.operand)
        if isinstance(e, ast.BinOp):
            a, b = self(e.left), self(e.right)
            if a is None or b is None:
                return None
            if e.op == "/" and not self.quiet and _constant(e.right, env):  # x / c is x times 1 / c
                c = self.c.const(e.right, env, "a constant expression")
                if c is None:
                    return None
                try:
                    fold.apply("/", 1, c)
                except fold.FoldError:
                    self.err("NL160", "this divides by zero" if c == 0 else "this divides by a constant too small",
                             e.span, "its divisor is the constant 0" if c == 0 else
                             f"1 / {_num(c)} is more than {MAX_NUMBER:.0e}: divide by a larger number")
                    return None
            if a == b or b == 1:
                return a
            if a == 1:
                return b
            self.err("NL130", f"sizes {_size(a)} and {_size(b)} do not match in `{e.op}`", e.span)
            return None
        if isinstance(e, ast.Call):
            return self.call(e)
        return None

    def call(self, e: ast.Call) -> Size | None:
        env, f = self.env, e.func
        pos = e.positional
        kw = {a.key: a for a in e.args if a.key is not None}
        if not self.quiet and len(kw) < sum(a.key is not None for a in e.args):
            self.c.once(e.args)
            return None
        if f == "self" and env.this is not None:
            return self.apply(env.this, e, "self")
        if f in env.memories:
            return self.apply(env.memories[f], e, f)
        if f in env.levels:
            lv = env.levels[f]
            if len(e.args) != 1 or kw:
                self.err("NL117", f"level `{f}` takes one input", e.span)
                return None
            size = self(pos[0])
            if size is not None and size != env.consts["dim"]:
                self.err("NL130", f"level `{f}` takes size {int(env.consts['dim'])}, got {_size(size)}", pos[0].span)
            return int(env.consts["dim"]) if lv.out is not None else None
        if f in env.broken:
            return None
        if f not in env.funcs:
            where = "an optimizer" if env.optimizer else "a model"
            known = list(env.funcs) + list(env.memories) + list(env.levels)
            hint = did_you_mean(f, known)
            if hint is None and f in MODEL_FUNCS + OPTIMIZER_FUNCS:
                hint = f"`{f}` is not available in {where}"
            self.err("NL116", f"unknown function `{f}`", e.span, hint)
            return None
        arity = {"proj": (1, 2), "conv": (2, 2), "learned": (1, 2), "max": (2, 2), "min": (2, 2),
                 "select": (3, 3), "newton_schulz": (1, 3), "rows": (1, 1), "cols": (1, 1),
                 "l2norm": (1, 1), "rmsnorm": (1, 1)}.get(f, (1, 1))
        allowed_kw = {"l2norm": ("heads",), "rmsnorm": ("eps", "heads")}.get(f, ())
        for k, a in kw.items():
            if k not in allowed_kw:
                self.err("NL113", f"`{f}` has no option `{k}`", a.span, did_you_mean(k, allowed_kw))
                return None
        if not arity[0] <= len(pos) <= arity[1]:
            want = str(arity[0]) if arity[0] == arity[1] else f"{arity[0]} to {arity[1]}"
            self.err("NL117", f"`{f}` takes {want} argument{'s' if arity[1] > 1 else ''}, got {len(pos)}", e.span)
            return None
        c = self.c
        if f in ("rows", "cols"):
            if not (isinstance(pos[0], ast.Name) and pos[0].id in ("W", "g")):
                self.err("NL115", f"`{f}` measures the parameter: `{f}(W)`", pos[0].span)
                return None
            return 1
        if f == "learned":  # one scalar, or a vector of n (e.g. one per head) starting at c
            if c.const(pos[0], env, "the initial value of `learned`") is None:
                return None
            n = c.count(pos[1], env, "the size of `learned`") if len(pos) == 2 else 1
            if n is None:
                return None
            self.param("scalar", "learned", (n,) if len(pos) == 2 else (), e.span)
            return n
        size = self(pos[0])
        if size is None:
            return None
        if f == "proj":
            out = size
            if len(pos) == 2:
                out = c.count(pos[1], env, "a projection's size")
                if out is None:
                    return None
            if size == LIKE_W:
                self.err("NL115", "`proj` maps token vectors; it has no meaning on a gradient", e.span)
                return None
            self.param("proj", "proj", (out, size), e.span)
            return out
        if f == "conv":
            width = c.count(pos[1], env, "a conv's width")
            if width is None:
                return None
            self.param("conv", "conv", (size, width), e.span)
            return size
        h = 1
        if f in ("rmsnorm", "l2norm") and "heads" in kw:
            h = c.count(kw["heads"].value, env, "`heads`")
            if h is None:
                return None
            if size != LIKE_W and size % h:
                self.err("NL131", f"{h} heads do not divide the size {size}", e.span)
                return None
        if f == "rmsnorm":  # per head: one scale of a head's size, shared by the heads
            self.param("norm", "rmsnorm", (size // h,), e.span)
            if "eps" in kw and c.const(kw["eps"].value, env, "`eps`") is None:
                return None
            return size
        if f == "newton_schulz":
            for extra, what in zip(pos[1:], ("number of steps", "epsilon")):
                if c.const(extra, env, f"the {what} of `newton_schulz`") is None:
                    return None
            return size
        if f in ("max", "min", "select"):
            rest = [self(p) for p in pos[1:]]
            if any(r is None for r in rest):
                return None
            if f == "select":
                if c.const(pos[0], env, "the condition of `select`") is None:
                    return None
                sizes = rest
            else:
                sizes = [size] + rest
            out = 1
            for s in sizes:
                if s != 1 and out != 1 and s != out:
                    self.err("NL130", f"sizes {_size(out)} and {_size(s)} do not match in `{f}`", e.span)
                    return None
                out = s if s != 1 else out
            return out
        return size  # elementwise functions keep the size

    def apply(self, m: MemorySpec, e: ast.Call, name: str) -> Size | None:
        pos = e.positional
        if len(e.args) != 1 or len(pos) != 1:
            self.err("NL117", f"memory `{name}` takes one input", e.span)
            return None
        size = self(pos[0])
        if size is None:
            return None
        if m.kind == "elementwise":
            if size not in (1, LIKE_W):
                self.err("NL130", f"elementwise memory `{name}` multiplies a value shaped like W, got size {_size(size)}", e.span)
            return LIKE_W
        if m.kind == "attention":
            if size != self.env.consts["dim"]:
                self.err("NL130", f"attention memory `{name}` takes queries of size {int(self.env.consts['dim'])}, got {_size(size)}",
                         pos[0].span)
                return None
            return int(self.env.consts["dim"])
        if m.d_in is not None and size != m.d_in and not (self.env.optimizer and size == LIKE_W):
            self.err("NL130", f"memory `{name}` takes size {m.d_in}, got {_size(size)}", pos[0].span)
            return None
        return LIKE_W if self.env.optimizer else m.d_out


# ------------------------------------------------------------------ utilities
def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def _size(s) -> str:
    return "shaped like W" if s == LIKE_W else str(s)


def _zip_spans(stmt):
    spans = stmt.name_spans or (stmt.span,) * len(stmt.names)
    return list(zip(stmt.names, spans))


def _foldable(call: ast.Call, env: Env) -> bool:
    """Whether a call is one of the functions a constant may use (not a memory or a
    level of that name), with no options."""
    f = call.func
    return (f in fold.FUNCS and f in env.funcs and f not in env.memories and f not in env.levels
            and all(a.key is None for a in call.args))


def _constant(e, env: Env) -> bool:
    """Whether an expression is made of numbers and constants, arithmetic and the
    functions of `fold` only."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name):
            if n.id in env.values or not (n.id in env.consts or n.id in ("true", "false")):
                return False
        elif isinstance(n, ast.Call):
            if not _foldable(n, env):
                return False
        elif not isinstance(n, (ast.Number, ast.BinOp, ast.Neg)):
            return False
    return True


def _per_period(e, env: Env) -> bool:
    """Whether a rate is the same for every token: numbers, constants, `learned(c)`,
    and arithmetic or elementwise functions of them."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name) and not (n.id in env.consts or n.id in ("true", "false")):
            return False
        if isinstance(n, ast.Call) and n.func != "learned" and n.func not in ELEMENTWISE:
            return False
    return True


def _calls_with_spans(e):
    calls = [n for n in ast.walk(e) if isinstance(n, ast.Call)]
    return sorted(((n.func, n.span) for n in calls), key=lambda t: (t[1].line, t[1].col) if t[1] else (0, 0))


def _uses(e):
    """(name, called) for every name an expression reads."""
    for n in ast.walk(e):
        if isinstance(n, ast.Name):
            yield n.id, False
        elif isinstance(n, ast.Call):
            yield n.func, True


def _node(name: str, read: dict, flows: set[str]):
    """The graph node a use of `name` depends on within the same token, or None."""
    if name in flows:
        return f"flow {name}"
    if name in read and read[name] == "within":
        return f"update {name}"
    return None


def _cycle(g: nx.DiGraph) -> list[tuple] | None:
    """The edges of a cycle in `g`, or None. One depth-first search, without
    recursion: linear in the size of the graph, where networkx's `find_cycle` grows
    with the square of a long chain (thousands of flows)."""
    done: set = set()
    for start in g:
        if start in done:
            continue
        path, on_path, todo = [start], {start}, [iter(g.succ[start])]
        while todo:
            for nxt in todo[-1]:
                if nxt in on_path:
                    loop = path[path.index(nxt):] + [nxt]
                    return list(zip(loop, loop[1:]))
                if nxt not in done:
                    path.append(nxt)
                    on_path.add(nxt)
                    todo.append(iter(g.succ[nxt]))
                    break
            else:
                done.add(path[-1])
                on_path.discard(path.pop())
                todo.pop()
    return None


def check_program(program: Program, report: Report, overrides: dict | None = None) -> ProgramSpec | None:
    spec = Checker(program, report, overrides).run()
    return None if report.errors else spec
