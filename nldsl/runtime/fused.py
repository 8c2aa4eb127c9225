"""The fused path (design §6, docs/performance.md): `FusedLevelState`, the level state
the model runs with unless `fused=False`, and `Span`, the state of a run of whole
periods. The chunk step is the reference's own graph; only the state it calls differs.

`FusedLevelState` is the reference's `LevelState` (runtime/level.py) with three
changes. Every memory reads and takes its gradients head-major (memories/*/headmajor.py).
Alike memories that the compiler grouped (`st.read_many`, `st.learn_many`, the `group`
hint) read and learn in one batched call, G memories of B sequences stacked as G·B,
and the compiler's `desc.stacks` are held stacked from the first token. And a level
whose memories learn from items that no learning memory's read produces (its
`desc.parallel`) runs each run of whole periods in one call of its chunk step.

`Span` takes each memory's items for the whole run when the step calls `learn`, and
answers the step's one read of that memory with the reads of every token:

- a `linear` memory on `l2` or `dot` by `gd` (with or without `decay_first` or
  `per_token`; or `implicit` with period 1, a delta rule with η/(1+η‖k‖²)), without
  `norm`, in chunk-parallel form (memories/linear/chunk.py; with `residual`, W k learns
  v − k and the reads add q);
- a 2-layer `mlp` without biases or `norm` on `l2` by `gd` (not `decay_first`;
  `per_token` as the one step per period on rates times `rates.later_decays`) or
  `momentum` (not `per_token`), read before, by a loop over periods, each one autograd
  node with a written backward (memories/mlp/period.py);
- any other memory by a loop over periods that does only the memory's own algebra
  (one batched gradient per period for all sequences and heads, head-major),
  `momentum` with `per_token` among them (its two weighted sums of the period's
  gradients, `Fast.record`, are not period.py's one), and memories with `norm` (whose
  gradient goes through the layer norm, which neither period.py nor a kernel writes);
- attention memories and memories that do not learn as the reference does.

With the compile option `kernels` (docs/performance.md), the gated delta rule
(period 1, l2) and the period loop of a 2-layer mlp memory on l2 by gd, read
before, run as Triton kernels (memories/*/triton.py, through runtime/kernels.py)
instead: this module is where the runtime chooses them.

A run of periods with a non-finite state is replayed on the reference path, which
names the token where it happened.
"""
from __future__ import annotations

import torch

from . import kernels
from . import memories as M
from .errors import NonFiniteError
from .level import Fast, LevelState, on_state_dtype
from .memories.layout import as_rate, head_periods, merge_heads, period_stream, split_heads
from .memories.linear.chunk import delta_rule
from .memories.mlp.period import mlp_period
from .rates import later_decays


