"""Optimizers from specs (design §10, docs/optimizers.md).

`SpecOptimizer` is a `torch.optim.Optimizer` that runs an optimizer spec's compiled
per-parameter step on every parameter that has a gradient. The step and the
optimizer's description (`desc.OptimizerDesc`) come from the backend
(`compiler/lower.py`, `compiler/backends/fx.py`) at compile time: the step is a torch.fx GraphModule,
or the same code as a function in emitted source, so this module never needs the
compiler. The step calls back into `ParamStep` (its `st` input) to read memories and
to record the items they learn from:

- `elementwise` memories hold θ shaped like W. Keyless `dot(v)`: ∇ = −v; keyless
  `l2(v)`: ∇ = θ − v; keyed `l2(k, v)`: ∇ = (θ⊙k − v)⊙k; keyed `dot(k, v)`:
  ∇ = −v⊙k. Read by name: θ; applied, `m(k)`: θ⊙k.
- `linear` and `mlp` memories (size 1) act on each coordinate: the gradient's
  coordinates are the items of one small memory per parameter (one batch, numel
  items, one head, size 1), with the inner objective summed over the coordinates.
  Their gradients and reads are `runtime.memories`'s.
- A level `every N steps` sums η∇ (all taken at the state from the start of its
  period) and the product of its decays over the period's N steps, and applies the
  update rule (`runtime.memories.rules.apply_rule`) at steps N, 2N, ...; in between, reads
  see the state of the last boundary. With N = 1 every step is a boundary and reads
  see the state after this step's update.

Every piece of state (the step count, θ, momentum buffers, a period's running sums)
is a tensor in `self.state[p]`, and every hyperparameter a value in the parameter's
group (`param_groups`), which the step reads at each step: so `state_dict()` /
`load_state_dict()` round-trip, and `torch.optim.lr_scheduler` drives `lr`.

`MultiRateOptimizer` is the outer optimizer of a compiled model (design §1, §11):
one `SpecOptimizer` per `optimizer ... for GROUP` line (`OptimizerUse`), and the
parameters of cross-sequence levels stepped every k = ⌈P / (B·T)⌉ calls with their
gradients averaged over those calls. It is a `torch.optim.Optimizer` too, whose
groups are its parts' own, so a scheduler of it schedules every part.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from . import memories as M
from .desc import MemoryDesc, OptimizerDesc
from .graphs import frozen, thawed
from .memories.rules import apply_rule
from .memories.elementwise import naive as elementwise
from .memories.layout import as_rate
from .memories.linear.naive import implicit_stats


@dataclass(frozen=True)
class OptimizerUse:
    """One `optimizer ... for GROUP` line of a model, as the backend hands it over: the
    parameters it takes, the optimizer, and its compiled per-parameter step."""

    selector: str  # all | matrices | vectors | rest
    optimizer: OptimizerDesc
    step: Callable  # step(g, W, step, st, hp) -> W': a GraphModule, or a function in emitted source

    def __getstate__(self):
        return {**vars(self), "step": frozen(self.step)}

    def __setstate__(self, state):
        vars(self).update(state, step=thawed(state["step"]))


@dataclass(frozen=True)
class _Memory:
    """One memory of an optimizer (its learn statement's objective and rule included),
    and its period in steps."""

    desc: MemoryDesc
    period: int

    def parts(self) -> tuple[str, ...]:
        """The tensors of θ: `W` for an elementwise memory (shaped like the parameter)."""
        return ("W",) if self.desc.kind == "elementwise" else tuple(name for name, _ in self.desc.shapes)

    def sum_parts(self) -> tuple[str, ...]:
        """The running sums of a period: the η-weighted gradient of each part of θ, or the
        two sums the exact proximal step needs."""
        return ("VK", "KK") if self.desc.rule == "implicit" else self.parts()

    def key(self, part: str, what: str = "") -> str:
        """The key in a parameter's state: `m` for an elementwise memory's θ, `m.W1` for
        an mlp's, with `.z` (momentum), `.sum` (a period's running sum) appended."""
        base = self.desc.name if self.desc.kind == "elementwise" else f"{self.desc.name}.{part}"
        return f"{base}.{what}" if what else base


def memories_of(optimizer: OptimizerDesc) -> dict[str, _Memory]:
    return {m.name: _Memory(m, lv.period) for lv in optimizer.levels for m in lv.memories}


def _times(a, b):
    """The product of two rates, either of which may be absent (None)."""
    if a is None:
        return b
    return a if b is None else a * b


class ParamStep:
    """The `st` of the compiled step: one parameter's state during one step."""

    def __init__(self, memories: dict[str, _Memory], state: dict):
        self.memories, self.state = memories, state
        self.t = int(state["step"])

    def theta(self, mem: _Memory) -> dict:
        return {p: self.state[mem.key(p)] for p in mem.parts()}

    # -- called by the graph
    def read(self, name: str, e=None, start: bool = False):
        """`m` (e None) or `m(e)`. The graph orders reads after this step's learn
        statement (or before it, for `self(...)`), so the state here is the right one."""
        mem = self.memories[name]
        theta = self.theta(mem)
        if mem.desc.kind == "elementwise":
            return elementwise.read(theta, e)
        if e is None:
            raise TypeError(f"memory `{name}` is a {mem.desc.kind} memory: apply it, `{name}(g)`, to read it")
        s = mem.desc
        y = M.read(s.kind, M.batched(theta, 1), _items(e), s.heads, s.act, s.residual)
        return y.reshape(e.shape)

    def learn(self, name: str, key, value, lr=1.0, decay=None, beta=None) -> None:
        """Record this step's item (or items, one per coordinate) and, at a boundary of
        the memory's period, apply its update rule."""
        mem = self.memories[name]
        S = self.theta(mem)  # the state from the start of the period
        if mem.desc.kind == "elementwise":
            sums = {"W": lr * elementwise.grad(mem.desc.objective, S["W"], key, value)}
        else:
            sums = self._coordinatewise(mem, S, key, value, lr)
            decay, beta = _one(decay, name, "decay"), _one(beta, name, "beta")
        # add the items of this period's earlier steps
        st, first = self.state, mem.key(mem.sum_parts()[0], "sum")
        if first in st:
            sums = {p: st.pop(mem.key(p, "sum")) + v for p, v in sums.items()}
            decay = _times(st.pop(f"{name}.decay_product", None), decay)
            beta = _times(st.pop(f"{name}.beta_product", None), beta)
        if self.t % mem.period:  # inside the period: keep the sums for its boundary
            like = S[mem.parts()[0]]
            st.update({mem.key(p, "sum"): v for p, v in sums.items()})
            for what, r in (("decay", decay), ("beta", beta)):
                if r is not None:
                    st[f"{name}.{what}_product"] = torch.as_tensor(r, dtype=like.dtype, device=like.device)
            return
        Z = {p: st[mem.key(p, "z")] for p in mem.parts()} if mem.desc.rule == "momentum" else None
        S, Z = apply_rule(mem.desc.rule, S, Z, sums, decay, beta)
        st.update({mem.key(p): v for p, v in S.items()})
        if Z is not None:
            st.update({mem.key(p, "z"): v for p, v in Z.items()})

    def _coordinatewise(self, mem: _Memory, S: dict, key, value, lr) -> dict:
        """Σ_i η_i ∇ℓ(S; k_i, v_i) over the coordinates i of the stream, each one item of
        the parameter's one memory: a batch of 1, numel items, size 1."""
        s = mem.desc
        if key is None:
            raise TypeError(f"memory `{s.name}` ({s.kind}) learns from keys: write `{s.objective}(k, v)`")
        k, v = _items(key), _items(value)
        rate = torch.as_tensor(lr, dtype=k.dtype, device=k.device)
        rate = as_rate(rate.reshape(1, -1, 1) if rate.numel() > 1 else rate, 1, k.shape[1], s.heads, k)
        if s.rule == "implicit":
            terms = implicit_stats(k, v, rate, s.heads)
        else:
            terms = M.grads(s.kind, s.objective, M.batched(S, 1), k, v, rate, s.heads, s.act, s.residual)
        return {p: t[0] for p, t in terms.items()}


