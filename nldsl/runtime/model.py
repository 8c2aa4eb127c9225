"""Compiled modules and the model's segment scheduler (design §1, §4, §8, §11).

`Level` and `Model` are ordinary nn.Modules holding the parameters; each also holds
a torch.fx GraphModule over those same parameters with the code the backend wrote
(`step` for a level: one chunk of one period; `segment` for the model: the blocks
over a run of tokens). The GraphModules are not registered as children, so every
parameter has one name in `state_dict`; they read the module's parameters as it holds
them when they run, and pickle and deepcopy take them as their graphs (runtime/graphs.py).

The model runs a sequence in segments cut where a level learning on the outer task
(`learn M : task`) reaches a period boundary: after each segment the scheduler takes
the gradient of that period's next-token loss with respect to the level's state and
applies the level's rule (chunk-wise test-time training, design §4). That gradient is
the level's own gradient flow: what other task levels did (their updates, a nested
memory's restart) is given to it (`Given`), while the outer gradient goes through
everything; so every autograd mode computes one model (docs/semantics.md §10).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import memories as M
from .desc import LevelDesc
from .errors import NonFiniteError, NonFiniteLogits
from .fused import FusedLevelState
from .graphs import HoldsGraphs, graph_module
from .level import Carry, LevelState, differentiable, pieces


class Given(torch.autograd.Function):
    """A state that one task level gives another (an update inside the other's period, a
    nested restart): the identity, except that no gradient passes back while a task level
    takes its inner gradient, to which the state is given (its own gradient flow); the
    outer gradient goes through. `taking` counts the inner gradients being taken, one count
    for the process: the autograd engine runs backward functions on threads of its own."""

    taking = 0

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return None if Given.taking else grad


def given(theta: dict | None) -> dict | None:
    """A memory's state (or momentum) as `Given`."""
    return None if theta is None else {k: Given.apply(t) for k, t in theta.items()}


@contextlib.contextmanager
def inner_gradient():
    """While a task level takes its inner gradient: `Given` passes nothing back."""
    Given.taking += 1
    try:
        yield
    finally:
        Given.taking -= 1


CONSTANT = "constant"  # the role of a constant vector of a spec (`[0.9, 0.99]`, `range(h)`): a buffer


def init(role: str, shape: tuple[int, ...], value=None) -> torch.Tensor:
    """How an outer parameter starts: projections U(±1/√d_in) like nn.Linear, convs
    U(±1/√w), norm scales 1, embedding, head and position table N(0, 0.02²) as in GPT-2, `learned(c)` c;
    and the value of a constant vector (its numbers), which is registered as a buffer."""
    if role == CONSTANT:
        return torch.tensor(value, dtype=torch.get_default_dtype()).reshape(shape)
    if role in ("proj", "conv"):
        bound = 1 / math.sqrt(shape[-1])
        return torch.empty(shape).uniform_(-bound, bound)
    if role == "norm":
        return torch.ones(shape)
    if role in ("embedding", "head", "position"):
        return torch.randn(shape) * 0.02
    if role == "scalar":
        return torch.full(shape, float(value))
    raise ValueError(f"no initialiser for a {role} parameter")


def register(module: nn.Module, path: str, value: torch.Tensor, buffer: bool = False) -> str:
    """Register a parameter (or buffer) at a dotted path of spec names, making the
    modules between. A spec name that nn.Module or fx.GraphModule already uses (`eval`,
    `to`, `graph`, `code`, ...) gets a trailing `_`. Returns the path it was registered at."""
    *parents, leaf = path.split(".")
    real = []
    for part in parents:
        part = _free(module, part, container=True)
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module, real = module._modules[part], real + [part]
    leaf = _free(module, leaf)
    if buffer:
        module.register_buffer(leaf, value)
    else:
        module.register_parameter(leaf, nn.Parameter(value))
    return ".".join(real + [leaf])


def _free(module: nn.Module, name: str, container: bool = False) -> str:
    while (hasattr(module, name) or name in _GRAPH_MODULE_NAMES) and not (container and name in module._modules):
        name += "_"
    return name


# The attributes of a GraphModule: `attach` builds one over the parameters, copied by
# their paths onto it, where a first part like `graph` would overwrite its own.
_GRAPH_MODULE_NAMES = frozenset(dir(fx.GraphModule)) | frozenset(vars(fx.GraphModule(nn.Module(), fx.Graph())))