class FusedLevelState(LevelState):
    """A level's state on the fused path: the reference's, head-major, with alike
    memories stacked along the batch and runs of whole periods in one step call."""

    headmajor = True

    def __init__(self, level, batch: int, options: dict, pending: list | None = None):
        desc = level.desc
        # Triton or PyTorch for the memories that have a kernel: the level's hint, else the model's option
        self.kernel = kernels.check_mode(desc.kernel or options.get("kernels", "auto"))
        super().__init__(level, batch, options, pending)
        self.fused = desc.parallel and self.period is not None
        self.grouped = desc.group  # alike memories in one batched call (read_many, learn_many)
        self.cats: dict[tuple, tuple] = {}  # memories -> (their states, stacked this period), see _stacked
        # grouped, the memories of each of the compiler's stacks are one Fast for good: G
        # memories of B sequences as G·B, updated and checked once (its key joins the names)
        self.members: dict[str, tuple[str, int]] = {}  # memory -> (its stack's key, its place)
        for names in desc.stacks if self.grouped and self.period else ():
            parts = [self.fast.pop(n) for n in names]
            theta = {k: torch.cat([p.theta[k] for p in parts]) for k in parts[0].theta}
            key = "+".join(names)
            self.fast[key] = Fast(parts[0].mem, theta, learns=True, headmajor=True, names=names)
            self.members.update({n: (key, i) for i, n in enumerate(names)})

    # -- called by the compiled chunk step
    @on_state_dtype
    def read_many(self, memories: tuple, e, start: bool = False):
        """Alike memories read on one input: their states stacked along the batch (G
        memories of B sequences as G·B), read once."""
        if not self.grouped:
            return super().read_many(memories, e, start)
        s, G = self._fast(memories[0]).mem, len(memories)
        y = M.read(s.kind, self._stacked(memories), _each(e, G), s.heads, s.act, s.residual, headmajor=True)
        return y.chunk(G)

    @on_state_dtype
    def learn_many(self, memories: tuple, key, values: tuple, lr=1.0, decay=None, beta=None):
        """Alike memories learning from one key at the same rates, each from its own
        value: one batched gradient, as `read_many`."""
        if not self.grouped:
            return super().learn_many(memories, key, values, lr, decay, beta)
        G = len(memories)
        stack = self._fast(memories[0]) if memories[0] in self.members else None
        if stack is not None and stack.names == memories:  # a stack held for good learns as one memory
            stack.record(_each(key, G), torch.cat(values), _each(lr, G), _each(decay, G), _each(beta, G),
                         clip=self.options.get("inner_clip"))
            return

        def share(x, i: int):  # memory i's part of what the stacked record made
            if isinstance(x, dict):
                return {k: share(v, i) for k, v in x.items()}
            return None if x is None else x.chunk(G)[i]

        group = Fast(self.fast[memories[0]].mem, self._stacked(memories), learns=True, headmajor=True)
        group.record(_each(key, G), torch.cat(values), _each(lr, G), _each(decay, G), _each(beta, G),
                     clip=self.options.get("inner_clip"))
        for i, m in enumerate(memories):
            self.fast[m].chunk = share(group.chunk, i)

    def theta(self, memory: str) -> dict:
        """A memory's fast state S_j, [B, h, ...] per tensor, wherever it is held."""
        return self._stacked((memory,)) if memory in self.members else self.fast[memory].theta

    def _fast(self, memory: str) -> Fast:
        """The Fast that holds a memory: its own, or its stack."""
        return self.fast[self.members[memory][0]] if memory in self.members else self.fast[memory]

    def _stacked(self, memories: tuple) -> dict:
        """The states of alike memories along the batch: rows of a stack held for good
        (a view, when they lie in order in one), else stacked once per period."""
        where = [self.members.get(m, (None, 0)) for m in memories]
        key, first = where[0]
        if key is not None and all(w == (key, first + i) for i, w in enumerate(where)):
            B = self.batch
            return {k: v[first * B:(first + len(memories)) * B] for k, v in self.fast[key].theta.items()}
        thetas = [self.theta(m) for m in memories]
        made = self.cats.get(memories)
        if made is None or any(a is not b for a, b in zip(made[0], thetas)):
            made = self.cats[memories] = (thetas, {k: torch.cat([t[k] for t in thetas]) for k in thetas[0]})
        return made[1]

    # -- called by scan
    def run_span(self, level, x: torch.Tensor):
        """Whole periods x [B, n, d] (n a multiple of the period, starting at a boundary) in
        one call of the level's step; None when a state went non-finite, for the caller
        to replay them on the reference path, which names the token."""
        saved = self._snapshot()
        span = Span(self, level.desc.tile)
        y = level.step(x, span)
        span.finish()
        try:
            self._end_span(x.shape[1], span.items)
        except NonFiniteError:
            self._restore(saved)
            return None
        return y

    def _snapshot(self):
        fast = {k: (f.theta, f.z) for k, f in self.fast.items() if isinstance(f, Fast)}
        return self.pos, dict(self.tails), fast

    def _restore(self, saved) -> None:
        self.pos, self.tails, fast = saved
        for k, f in self.fast.items():
            f.chunk = None
            if k in fast:
                f.theta, f.z = fast[k]
                f.clear()

    def _end_span(self, n: int, learned) -> None:
        """After whole periods: check the states the span moved, then keep its caches."""
        for name in learned:
            self.check(self.fast[name], self.pos + n)
        for f in self.fast.values():
            f.end_chunk()
        self.pos += n


def _each(r, G: int):
    """A stream or per-item rate [B, n, .] once for each of G stacked memories ([G·B, n, .]);
    a rate that is not per item as it is."""
    return r.repeat(G, *[1] * (r.dim() - 1)) if torch.is_tensor(r) and r.dim() == 3 else r


