"""The language's vocabulary: one row per built-in word a spec may use.

Built-in functions, memory kinds, objectives, rules, activations, settings, outer
objectives, parameter groups, schedule hints, initial states and the reserved words.
The checker (compiler/check/) and the torch backends read these tables and keep no
copy of their own. Plain data, no torch, so that the compiler imports it without the
runtime: a function names the runtime op that computes it as a string (`op`), which
the backends resolve on `nldsl.runtime.ops` with getattr.

Adding a built-in function is a row in FUNCTIONS, its op in nldsl/runtime/ops.py (and,
for one computed with the state a call carries, a method of that state), a
line in docs/language.md's table of functions and a test (tests/test_vocab.py holds
the three together). Highlighting reads these tables too (nldsl/highlight.py): after a
change, `make editors` regenerates editors/vscode's TextMate grammar, which
tests/test_highlight.py holds equal to them.
"""
from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------ functions
# How a function's result size follows from its arguments: one rule of the checker's
# typer each (compiler/check/functions.py).
SIZES = {
    "same": "the size of its argument (elementwise)",
    "norm": "the size of its argument, normalised per item or per head (`heads:`)",
    "orthogonal": "the size of its argument; the other arguments are constants",
    "proj": "the size its second argument gives, else its first argument's",
    "conv": "the size of its first argument; the second is the window's width",
    "rotary": "the size of its argument, whose heads (`heads:`) are each of an even size",
    "concat": "the sum of its arguments' sizes: their features side by side",
    "split": "its first argument's size over the number of parts; the others are constants",
    "dropout": "the size of its first argument; the second is a constant probability in [0, 1)",
    "positional": "the size of its argument, to which it adds a learned vector per position (`context` of them)",
    "learned": "1, or the count its second argument gives; the first is the starting value",
    "broadcast": "the size its arguments broadcast to",
    "select": "the size its two branches broadcast to; the first argument is a constant",
    "measure": "1: a count of the parameter's shape",
    "range": "the count its argument gives: the constant vector 0, 1, ..., n - 1",
}


@dataclass(frozen=True)
class Function:
    """A built-in function of flows, `out`, blocks, rates and updates."""

    name: str
    op: str  # the function of nldsl.runtime.ops that computes it
    size: str  # how its result's size follows from its arguments: a key of SIZES
    arity: tuple[int, int] = (1, 1)  # positional arguments: at least, at most
    options: tuple[str, ...] = ()  # its keyword options, constants (OPTION_TYPES), passed to its op by name
    model: bool = True  # callable in models
    optimizer: bool = True  # callable in optimizer definitions
    # the roles of the outer parameters each call creates (OuterParam.role); its op takes
    # them after its first argument, the others only size them (`proj(x, heads)`)
    params: tuple[str, ...] = ()
    # computed with what a call carries from call to call (its tokens' positions, conv
    # tails, whether the model trains): its op is a method of that state (runtime/level.py, Carry)
    state: bool = False


def _elementwise(*names: str) -> list[Function]:
    return [Function(n, op=n, size="same") for n in names]


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    *_elementwise("silu", "gelu", "relu", "tanh", "sigmoid", "softplus", "exp", "sqrt", "abs", "sign"),
    Function("proj", op="proj", size="proj", arity=(1, 2), optimizer=False, params=("proj",)),
    Function("conv", op="conv", size="conv", arity=(2, 2), optimizer=False, params=("conv",), state=True),
    Function("l2norm", op="l2norm", size="norm", options=("heads",)),
    Function("rope", op="rope", size="rotary", options=("heads", "base"), optimizer=False, state=True),
    Function("concat", op="concat", size="concat", arity=(2, 16), optimizer=False),
    Function("split", op="split", size="split", arity=(3, 3), optimizer=False),
    Function("dropout", op="dropout", size="dropout", arity=(2, 2), optimizer=False, state=True),
    Function("positional", op="positional", size="positional", optimizer=False, params=("position",), state=True),
    Function("rmsnorm", op="rmsnorm", size="norm", options=("eps", "heads"), optimizer=False, params=("norm",)),
    Function("learned", op="learned", size="learned", arity=(1, 2), optimizer=False, params=("scalar",)),
    Function("range", op="arange", size="range", optimizer=False),
    Function("max", op="maximum", size="broadcast", arity=(2, 2)),
    Function("min", op="minimum", size="broadcast", arity=(2, 2)),
    Function("select", op="select", size="select", arity=(3, 3)),
    Function("newton_schulz", op="newton_schulz", size="orthogonal", arity=(1, 3), model=False),
    Function("rows", op="rows", size="measure", model=False),
    Function("cols", op="cols", size="measure", model=False),
]}
OPTION_TYPES = {"heads": int, "eps": float, "base": float}  # the type of each keyword option's constant
ELEMENTWISE = tuple(n for n, f in FUNCTIONS.items() if f.size == "same")
MODEL_FUNCS = tuple(n for n, f in FUNCTIONS.items() if f.model)
OPTIMIZER_FUNCS = tuple(n for n, f in FUNCTIONS.items() if f.optimizer)