class Level(HoldsGraphs):
    """One copy of a level: its outer parameters (flows' projections, convs, θ₀ of
    its memories) and its chunk step."""

    step = None  # the chunk step: set by `attach`, or a method in emitted source

    def __init__(self, desc: LevelDesc, copy: int, spec=None):
        super().__init__()
        self.desc, self.copy, self.key = desc, copy, f"{desc.name}.{copy}"
        self.spec = spec  # the checked LevelSpec, when compiled in this process
        self.links: dict[str, tuple[Level, str]] = {}  # nested CMS: memory -> (source level, memory)
        self.theta_paths: dict[str, dict[str, str]] = {}  # memory -> {W1: path of θ₀'s W1, ...}
        self.norm_paths: dict[str, tuple[str, str]] = {}  # memory -> paths of its layer norm's scale and bias
        for m in desc.memories:
            if m.norm:  # outer parameters, whatever θ₀ is: scale 1, bias 0, per head
                h, o = dict(m.shapes)["W" if m.kind == "linear" else "W1"][:2]
                self.norm_paths[m.name] = (register(self, f"{m.name}.norm_scale", torch.ones(h, o)),
                                           register(self, f"{m.name}.norm_bias", torch.zeros(h, o)))
            if m.source is not None:
                continue
            # an attention memory's θ₀ is its persistent items, when it has any
            self.theta_paths[m.name] = {k: register(self, f"{m.name}.{k}", t, buffer=m.constant)
                                        for k, t in M.initial_state(m.kind, dict(m.shapes), m.init).items()}

    def attach(self, graph: fx.Graph) -> None:
        self.__dict__["step"] = graph_module(self, graph, f"{self.desc.name}_step")

    def theta0(self, memory: str) -> dict[str, torch.Tensor]:
        if memory in self.links:
            src, name = self.links[memory]
            return src.theta0(name)
        out = {}
        for k, path in self.theta_paths[memory].items():
            owner, _, leaf = path.rpartition(".")
            out[k] = getattr(self.get_submodule(owner), leaf)  # a parameter, or a buffer when constant
        return out

    def norm(self, memory: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A memory's layer norm (scale, bias) [h, o], or None without `norm`."""
        if memory not in self.norm_paths:
            return None
        out = []
        for path in self.norm_paths[memory]:
            owner, _, leaf = path.rpartition(".")
            out.append(getattr(self.get_submodule(owner), leaf))
        return tuple(out)

    def print_readable(self, print_output: bool = True):
        return self.step.print_readable(print_output)


def _configure_compile(model: Model) -> None:
    """A model with task levels takes a gradient inside its forward: torch.compile
    traces that call correctly only with dynamo's `trace_autograd_ops` (without it
    the compiled inner update silently differs), and a graph so traced that comes
    back from the on-disk AOTAutograd cache fails with a bad shape (torch 2.13);
    so the one is switched on and the other off (tests/test_compile.py). Neither
    changes what other code computes."""
    if model.task_levels():
        import torch._dynamo  # here, not at import: it costs a second to load
        import torch._functorch.config

        torch._dynamo.config.trace_autograd_ops = True
        torch._functorch.config.enable_autograd_cache = False


class ModelState(Carry):
    """The fast state of a batch of sequences: every level copy's state, the position,
    the last prediction of the previous segment (for periods cut across calls), and
    the inputs the blocks' convs carry over."""

    def __init__(self, model: "Model", batch: int):
        super().__init__()
        self.batch, self.pos, self.options = batch, 0, model.options
        self.levels: dict[str, LevelState] = {}
        self.last_logits = None
        self.pending: list = []  # finiteness checks deferred under torch.compile, in the order made
        # whether the outer gradient is wanted, and whether the segment's levels run from here
        # on under a task level's exact inner gradient (regions.enter)
        self.outer_grad, self.under_task = False, False

    def verify(self) -> None:
        """Make the deferred checks: stop at the first non-finite state."""
        checks, self.pending[:] = list(self.pending), []
        if not checks:
            return
        flags = torch.stack([bad for *_, bad in checks])
        if flags.any():
            i = int(flags.any(1).nonzero()[0, 0])
            level, memory, token, bad = checks[i]
            raise NonFiniteError(level, memory, token, int(bad.nonzero()[0, 0]))

    def update_norms(self) -> dict[str, float]:
        """For each level copy whose memories learn inside the sequence (by key, `titans.0`),
        the norm of its fast state's update so far, S_j − θ₀, averaged over the sequences
        (LevelState.update_norm); one sync for all."""
        norms = {key: n.mean() for key, ls in self.levels.items() if (n := ls.update_norm()) is not None}
        return dict(zip(norms, torch.stack(list(norms.values())).tolist())) if norms else {}

    def detach(self) -> None:
        super().detach()
        for ls in self.levels.values():
            ls.detach()
        if self.last_logits is not None:
            self.last_logits = self.last_logits.detach()

    def level(self, level: Level, batch: int) -> LevelState:
        if batch != self.batch:
            raise ValueError(f"this state holds {self.batch} sequences, the input has {batch}")
        ls = self.levels.get(level.key)
        if ls is None:
            kind = FusedLevelState if self.options.get("fused") else LevelState  # the fused path, or the reference
            ls = self.levels[level.key] = kind(level, batch, self.options, self.pending)
        return ls


class Model(HoldsGraphs):
    """A compiled model. `model(tokens, state=None) -> (logits, state)`: tokens [B, T];
    `state=None` starts every sequence from the initial states; passing the returned
    state back continues the sequences (two calls on halves equal one call)."""

    segment = None  # the blocks over a run of tokens: set by `attach`, or a method in emitted source

    def __init__(self, name: str, settings: dict, spec=None, inner_clip: float | None = None, fused: bool = True,
                 kernels: str = "auto", optimizers: tuple = ()):
        super().__init__()
        self.name, self.spec = name, spec  # spec: the checked ModelSpec, when compiled in this process
        self.draw = None  # view -> its level diagram, given by the compiler with the spec
        self.settings = dict(settings)
        # `training` follows train()/eval(): the states read it from here (`dropout`)
        self.options = {"inner_clip": inner_clip, "fused": fused, "kernels": kernels, "training": True}
        # its `optimizer` lines (optim.OptimizerUse), each with its compiled step: the backend's, or
        # written out in emitted source
        self.optimizers = tuple(optimizers)
        self.slots: dict[str, str] = {}  # level name -> attribute holding its copies

    def train(self, mode: bool = True):
        self.options["training"] = mode
        return super().train(mode)

    def add_level(self, name: str, copies: list) -> None:
        slot = _free(self, name)
        self.add_module(slot, nn.ModuleList(copies))
        self.slots[name] = slot

    def attach(self, graph: fx.Graph) -> None:
        self.__dict__["segment"] = graph_module(self, graph, f"{self.name}_segment")

    def print_readable(self, print_output: bool = True):
        return self.segment.print_readable(print_output)

    def diagram(self, view: str = "levels"):
        """The level diagram of the spec it was compiled from, as a notebook shows it;
        None for a model written out as source, which has no spec. The compiler hands
        the drawing in (`draw`), so that the runtime never imports it."""
        return self.draw(view) if self.draw is not None else None

    def _repr_svg_(self):
        d = self.diagram()
        return d._repr_svg_() if d is not None else None

    def _repr_html_(self):
        d = self.diagram()
        return d._repr_html_() if d is not None else None

    # -- structure
    def levels(self):
        """Every level copy, in block order."""
        for slot in self.slots.values():
            yield from getattr(self, slot)

    def finish(self) -> None:
        """Called once every level is added. Links nested CMS memories to their sources."""
        self._link_sources()
        _configure_compile(self)

    def __setstate__(self, state):
        super().__setstate__(state)
        _configure_compile(self)  # a model loaded in a fresh process

    def _link_sources(self) -> None:
        """Nested CMS: a memory with `init: other.mem` starts from, and every period of
        `other` restarts from, the same copy of that memory."""
        for lv in self.levels():
            for m in lv.desc.memories:
                if m.source is not None:
                    src_level, src_mem = m.source.split(".")
                    lv.links[m.name] = (getattr(self, self.slots[src_level])[lv.copy], src_mem)

    def task_levels(self):
        return [lv for lv in self.levels() if any(m.objective == "task" for m in lv.desc.memories)
                and lv.desc.scope == "sequence"]

    def cut(self) -> int | None:
        """Segment boundaries: every multiple of this many tokens (None: one segment)."""
        periods = [lv.desc.period for lv in self.task_levels()]
        periods += [src.desc.period for lv in self.levels() for src, _ in lv.links.values()
                    if src.desc.scope == "sequence"]
        return math.gcd(*periods) if periods else None

    def holds_given(self) -> bool:
        """Whether a task level's update (at another task level's period) or a nested
        restart can fall inside a task level's period: what `Given` is for. (Dynamo
        cannot trace the count `inner_gradient` keeps, so only such models keep it.)"""
        tasks = self.task_levels()
        restarts = any(src.desc.scope == "sequence" for lv in self.levels() for src, _ in lv.links.values())
        return bool(tasks) and (len({lv.desc.period for lv in tasks}) > 1 or restarts)

    def task_span(self) -> int:
        """Tokens after which every task level is at a boundary together: a period's
        inner gradient reaches back through everything since the period began."""
        return math.lcm(*(lv.desc.period for lv in self.task_levels()))

    # -- running
    def forward(self, tokens: torch.Tensor, state: ModelState | None = None):
        tasks = self.task_levels()
        gated = self.holds_given()
        if gated and torch.compiler.is_compiling():
            # what `Given` passes back depends on which gradient is being taken, which a
            # traced graph cannot follow: such a model runs eagerly under torch.compile
            return torch.compiler.disable(self.forward)(tokens, state)
        if tasks and torch.is_inference_mode_enabled():
            # a task level's inner gradient needs autograd, which inference tensors cannot
            # enter: run as under no_grad, on normal tensors (the model is the same)
            with torch.inference_mode(False), torch.no_grad():
                return self.forward(tokens.clone() if tokens.is_inference() else tokens, state)
        if state is None:
            state = ModelState(self, tokens.shape[0])
        span = self.task_span() if tasks else 1
        outer_grad = state.outer_grad = torch.is_grad_enabled()
        outs = []
        for i, n, _ in pieces(state.pos, tokens.shape[1], self.cut()):
            seg = tokens[:, i:i + n]
            state.under_task = False
            with torch.enable_grad() if tasks else contextlib.nullcontext():
                logits = self.segment(seg, state)
                if tasks:
                    self._task_step(tasks, state, logits, seg, outer_grad, span, gated)
            state.pos += n
            self._restart_nested(state)
            if not outer_grad:  # inference: keep no graph, except what a task period still needs
                if state.pos % span == 0:
                    state.detach()
                logits = logits.detach()
            outs.append(logits)
        state.verify()
        return (torch.cat(outs, 1) if len(outs) > 1 else outs[0]), state

    def _task_step(self, tasks, state: ModelState, logits, seg, outer_grad: bool, span: int, gated: bool) -> None:
        """Chunk-wise test-time training: each task level's memories take the gradient
        of their period's next-token loss at S_j, summed over the pairs (t, t+1) that
        lie inside one period, and update at the period's end. Memories whose levels
        share a period share that loss and one backward pass. The gradient is the
        level's own: other task levels' updates are given to it. It is differentiable
        (create_graph) when the outer gradient is wanted, which goes through everything."""
        start, n = state.pos, seg.shape[1]
        prev = state.last_logits
        state.last_logits = logits[:, -1:]
        # predictions at positions p = first .. start+n-2, each for the token at p + 1
        preds = logits[:, :-1] if prev is None else torch.cat([prev, logits[:, :-1]], 1)
        targets = seg[:, 1:] if prev is None else seg
        first = start if prev is None else start - 1
        by_period: dict[int, list] = {}  # P -> [(level state, fast state)]
        for lv in tasks:
            ls = state.level(lv, seg.shape[0])
            by_period.setdefault(ls.period, []).extend(
                (ls, f) for f in ls.fast.values() if f.objective == "task")

        for P, memories in by_period.items():
            # the pairs with both tokens inside one period: positions known before the
            # call, so the loss has static shapes (no data-dependent indexing)
            keep = [i for i in range(targets.shape[1]) if (first + i + 1) % P]
            if keep:
                at = torch.tensor(keep, device=preds.device)
                loss = F.cross_entropy(preds[:, at].reshape(-1, preds.shape[-1]), targets[:, at].reshape(-1),
                                       reduction="sum")
                for create in (True, False):  # exact (through the inner updates), or first order
                    group = [f for _, f in memories if (outer_grad and not f.mem.detach) == create]
                    if not group:
                        continue
                    inputs = [t for f in group for t in f.theta.values()]
                    with inner_gradient() if gated else contextlib.nullcontext():
                        grads = iter(torch.autograd.grad(loss, inputs, create_graph=create, retain_graph=True,
                                                         allow_unused=True))
                    for f in group:
                        lr = f.task_rates[0]
                        terms = {}
                        for k, t in f.theta.items():
                            g = next(grads)
                            terms[k] = (torch.zeros_like(t) if g is None else g) * lr
                        f.acc = terms if f.acc is None else {k: f.acc[k] + v for k, v in terms.items()}
            for ls, f in memories:
                _, decay, beta = f.task_rates
                for attr, rate in (("decay", decay), ("beta", beta)):
                    if rate is not None:
                        factor = torch.as_tensor(rate) ** n
                        setattr(f, attr, factor if getattr(f, attr) is None else getattr(f, attr) * factor)
                if (start + n) % P == 0:
                    f.update()
                    ls.check(f)
                    if (start + n) % span:  # a slower task level's period goes on: to it, this is given
                        f.theta, f.z = given(f.theta), given(f.z)
                    f.theta = differentiable(f.theta)

    def _restart_nested(self, state: ModelState) -> None:
        """Nested CMS: at each boundary of its source, a memory restarts from a copy of the
        source's state, given: from then on each is its own memory, whose inner gradient
        flows through its own reads only (the outer gradient goes through the copy)."""
        for lv in self.levels():
            for mem, (src, src_mem) in lv.links.items():
                if src.desc.scope != "sequence" or state.pos % src.desc.period:
                    continue
                if lv.key in state.levels and src.key in state.levels:
                    f = state.levels[lv.key].fast[mem]
                    f.theta = given(state.levels[src.key].theta(src_mem))
                    if f.objective == "task":
                        f.theta = differentiable(f.theta)
                    f.clear()
                    if f.z is not None:
                        f.z = {k: torch.zeros_like(v) for k, v in f.z.items()}

    # -- generating
    def tokens(self, prompt: torch.Tensor, **options):
        """The tokens that follow each prompt, a column at a time (`continuation`)."""
        return continuation(self, prompt, **options)

    def generate(self, prompt: torch.Tensor, n: int, **options) -> torch.Tensor:
        """`n` tokens after each prompt of `prompt` [B, T]: [B, n] (options: `continuation`)."""
        return generate(self, prompt, n, **options)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch of fresh sequences."""
        logits, _ = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    # -- the outer optimizer
    def configure_optimizer(self):
        """The optimizer that training uses (design §1, §11): one optimizer per
        `optimizer ... for GROUP` line of the spec, the parameters of cross-sequence
        levels stepped every ⌈P / (batch·context)⌉ steps on their averaged gradients,
        from the model's `optimizers`. See `nldsl.runtime.optim.outer_optimizer`."""
        from .optim import outer_optimizer
        return outer_optimizer(self)


@torch.no_grad()
def continuation(model, prompt: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, vocab: int | None = None, chunk: int | None = None,
                 state=None):
    """The tokens that follow each prompt of `prompt` [B, T], a column [B] at a time, for
    as long as the caller takes them, from any model called `model(tokens, state) ->
    (logits, state)`. The prompt is fed `chunk` tokens a call (the model's `context` by
    default), then each picked token alone, the state carried: the context is never fed
    again, so a token costs what the state costs (the same at every length for recurrent
    levels; an attention memory's keys grow). `vocab` limits the picks to the first ids
    (a tokenizer's); temperature 0 takes the likeliest, else a sample from the top `top_k`.
    With `state`, the sequences it holds go on: the prompt is what follows them."""
    if prompt.shape[1] == 0:
        raise ValueError("give each sequence at least one token of prompt to continue")
    chunk = chunk or int(getattr(model, "settings", {}).get("context") or prompt.shape[1])
    for start in range(0, prompt.shape[1], chunk):
        logits, state = model(prompt[:, start:start + chunk], state)
    seen = state.pos if hasattr(state, "pos") else prompt.shape[1]
    while True:
        token = pick(logits[:, -1], temperature, top_k, generator, vocab, seen)
        yield token
        logits, state = model(token[:, None].to(prompt.device), state)
        seen += 1


def generate(model, prompt: torch.Tensor, n: int, **options) -> torch.Tensor:
    """`n` tokens after each prompt of `prompt` [B, T], [B, n]: `continuation`'s first n."""
    if n <= 0:
        return prompt.new_zeros(prompt.shape[0], 0)
    made = []
    for token in continuation(model, prompt, **options):
        made.append(token)
        if len(made) == n:
            return torch.stack(made, 1)


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None,
         vocab: int | None, seen: int) -> torch.Tensor:
    """The next token of each row of `logits` [B, V] (on the CPU, as float32, so a seed
    picks the same tokens on any device): the likeliest at temperature 0, else a sample
    at that temperature from the `top_k` likeliest; only ids below `vocab`."""
    logits = logits[:, :vocab].float().cpu()
    if not torch.isfinite(logits.amax(-1)).all():  # a NaN anywhere, an Inf, or no possible token
        raise NonFiniteLogits(seen)
    if temperature == 0:
        return logits.argmax(-1)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    scaled = (logits - logits.amax(-1, keepdim=True)) / temperature  # at most 0: a tiny temperature cannot overflow
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator)[:, 0]