def periods(x, P: int, count: int) -> list:
    """Per-item values [B, n, ...] cut into `count` periods of P items, in one split (whose
    backward is one concatenation; slicing each period would make a zero tensor of the
    whole span per period in the backward); a rate that is not per item, `count` times."""
    if torch.is_tensor(x) and x.dim() >= 3:
        return list(x.split(P, 1))
    return [x] * count


def use_kernel(mode: str, t: torch.Tensor) -> bool:
    """Whether a Triton kernel answers for t: never with kernels="torch", on CUDA with
    "auto", wherever one can run with "triton". Not for float64: they compute in float32."""
    if mode == "torch" or t.dtype == torch.float64 or not (t.is_cuda or mode == "triton"):
        return False
    return kernels.available(t)


class Span:
    """The state a parallel level's chunk step sees over whole periods at once."""

    def __init__(self, ls, tile: int):
        self.ls, self.tile = ls, tile
        self.items: dict[str, tuple] = {}
        self.done: set[str] = set()

    # -- called by the chunk step, as on LevelState: what the level state carries (vocab's `state`)
    def conv(self, name: str, x, weight):
        return self.ls.conv(name, x, weight)

    def rope(self, x, **options):
        return self.ls.rope(x, **options)

    def dropout(self, x, p: float):
        return self.ls.dropout(x, p)

    def positional(self, x, table):
        return self.ls.positional(x, table)

    def accumulates(self, memory: str) -> bool:
        return self.ls.accumulates(memory)

    def rates(self, memory: str, **rates):
        self.ls.rates(memory, **rates)

    @on_state_dtype
    def learn(self, memory: str, key, value, lr=1.0, decay=None, beta=None):
        f = self.ls.fast[memory]
        if f.mem.kind == "attention":
            return self.ls.learn(memory, key, value)
        self.items[memory] = (key, value, lr, decay, beta)

    @on_state_dtype
    def read(self, memory: str, e, start: bool = False):
        if memory not in self.items:
            return self.ls.read(memory, e, start)
        if memory in self.done:
            raise RuntimeError(f"memory `{memory}` is read twice in one span")  # the compiler rules it out
        return self._run(memory, e)

    # -- the memories' algebra over the span
    def _run(self, memory: str, e):
        ls, f = self.ls, self.ls.fast[memory]
        self.done.add(memory)
        key, value, lr, decay, beta = self.items[memory]
        m, P, clip = f.mem, ls.period, ls.options.get("inner_clip")
        B, n = key.shape[:2]
        # the form and kernel the compiler chose (desc.MemoryDesc); clipping is per period, the reference's algebra
        form, triton = (m.form, m.triton) if clip is None else (None, None)
        if form == "chunk":
            k, v = split_heads(key, m.heads), split_heads(value, m.heads)
            if m.residual and f.objective == "l2":  # M(k) = W k + k regresses on v: W k on v − k
                v = v - k
            eta = as_rate(lr, B, n, m.heads, key)
            if f.rule == "implicit":  # the exact proximal step of one item (Sherman-Morrison)
                eta = eta / (1 + eta * k.pow(2).sum(-1))
            log_decay = None if decay is None else as_rate(decay, B, n, m.heads, key).log()
            q = k if e is None else split_heads(e, m.heads)
            first = m.decay_first and log_decay is not None
            if triton and use_kernel(ls.kernel, key):  # the same recurrence, in Triton
                y, S = kernels.gated_delta_rule(f.theta["W"], q, k, v, eta, log_decay, within=f.within,
                                                tile=self.tile, decay_first=first)
            else:
                y, S = delta_rule(f.theta["W"], q, k, v, eta, log_decay, period=P, tile=self.tile,
                                  within=f.within, l2=f.objective == "l2", decay_first=first,
                                  per_token=f.per_token)
            f.theta = {"W": S}
            if e is not None and m.residual:
                y = y + q
            return None if e is None else merge_heads(y)
        if triton == "mlp_period_update" and use_kernel(ls.kernel, key):
            return self._mlp_periods(f, key, value, self._one_step_rates(f, key, lr, decay), decay, e)
        if form == "mlp":
            return self._mlp_loop(f, key, value, self._one_step_rates(f, key, lr, decay), decay, beta, e)
        # any other memory, per period with the reference's own algebra: momentum with `per_token`
        # falls back here, since period.py's node makes one weighted sum of gradients, not two
        outs, count = [], n // P
        for items in zip(*(periods(t, P, count) for t in (key, value, lr, decay, beta, e))):
            *learned, q = items
            f.record(*learned, clip=clip)
            if q is not None:
                theta = f.state_within() if f.within else f.theta
                outs.append(M.read(m.kind, theta, q, m.heads, m.act, m.residual, headmajor=f.headmajor, norm=f.norm))
            f.end_chunk()
            f.update()
        return torch.cat(outs, 1) if outs else None

    def _one_step_rates(self, f, key, lr, decay):
        """The rates on which one gd step per period is gd's `per_token` rule read before
        (the paths here take no momentum with it): each item's times the decays after it
        in its period."""
        if not f.per_token or decay is None:
            return lr
        B, n, h = *key.shape[:2], f.mem.heads
        return as_rate(lr, B, n, h, key) * later_decays(as_rate(decay, B, n, h, key), self.ls.period)

    def _mlp_periods(self, f, key, value, lr, decay, e):
        """The loop over periods with one kernel call per period in place of record,
        read and update: the read, the gradient and the gd step in one program."""
        m, P = f.mem, self.ls.period
        B, n = key.shape[:2]
        k, v = split_heads(key, m.heads), split_heads(value, m.heads)
        q = k if e is None else split_heads(e, m.heads)  # not read: the state still moves, y is dropped
        eta = as_rate(lr, B, n, m.heads, key)
        alpha = None if decay is None else as_rate(decay, B, n, m.heads, key)
        outs = []
        for qj, kj, vj, eta_j, alpha_j in zip(*(periods(t, P, n // P) for t in (q, k, v, eta, alpha))):
            S = f.theta
            y, *new = kernels.mlp_period_update(
                S["W1"], S["W2"], qj, kj, vj, eta_j,
                None if alpha_j is None else alpha_j.prod(1),  # the period's decay, [B, h]
                act=m.act, residual=m.residual, b1=S.get("b1"), b2=S.get("b2"))
            new = dict(zip(("W1", "W2", "b1", "b2"), new))
            f.theta = {name: new[name] for name in S}  # the keys in the loop's order
            outs.append(y)
        f.clear()
        return None if e is None else merge_heads(torch.cat(outs, 1))

    def _mlp_loop(self, f, key, value, lr, decay, beta, e):
        """The loop over periods with one autograd node per period (period.py), in
        head-major layout from start to end."""
        m, P = f.mem, self.ls.period
        B, n = key.shape[:2]
        count = n // P

        def per_period(r):  # a rate's product over each period, [B·h, 1, 1]
            if r is None:
                return [None] * count
            r = as_rate(r, B, n, m.heads, key).reshape(B, count, P, m.heads).prod(2)
            return list(r.transpose(0, 1).reshape(count, B * m.heads, 1, 1).unbind())

        # each period's items [B·h, P, d], contiguous: a rate in token-major order would make every
        # item tensor of the period (r = w e) token-major, which each batched product then copies
        rate = as_rate(lr, B, n, m.heads, key)
        cut = [head_periods(t, m.heads, P) if t is not None else [None] * count for t in (key, value, e, rate)]
        # folded for the loop: [B·h, ...], the batch dims period.py works on
        theta = {name: W.flatten(0, 1) for name, W in f.theta.items()}
        z = None if f.z is None else {name: Z.flatten(0, 1) for name, Z in f.z.items()}
        backend = None if torch.compiler.is_compiling() else self.ls.compile  # regions.enter: compiled while training
        outs = []
        for kj, vj, qj, wj, alpha, beta_j in zip(*cut, per_period(decay), per_period(beta)):
            y, theta, z = mlp_period(theta, z, kj, vj, qj, wj, alpha, beta_j, act=m.act,
                                     residual=m.residual, backend=backend)
            outs.append(y)
        unfold = lambda t: t.unflatten(0, (B, m.heads))  # noqa: E731
        f.theta = {name: unfold(W) for name, W in theta.items()}
        f.z = None if z is None else {name: unfold(Z) for name, Z in z.items()}
        f.clear()
        return None if e is None else period_stream(outs, m.heads)

    def finish(self):
        for memory in self.items:  # a memory that learns but is not read still moves
            if memory not in self.done:
                self._run(memory, None)

