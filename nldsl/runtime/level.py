"""The period scheduler of one level, and the fast states it carries (design §1, §5, §6).

A level's compiled chunk step (a torch.fx GraphModule) computes, for a run of
tokens inside one period, its flows, the items its memories learn from, and its
output. `scan` cuts a segment of tokens at the level's period boundaries, runs the
step on each piece, and at every boundary applies the update rule. Between
boundaries each memory holds S_j, the state from the start of the period, and the
running sums its rule needs (with `per_token`, the states S_t and Z_t its tokens'
steps have made), so a period cut across calls (streaming) gives what one call gives.

This is the reference: one loop iteration per piece, every formula written out
(memories/*/naive.py). The fused path (runtime/fused.py) is a `LevelState` of its own,
`FusedLevelState`, which the same scheduler drives. Memories that learn hold their
states, and compute, in `state_dtype`: float32 when the flows are 16-bit (a model's
`.bfloat16()`, or autocast).
"""
from __future__ import annotations

import functools

import torch

from . import memories as M
from . import regions
from .errors import NonFiniteError, PositionError
from .memories.attention.naive import attention
from .memories.layout import as_rate
from .memories.linear.naive import implicit_solve, implicit_stats
from .memories.rules import apply_rule, per_head as _per_head
from .ops import ROPE_BASE, conv, conv_tail, dropout, positional, rope
from .rates import products


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype memories hold their fast state and compute in, for flows or θ₀ of `dtype`:
    float32 for 16-bit floats, whose 8 (bfloat16) or 11 (float16) bits would lose the small
    steps of a long sequence (docs/semantics.md, "Precision")."""
    return torch.promote_types(dtype, torch.float32)


def _cast(x, dtype: torch.dtype):
    if isinstance(x, tuple):
        return tuple(_cast(v, dtype) for v in x)
    return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x


def on_state_dtype(method):
    """A level state's method that the compiled step calls with flows. A memory that sums
    steps into a fast state (`accumulates`) runs in its `state_dtype` with autocast off
    (autocast's matmuls would hand the state back in 16 bits), and what it reads goes back
    to the step in the flows' dtype; any other memory (θ₀ as it is, an attention cache)
    computes as the flows do."""
    @functools.wraps(method)
    def run(self, memory, *args, **kwargs):
        flow = next((t for t in (*args, *kwargs.values()) if torch.is_tensor(t)), None)
        if flow is None or not self.accumulates(memory):
            return method(self, memory, *args, **kwargs)
        dtype, device = state_dtype(flow.dtype), flow.device.type
        if dtype == flow.dtype and not torch.is_autocast_enabled(device):
            return method(self, memory, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            out = method(self, memory, *_cast(args, dtype), **{k: _cast(v, dtype) for k, v in kwargs.items()})
        return _cast(out, flow.dtype)
    return run


class Fast:
    """One memory's fast state for a batch of sequences."""

    task_rates = (1.0, None, None)  # (lr, decay, beta) of a memory learning on the task, set by its step

    def __init__(self, mem, theta: dict, learns: bool, headmajor: bool = False, names: tuple | None = None,
                 norm: tuple | None = None):
        self.mem = mem
        self.norm = norm  # the memory's layer norm (scale, bias), outer parameters; None without `norm`
        self.names = names or (mem.name,)  # the memories it holds, stacked along the batch in this order
        self.headmajor = headmajor  # the layout of its reads and gradients: the fused path's, or the reference's
        self.objective = mem.objective if learns else None
        self.rule = mem.rule if learns else None
        self.within = self.objective in ("l2", "dot") and mem.read == "within"
        self.per_token = self.objective in ("l2", "dot") and mem.per_token  # a step at every token (Titans)
        self.theta = theta  # S_j
        self.z = {k: torch.zeros_like(v) for k, v in theta.items()} if self.rule == "momentum" else None
        self.clear()
        self.chunk = None  # this chunk's items, as recorded by `learn`

    def clear(self):
        self.acc = None  # Σ η_i ∇ℓ_i (or the implicit step's sums) since the period began
        self.decay = None  # Π α_i since the period began, [B, h]
        self.beta = None
        self.current = None  # per_token: S_t, the state the period's tokens have made so far (None: S_j)

    # -- the items of one chunk
    def record(self, key, value, lr, decay=None, beta=None, clip=None):
        s, B, n = self.mem, key.shape[0], key.shape[1]
        lr = as_rate(lr, B, n, s.heads, key)
        theta = self.theta
        if s.decay_first and decay is not None:  # the gradient at α_t S_{t-1} (a period is one token)
            alpha = as_rate(decay, B, n, s.heads, key).prod(1)
            theta = {k: v * _per_head(alpha, v) for k, v in theta.items()}
        if s.detach:  # first order: the gradient's point is a constant
            theta = {k: v.detach() for k, v in theta.items()}
        if self.per_token:
            self.chunk = self._steps(theta, key, value, lr, decay, beta, clip)
            return
        if self.rule == "implicit":  # with `residual`, W k + k regresses on v: W k on v − k
            terms = implicit_stats(key, value - key if s.residual else value, lr, s.heads, per_item=self.within)
        else:
            terms = M.grads(s.kind, self.objective, theta, key, value, lr, s.heads, s.act, s.residual,
                            per_item=self.within, headmajor=self.headmajor, norm=self.norm)
        cum = None
        if self.within:  # cumulative sums: item t's state includes items up to t
            cum = {k: v.cumsum(1) for k, v in terms.items()}
            terms = {k: v[:, -1] for k, v in cum.items()}
        if clip is not None:
            terms = {k: _clip(v, clip) for k, v in terms.items()}
        self.chunk = dict(terms=terms, cum=cum,
                          **{name: None if r is None else self._running(as_rate(r, B, n, s.heads, key))
                             for name, r in (("decay", decay), ("beta", beta))})

    def _running(self, r):
        """The running products of rates r [B, n, h] over the chunk: a read within needs each
        item's; otherwise only the chunk's whole product is used, [B, 1, h], which
        differentiates in far fewer ops than a cumprod."""
        return r.cumprod(1) if self.within else r.prod(1, keepdim=True)

    def _steps(self, theta, key, value, lr, decay, beta, clip) -> dict:
        """The chunk's items as steps at every token (`per_token`), every gradient g_i taken
        at θ, the period's start state S_j (Titans' mini-batch rule):
            Z_t = β_t Z_{t−1} − η_t g_t,  S_t = α_t S_{t−1} + Z_t     (gd: S_t = α_t S_{t−1} − η_t g_t).
        Unrolled from the chunk's start state (S, Z), after its items up to t:
            S_t = a_t S + γ_t Z − Σ_i W[t, i] η_i g_i,   Z_t = b_t Z − Σ_i D_β[t, i] η_i g_i,
        with a, b the running products of α and β, D_r[t, i] = Π_{i<l≤t} r_l, W = D_α D_β
        (gd: D_α) and γ = D_α b. Reading before needs only the chunk's last t."""
        s, B, n = self.mem, key.shape[0], key.shape[1]
        alpha = as_rate(1.0 if decay is None else decay, B, n, s.heads, key)
        # reading before, only the chunk's last token's weights are used: its row of D_α
        D_alpha = products(alpha, last=not self.within)
        a = self._running(alpha)
        W, D_beta, b, gamma = D_alpha, None, None, None
        if self.rule == "momentum":
            beta = as_rate(1.0 if beta is None else beta, B, n, s.heads, key)
            D_beta, b = products(beta), beta.cumprod(1)
            W = D_alpha @ D_beta
            gamma = (D_alpha @ b.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        if self.within:  # each item's gradient once, mixed into every token's sums
            each = M.grads(s.kind, self.objective, theta, key, value, lr, s.heads, s.act, s.residual, per_item=True,
                           norm=self.norm)

            def sums(weights):  # [B, n, h, ...]: Σ_i weights[t, i] η_i g_i for every t
                return {k: torch.einsum("bhti,bihx->bthx", weights, v.flatten(3)).reshape(v.shape)
                        for k, v in each.items()}
        else:
            def sums(weights):  # [B, h, ...]: the chunk's last t, the weights folded into the rates
                return M.grads(s.kind, self.objective, theta, key, value, lr * weights[..., -1, :].transpose(1, 2),
                               s.heads, s.act, s.residual, headmajor=self.headmajor, norm=self.norm)
            a, b, gamma = (None if r is None else r[:, -1:] for r in (a, b, gamma))
        cum, zcum = sums(W), None if D_beta is None else sums(D_beta)
        terms, zterms = cum, zcum  # the chunk's whole steps
        if self.within:
            terms, zterms = (None if x is None else {k: v[:, -1] for k, v in x.items()} for x in (cum, zcum))
        else:
            cum = None
        if clip is not None:
            terms, zterms = (None if x is None else {k: _clip(v, clip) for k, v in x.items()} for x in (terms, zterms))
        return dict(terms=terms, zterms=zterms, cum=cum, decay=a, beta=b, gamma=gamma)

    def end_chunk(self):
        c, self.chunk = self.chunk, None
        if c is None:
            return
        if self.per_token:  # the chunk's steps move S_t and Z_t; S_j stays for the period's gradients
            S = self.theta if self.current is None else self.current
            gamma = None if c["gamma"] is None else c["gamma"][:, -1]
            self.current = _moved(S, self.z, c["decay"][:, -1], gamma, c["terms"])
            if self.z is not None:
                self.z = _moved(self.z, None, c["beta"][:, -1], None, c["zterms"])
            return
        self.acc = c["terms"] if self.acc is None else {k: self.acc[k] + v for k, v in c["terms"].items()}
        for name in ("decay", "beta"):
            if c[name] is not None:
                last = c[name][:, -1]
                prev = getattr(self, name)
                setattr(self, name, last if prev is None else prev * last)

    # -- reading
    def state_within(self) -> dict:
        """Per-item states [B, n, h, ...]: S_j moved by the items up to each token
        (design §6), with the period's decay so far."""
        c = self.chunk
        if self.per_token:  # S_t of the per-token recurrence, from the chunk's start state
            S = self.theta if self.current is None else self.current
            def items(x):  # a state as the start of every item's
                return None if x is None else {k: v.unsqueeze(1) for k, v in x.items()}
            return _moved(items(S), items(self.z), c["decay"], c["gamma"], c["cum"])
        # the period's sums up to each item: this chunk's running sums on top of earlier chunks'
        steps = {k: v + (0 if self.acc is None else self.acc[k].unsqueeze(1)) for k, v in c["cum"].items()}
        if self.rule == "implicit":
            return {"W": implicit_solve(self.theta["W"].unsqueeze(1), steps["VK"], steps["KK"])}

        def decayed(x: dict, factor_cum, factor_acc):
            out = {}
            for k, v in x.items():
                f = 1.0
                if factor_cum is not None:
                    f = factor_cum if factor_acc is None else factor_cum * factor_acc.unsqueeze(1)
                    f = _per_head(f, v.unsqueeze(1))
                out[k] = v.unsqueeze(1) * f
            return out

        base = decayed(self.theta, c["decay"], self.decay)
        if self.z is None:
            return {k: base[k] - steps[k] for k in base}
        z = decayed(self.z, c["beta"], self.beta)
        return {k: base[k] + z[k] - steps[k] for k in base}

    # -- the boundary
    def update(self) -> None:
        """S_{j+1} from S_j and the period's sums (design §5); with `per_token`, the state
        its tokens' steps made."""
        if self.per_token and self.current is not None:
            self.theta = self.current
        elif self.acc is not None:
            self.theta, self.z = apply_rule(self.rule, self.theta, self.z, self.acc, self.decay, self.beta)
        self.clear()


def _moved(S: dict, Z: dict | None, a, gamma, steps: dict) -> dict:
    """a S + γ Z − steps, per head: where the per-token steps of a chunk take (S, Z)."""
    return {k: S[k] * _per_head(a, steps[k]) - steps[k]
            + (0 if Z is None else Z[k] * _per_head(gamma, steps[k])) for k in S}


def differentiable(theta: dict) -> dict:
    """A task-learned state must be differentiable: its next gradient is taken with
    respect to it."""
    if all(t.requires_grad for t in theta.values()):
        return theta
    return {k: t.detach().requires_grad_() for k, t in theta.items()}


def _clip(t: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Clip each sequence's update to a norm of max_norm, with non-finite numbers as 0."""
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    norm = t.reshape(t.shape[0], -1).norm(dim=1).clamp(min=1e-12)
    scale = (max_norm / norm).clamp(max=1.0)
    return t * scale.reshape(-1, *([1] * (t.dim() - 1)))


class Cache:
    """An attention memory's state: the keys and values it has appended, with their
    positions (design §2). Only as many as a window can still see are kept; the
    persistent items (θ₀, outer parameters) are read beside them, never kept or evicted."""

    def __init__(self, mem, period: int, persistent: dict | None = None):
        self.mem, self.period = mem, period
        self.persistent = (persistent["K"], persistent["V"]) if persistent else None
        self.K = self.V = self.pos = None
        self.chunk = None

    def record(self, key, value, start: int):
        """A chunk's items: with `items: m`, each token's key and value cut in m parts, m
        items at the token's position, in token order."""
        m, (B, n) = self.mem.items, key.shape[:2]
        pos = torch.arange(start, start + n, device=key.device).repeat_interleave(m)
        self.chunk = (key.reshape(B, n * m, -1), value.reshape(B, n * m, -1), pos)

    def read(self, q, start: int):
        K, V, pos = self.chunk if self.chunk is not None else (q[:, :0], q[:, :0], torch.arange(0, device=q.device))
        if self.K is not None:
            K, V, pos = torch.cat([self.K, K], 1), torch.cat([self.V, V], 1), torch.cat([self.pos, pos])
        q_pos = torch.arange(start, start + q.shape[1], device=q.device)
        return attention(q, K, V, q_pos, pos, self.mem.read == "within", self.period, self.mem.window,
                         self.mem.heads, self.mem.alibi, self.persistent, self.mem.segment)

    def end_chunk(self):
        if self.chunk is None:
            return
        K, V, pos = self.chunk
        self.chunk = None
        if self.K is not None:
            K, V, pos = torch.cat([self.K, K], 1), torch.cat([self.V, V], 1), torch.cat([self.pos, pos])
        w = self.mem.window
        if w is not None or self.mem.segment:  # a later query reaches back at most w + P tokens (P: a segment)
            keep = ((w or 0) + self.period) * self.mem.items
            K, V, pos = K[:, -keep:], V[:, -keep:], pos[-keep:]
        self.K, self.V, self.pos = K, V, pos

    def update(self):
        pass


class Carry:
    """What a graph's position-dependent functions carry from one call to the next, so
    cutting a sequence changes nothing (a level's flows, a block's calls): the last
    inputs of each causal conv, and the position `pos` of the call's first token,
    which its owner advances; `options` are the model's (whether it trains)."""

    def __init__(self):
        self.tails: dict[str, torch.Tensor] = {}
        self.pos = 0
        self.options: dict = {}

    def nbytes(self) -> int:
        """The bytes this state holds on to between calls: the storage of every tensor it
        carries, each storage once (a view keeps its whole storage alive)."""
        seen: dict[int, int] = {}

        def walk(x):
            if isinstance(x, torch.Tensor):
                seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)
            elif isinstance(x, (Carry, Fast, Cache)):  # not the modules: their parameters are the model's
                for v in vars(x).values():
                    walk(v)

        walk(self)
        return sum(seen.values())

    def rope(self, x, heads: int = 1, base: float = ROPE_BASE):
        positions = torch.arange(self.pos, self.pos + x.shape[1], device=x.device)
        return rope(x, positions, heads, base)

    def positional(self, x, table):
        """x plus the table's row for each token's position in its sequence."""
        end = self.pos + x.shape[1]
        if end > table.shape[0]:
            raise PositionError(end - 1, table.shape[0])
        return positional(x, table, self.pos)

    def dropout(self, x, p: float):
        """Zero each feature with probability p and scale the rest by 1/(1 − p), while the
        model trains (`model.train()`); the identity in eval mode."""
        return dropout(x, p, self.options.get("training", False))

    def conv(self, name: str, x, weight):
        tail = self.tails.get(name)
        if tail is None:
            tail = conv_tail(x.shape[0], weight, x)
        y, self.tails[name] = conv(x, weight, tail)
        return y

    def detach(self) -> None:
        self.tails = {k: v.detach() for k, v in self.tails.items()}


class LevelState(Carry):
    """Everything one copy of a level carries from token to token of a batch of
    sequences: its position, each memory's fast state, each conv's last inputs.
    This one is the reference's: memory by memory, one period at a time."""

    headmajor = False  # the layout of the memories' reads and gradients: token-major
    fused = False  # whether runs of whole periods go to `run_span` (the fused path's)

    def __init__(self, level, batch: int, options: dict, pending: list | None = None):
        super().__init__()
        self.pending = [] if pending is None else pending  # (level, memory, token, flags) checks not yet made
        desc = level.desc
        self.name, self.batch, self.options = level.key, batch, options
        self.pos = 0
        self.period = desc.period if desc.scope == "sequence" else None
        self.compile = None  # the backend this segment's regions compile with (regions.enter); None: eager
        self.fast: dict[str, Fast | Cache] = {}
        self.initial: dict[str, dict] = {}  # θ₀ of the memories that learn in the sequence (`update_norm`)
        for m in desc.memories:
            if m.kind == "attention":
                self.fast[m.name] = Cache(m, self.period or 1, level.theta0(m.name))
                continue
            theta = level.theta0(m.name)
            if self.period is not None and m.rule is not None:  # a state that sums steps
                theta = {k: v.to(state_dtype(v.dtype)) for k, v in theta.items()}
            theta = M.batched(theta, batch)
            if self.period is not None and m.objective is not None:
                self.initial[m.name] = theta
            if m.objective == "task" and self.period:
                theta = differentiable(theta)
            self.fast[m.name] = Fast(m, theta, learns=self.period is not None, headmajor=self.headmajor,
                                     norm=level.norm(m.name))

    def detach(self) -> None:
        """Cut the autograd history (inference): values stay, graphs go."""
        def cut(x):
            if x is None or not isinstance(x, (dict, torch.Tensor)):
                return x
            if isinstance(x, dict):
                return {k: v.detach() for k, v in x.items()}
            return x.detach()
        for f in self.fast.values():
            if isinstance(f, Cache):
                f.K, f.V = cut(f.K), cut(f.V)
                continue
            f.theta, f.z, f.acc, f.decay, f.beta = cut(f.theta), cut(f.z), cut(f.acc), cut(f.decay), cut(f.beta)
            f.current = cut(f.current)
            if f.objective == "task":
                f.theta = differentiable(f.theta)
        super().detach()

    # -- called by the compiled chunk step
    @on_state_dtype
    def read(self, memory: str, e, start: bool = False):
        """`memory(e)`: at S_j when read before (or `start`, for `self(...)` targets),
        at each token's own state when read within."""
        f = self._fast(memory)
        if isinstance(f, Cache):
            return f.read(e, self.pos)
        s = f.mem
        within = f.within and not start and f.chunk is not None  # never in a stack: it reads before
        theta = f.state_within() if within else self.theta(memory)
        return M.read(s.kind, theta, e, s.heads, s.act, s.residual, headmajor=f.headmajor, norm=f.norm)

    @on_state_dtype
    def learn(self, memory: str, key, value, lr=1.0, decay=None, beta=None):
        f = self.fast[memory]
        if isinstance(f, Cache):
            f.record(key, value, self.pos)
        else:
            f.record(key, value, lr, decay, beta, clip=self.options.get("inner_clip"))

    def read_many(self, memories: tuple, e, start: bool = False):
        """Alike memories (the compiler's grouping) read on one input: one by one."""
        return tuple(self.read(m, e, start) for m in memories)

    def learn_many(self, memories: tuple, key, values: tuple, lr=1.0, decay=None, beta=None):
        """Alike memories learning from one key at the same rates, each from its own
        value: one by one."""
        for m, v in zip(memories, values):
            self.learn(m, key, v, lr, decay, beta)

    def theta(self, memory: str) -> dict:
        """A memory's fast state S_j, [B, h, ...] per tensor."""
        return self.fast[memory].theta

    @torch.no_grad()
    def update_norm(self) -> torch.Tensor | None:
        """Per sequence [B], how far the memories that learn in the sequence have moved:
        the norm of S_j − θ₀ over all their tensors at once; None where none learns here."""
        if not self.initial:
            return None
        squares = [(self.theta(m)[k].float() - t.float()).flatten(1).square().sum(1)
                   for m, theta0 in self.initial.items() for k, t in theta0.items()]
        return torch.stack(squares).sum(0).sqrt()

    def _fast(self, memory: str) -> Fast | Cache:
        """The state that holds a memory."""
        return self.fast[memory]

    def accumulates(self, memory: str | tuple) -> bool:
        """Whether a memory (or alike `memories`) sums steps into a fast state."""
        f = self._fast(memory if isinstance(memory, str) else memory[0])
        return isinstance(f, Fast) and f.rule is not None

    def rates(self, memory: str, lr=1.0, decay=None, beta=None):
        """The rates of a memory that learns on the outer task (applied by the model)."""
        self.fast[memory].task_rates = (lr, decay, beta)

    # -- called by scan
    def end_chunk(self, n: int):
        for f in self.fast.values():
            f.end_chunk()
        self.pos += n
        if self.period and self.pos % self.period == 0:
            for f in self.fast.values():
                if isinstance(f, Fast) and f.objective in ("l2", "dot"):
                    f.update()
                    self.check(f)

    def run_span(self, level, x: torch.Tensor):
        """Whole periods in one step call: the fused path's (runtime/fused.py); the
        reference runs none (None: run them one period at a time)."""
        return None

    def check(self, f: Fast, pos: int | None = None):
        """Stop at a NaN or Inf in a fast state, naming the memory and the sequence. Under
        torch.compile, whose graphs cannot branch on data, the flags wait in `pending` for
        the end of the model's call."""
        pos = self.pos if pos is None else pos
        states = [t.detach().reshape(t.shape[0], -1) for t in f.theta.values()]
        compiling = torch.compiler.is_compiling()
        # a NaN or Inf anywhere makes the sum non-finite: one reduction per tensor rules out the
        # common case; only a non-finite sum (or an overflowing one) looks entry by entry
        if not compiling and torch.isfinite(sum(t.sum() for t in states)):
            return
        bad = torch.stack([~torch.isfinite(t).all(1) for t in states]).any(0)
        for name, flags in zip(f.names, bad.chunk(len(f.names))):  # a stack's rows, memory by memory
            if compiling:
                self.pending.append((self.name, name, pos, flags))
            elif flags.any():
                raise NonFiniteError(self.name, name, pos, int(flags.nonzero()[0, 0]))


def pieces(pos: int, n: int, period: int | None, whole: bool = False):
    """Cut tokens pos .. pos+n at multiples of the period: (offset, length, whole)
    triples. With `whole`, a run of whole periods is one piece (whole = True)."""
    if not period:
        yield 0, n, False
        return
    i = 0
    while i < n:
        step = min(period - (pos + i) % period, n - i)
        if whole and step == period:
            step = (n - i) // period * period
            yield i, step, True
        else:
            yield i, step, False
        i += step


def scan(level, x: torch.Tensor, state) -> torch.Tensor:
    """Run one level copy over a segment x [B, n, d] of its input stream, carrying
    its fast state in the model state: one call of the step per period, or, on the
    fused path, one call for each run of whole periods."""
    ls = state.level(level, x.shape[0])
    regions.enter(level, ls, state)
    outs = []
    for (_, n, whole), xs in cut(x, pieces(ls.pos, x.shape[1], ls.period, ls.fused)):
        y = ls.run_span(level, xs) if whole else None
        if y is None:  # the reference: one period at a time
            for (_, m, _), xp in cut(xs, pieces(ls.pos, n, ls.period)):
                outs.append(regions.period_step(level, xp, ls, state))  # level.step, compiled when regional
                ls.end_chunk(m)
        else:
            outs.append(y)
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


def cut(x: torch.Tensor, parts):
    """x [B, n, ...] in the pieces of `pieces`, as (piece, tokens) pairs: one split, whose
    backward is one concatenation (slicing each piece would make a zero tensor of the
    whole segment per piece in the backward)."""
    parts = list(parts)
    return zip(parts, x.split([n for _, n, _ in parts], 1))