# -------------------------------------------------------------- memory kinds
INITS = ("zeros", "ones", "normal", "identity")  # initial states θ₀ a memory may name
MEMORY_FLAGS = ("residual", "bias", "norm", "fixed", "detach", "alibi", "segment")  # options written bare, on when written
ACTIVATIONS = ("silu", "gelu", "relu", "tanh", "sigmoid", "identity")  # of `mlp` memories: nldsl.runtime.ops.ACT
DEFAULT_ACTIVATION = "silu"


@dataclass(frozen=True)
class MemoryKind:
    """A kind of memory, `memory M : KIND(size, options)`."""

    name: str
    options: tuple[str, ...]  # the options it takes; those in MEMORY_FLAGS are flags
    init: str  # its initial state when no `init:` is given
    inits: tuple[str, ...] = INITS  # the initial states `init:` may name (besides `level.memory`)
    sized: bool = True  # takes a size, `d` or `d_in -> d_out`
    model: bool = True  # allowed in model levels
    optimizer: bool = True  # allowed in optimizer levels
    rule: str | None = None  # the rule of its learn statements when none is written


MEMORY_KINDS: dict[str, MemoryKind] = {k.name: k for k in [
    MemoryKind("linear", ("heads", "residual", "norm", "init", "fixed", "detach"), init="zeros"),
    MemoryKind("mlp", ("heads", "hidden", "act", "residual", "bias", "norm", "init", "fixed", "detach"), init="normal"),
    MemoryKind("elementwise", ("init", "detach"), init="zeros", inits=("zeros", "ones"), sized=False, model=False),
    # attention: its θ₀, if any, is `persistent` learned items (Titans' persistent memory), drawn
    # normal: items that start equal get equal gradients and stay equal
    MemoryKind("attention", ("heads", "window", "alibi", "persistent", "items", "segment"), init="normal",
               sized=False, optimizer=False, rule="append"),
]}

# ---------------------------------------------------------- objectives, rules
@dataclass(frozen=True)
class Objective:
    """An inner objective, `learn M : OBJECTIVE(args)`."""

    name: str
    args: tuple[str, ...]  # its positional arguments (an elementwise memory's key may be left out)
    optimizer: bool = True  # allowed in optimizer levels
    flags: tuple[str, ...] = ()  # written bare after the arguments, like a rule's `per_token`


OBJECTIVES: dict[str, Objective] = {o.name: o for o in [
    Objective("l2", ("k", "v"), flags=("mean",)),  # `mean`: each item's gradient over the period's length
    Objective("dot", ("k", "v"), flags=("mean",)),
    Objective("task", (), optimizer=False),  # the outer objective's gradient
]}


@dataclass(frozen=True)
class Rule:
    """An update rule, `by RULE(options)`."""

    name: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # those of `optional` written bare, like a memory's `residual`


RULES: dict[str, Rule] = {r.name: r for r in [
    Rule("gd", ("lr",), ("decay", "decay_first", "per_token"), flags=("decay_first", "per_token")),
    Rule("momentum", ("lr", "beta"), ("decay", "per_token"), flags=("per_token",)),
    Rule("implicit", ("lr",)),
    Rule("append"),
]}
RULE_FLAGS = tuple(dict.fromkeys(f for r in RULES.values() for f in r.flags))
OBJECTIVE_FLAGS = tuple(dict.fromkeys(f for o in OBJECTIVES.values() for f in o.flags))
# the rates: the options of rules that are expressions, not flags
RATES = tuple(dict.fromkeys(o for r in RULES.values() for o in r.required + r.optional if o not in r.flags))

# ---------------------------------------------------------------- the rest
SETTINGS = {"vocab": None, "dim": None, "heads": 1, "depth": 1, "context": 512, "batch": 8}  # None: required
# settings a model may write for how `nldsl train` trains it (its flags of the same names override
# them), with the values each takes: (int, n) a whole number of at least n, (float, x) a number above x.
# A model that writes none has none: they have no defaults among its settings.
TRAINING_SETTINGS = {"warmup": (int, 0), "accumulate": (int, 1), "grad_clip": (float, 0.0)}
OUTER_OBJECTIVES = ("next_token",)
OUTER_OBJECTIVE_FLAGS = ("tied",)  # `objective next_token(tied)`: the output head is the embedding
SELECTORS = ("all", "matrices", "vectors", "rest")  # parameter groups of `optimizer NAME(...) for GROUP`
HINTS = {"tile": int, "kernel": ("auto", "torch", "triton"), "group": ("off", "on")}  # key -> int, or its values
INPUTS = {"x": "the stream", "g": "the gradient", "W": "the parameter", "step": "the step count"}  # predefined names
OPTIMIZER_INPUTS = ("g", "W", "step")
WORDS = {"self": "inside a learn statement, the memory being learned", "true": "the constant 1",
         "false": "the constant 0"}  # names the language gives a meaning of its own