def _items(x: torch.Tensor) -> torch.Tensor:
    """A stream shaped like W as the items of a size-1 memory: [1, numel, 1]."""
    return x.reshape(1, -1, 1)


def _one(rate, memory: str, what: str):
    """A coordinate-wise memory takes one step per optimizer step, so its decay is one
    number per step, not one per coordinate."""
    if rate is None or not torch.is_tensor(rate) or rate.numel() == 1:
        return rate
    raise ValueError(f"memory `{memory}` acts on every coordinate with one state: its {what} must be one number "
                     f"per step, not a tensor of shape {tuple(rate.shape)}")


def _closure_loss(closure):
    """What `step(closure)` returns: the loss the closure computes, with gradients on
    (`step` runs under no_grad), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SpecOptimizer(torch.optim.Optimizer):
    """A `torch.optim.Optimizer` running an optimizer spec: its description `spec`
    (a `desc.OptimizerDesc`) and its compiled per-parameter step `graph`, both from the
    backend. Every group holds every hyperparameter (the spec's defaults, replaced where
    the use site, `compile_optimizer` or the group said), and the step reads them from
    the group at each step, as torch's optimizers do: a scheduler that sets
    `group["lr"]` changes the next step. Those in `spec.fixed` shape the step (a period,
    a size, select's condition) and are constants of it: a group cannot change them.

    `seed` seeds the initial states of `mlp` memories (`init: normal`), drawn for the
    i-th parameter from a generator seeded with seed + i, so the optimizer is
    reproducible and leaves torch's global random state alone."""

    def __init__(self, params, spec: OptimizerDesc, graph: Callable, *, seed: int = 0):
        self.spec, self.graph, self.seed = spec, graph, seed
        self.memories = memories_of(spec)
        self._count = 0  # parameters given initial states so far
        super().__init__(params, dict(spec.hparams))

    def __getstate__(self) -> dict:
        # torch.optim's keeps only defaults, state and param_groups: the spec and its step are ours too
        return {**super().__getstate__(), "spec": self.spec, "graph": frozen(self.graph), "seed": self.seed,
                "_count": self._count}

    def __setstate__(self, state: dict) -> None:
        if "graph" in state:  # a whole optimizer; `load_state_dict` sets its state and groups alone
            state = {**state, "graph": thawed(state["graph"])}
        super().__setstate__(state)
        self.memories = memories_of(self.spec)

    def add_param_group(self, param_group: dict) -> None:
        self._check_group(param_group)
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._init_state(p)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for k, v in self.spec.hparams.items():  # saved when the step held them as constants: none saved
                group.setdefault(k, v)
            self._check_group(group)

    def _check_group(self, group: dict) -> None:
        """Hyperparameters that are numbers, and the fixed ones as the step was compiled."""
        spec = self.spec
        for k, compiled in spec.hparams.items():
            v = group.get(k, compiled)
            if not isinstance(v, (int, float)) and not (torch.is_tensor(v) and v.numel() == 1):
                raise ValueError(f"hyperparameter `{k}` of optimizer `{spec.name}` must be a number, not {v!r}")
            if k in spec.fixed and v != compiled:
                raise ValueError(f"hyperparameter `{k}` of optimizer `{spec.name}` shapes its compiled step (a period, "
                                 f"a size or a constant argument): a parameter group cannot change it from "
                                 f"{compiled:g} to {v!r}; compile the optimizer with {k}={v!r} instead")

    def _init_state(self, p: torch.Tensor) -> None:
        """Step 0 and every memory's θ₀ (and zero momentum buffers), like torch.optim's
        state but made at once, so θ₀ can be inspected before the first step."""
        g = torch.Generator().manual_seed(self.seed + self._count)
        self._count += 1
        state = self.state[p]
        state["step"] = torch.tensor(0.0)
        for mem in self.memories.values():
            shapes = {"W": tuple(p.shape)} if mem.desc.kind == "elementwise" else dict(mem.desc.shapes)
            theta = M.initial_state(mem.desc.kind, shapes, mem.desc.init, generator=g)
            for part, t in theta.items():
                state[mem.key(part)] = t.to(device=p.device, dtype=p.dtype)
                if mem.desc.rule == "momentum":
                    state[mem.key(part, "z")] = torch.zeros_like(state[mem.key(part)])

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            self._check_group(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"optimizer `{self.spec.name}` does not take sparse gradients")
                state = self.state[p]
                if "step" not in state:  # e.g. a state_dict that did not cover this parameter
                    self._init_state(p)
                state["step"] += 1  # before the step, as torch.optim.Adam counts
                new = self.graph(p.grad, p, int(state["step"]), ParamStep(self.memories, state), group)
                p.copy_(new)
        return loss

    def print_readable(self, print_output: bool = True) -> str:
        """The compiled per-parameter step, as Python (in emitted source, the function's own)."""
        if isinstance(self.graph, fx.GraphModule):
            return self.graph.print_readable(print_output)
        code = inspect.getsource(self.graph)
        if print_output:
            print(code)
        return code


# ------------------------------------------------------------- the outer level
class MultiRateOptimizer(torch.optim.Optimizer):
    """The outer optimizer of a model: several `SpecOptimizer`s (one per parameter
    group and rate) behind one `step()`. A part with `every` k > 1 (the parameters of
    a cross-sequence level, design §1) sums its parameters' gradients at every call
    and steps only at every k-th call, with each gradient set to the mean of its k
    calls (a call where a parameter had no gradient counts as zero). Each part has its
    own step count, so bias corrections count that part's own steps.

    Its `param_groups` are the parts' groups themselves (the same dicts), so a
    `torch.optim.lr_scheduler` of this optimizer sets every part's `lr` at every call;
    a slow part steps with the lr of the call that completes its k."""

    def __init__(self, parts: list[tuple[SpecOptimizer, int]]):
        self.parts = parts
        self.calls = 0
        self.sums: list[dict[int, torch.Tensor]] = [{} for _ in parts]  # part -> parameter index -> Σ grad
        super().__init__(self._groups(), {})

    def _groups(self) -> list[dict]:
        return [g for opt, _ in self.parts for g in opt.param_groups]

    def __getstate__(self) -> dict:
        # torch.optim's keeps only defaults, state and param_groups: the parts are ours too
        return {**super().__getstate__(), "parts": self.parts, "calls": self.calls, "sums": self.sums}

    @staticmethod
    def _params(opt) -> list[torch.Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        self.calls += 1
        for (opt, every), sums in zip(self.parts, self.sums):
            if every == 1:
                opt.step()
                continue
            params = self._params(opt)
            for i, p in enumerate(params):
                if p.grad is not None:
                    sums[i] = p.grad.detach().clone() if i not in sums else sums[i] + p.grad
            if self.calls % every == 0:
                for i, p in enumerate(params):
                    total = sums.pop(i, None)
                    p.grad = None if total is None else total / every
                opt.step()
        return loss

    def state_dict(self) -> dict:
        return {"calls": self.calls,
                "parts": [opt.state_dict() for opt, _ in self.parts],
                "every": [every for _, every in self.parts],
                "sums": [[sums.get(i) for i in range(len(self._params(opt)))]
                         for (opt, _), sums in zip(self.parts, self.sums)]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["parts"]) != len(self.parts) or list(state["every"]) != [e for _, e in self.parts]:
            raise ValueError("this optimizer state was saved for other parameter groups or rates")
        self.calls = int(state["calls"])
        for (opt, _), part in zip(self.parts, state["parts"]):
            opt.load_state_dict(part)
        self.param_groups = self._groups()  # loading gave the parts new group dicts
        self.sums = []
        for (opt, _), saved in zip(self.parts, state["sums"]):
            params = self._params(opt)
            self.sums.append({i: t.to(device=params[i].device, dtype=params[i].dtype)
                              for i, t in enumerate(saved) if t is not None})


def _selects(selector: str, p: torch.Tensor) -> bool:
    if selector == "matrices":
        return p.dim() >= 2
    if selector == "vectors":
        return p.dim() < 2
    return True  # all, rest


def outer_optimizer(model, seed: int = 0) -> MultiRateOptimizer:
    """The optimizer of a compiled model's outer level: one part per `optimizer` line of
    the spec (its parameter group: `matrices` ≥ 2 dimensions, `vectors` the others,
    `rest` what no other line claims, `all`), split by rate: the parameters of a
    cross-sequence level of period P tokens step every ⌈P / (B·T)⌉ calls. The lines and
    their compiled steps are the model's `optimizers`, which the backend gave it (or
    emitted source wrote out)."""
    if not model.optimizers:
        raise ValueError(f"model `{model.name}` has no `optimizer` lines with compiled steps: compile its spec "
                         "with nldsl.compile, or build an optimizer with nldsl.compile_optimizer(path, "
                         "model.parameters())")
    batch, context = int(model.settings.get("batch", 8)), int(model.settings.get("context", 512))
    every: dict[int, int] = {}
    for lv in model.levels():
        if lv.desc.scope == "cross":
            k = max(1, math.ceil(lv.desc.period / (batch * context)))
            for p in lv.parameters():
                every[id(p)] = k
    named = list(model.named_parameters())
    claimed: set[int] = set()
    parts: list[tuple[SpecOptimizer, int]] = []
    for use in sorted(model.optimizers, key=lambda u: u.selector == "rest"):  # `rest` takes what is left
        chosen = [p for _, p in named if id(p) not in claimed and _selects(use.selector, p)]
        claimed.update(id(p) for p in chosen)
        by_rate: dict[int, list] = {}
        for p in chosen:
            by_rate.setdefault(every.get(id(p), 1), []).append(p)
        for k in sorted(by_rate):
            # every parameter of the model draws its memories' θ₀ from its own seed
            offset = sum(len(MultiRateOptimizer._params(o)) for o, _ in parts)
            parts.append((SpecOptimizer(by_rate[k], use.optimizer, use.step, seed=seed + offset), k))
    return MultiRateOptimizer(parts)


__all__ = ["MultiRateOptimizer", "OptimizerUse", "ParamStep", "SpecOptimizer", "outer_optimizer"]
