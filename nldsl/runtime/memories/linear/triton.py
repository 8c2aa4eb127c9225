"""The gated delta rule in Triton: chunk-parallel forward and backward.

Per sequence b and head h, a state S [o, i] (value dim × key dim) learns from the
items (k_t, v_t) with rate η_t and decay α_t = exp(log_decay_t):

    S_t = α_t S_{t-1} − η_t (S_{t-1} k_t − v_t) k_tᵀ,
    o_t = S_t q_t  (within)      or      o_t = S_{t-1} q_t  (before);

with `decay_first` (Gated DeltaNet's order) the gradient is taken at the decayed state:

    S_t = α_t S_{t-1} − η_t (α_t S_{t-1} k_t − v_t) k_tᵀ = α_t S_{t-1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ.

This is `chunk.delta_rule` with period 1 and l2; that function is the reference.
Over a tile of C tokens starting at state S₀, with γ_t = Σ_{s≤t} log α_s (the tile's
log decay through t), γ⁻_t = γ_t − log α_t and γ_C the whole tile's:

    U = T diag(η) X,     X = V − diag(e^{π}) K S₀ᵀ,     T = (I + A)⁻¹,
    A[s, r] = η_s e^{π_s − γ_r} k_sᵀ k_r  (r < s),
    O = diag(e^ρ) Q S₀ᵀ + (M ∘ Q Kᵀ) U,   M[t, s] = e^{ρ_t − γ_s}  (s ≤ t within, s < t before),
    S_C = e^{γ_C} S₀ + Uᵀ diag(e^{γ_C − γ}) K,

with ρ = γ (within) or γ⁻ (before), and π, the log decay of S₀ at the point where each
item's gradient is taken, γ⁻ (or γ with `decay_first`); row s of U is
u_s = η_s (v_s − S_{s−1} k_s) (or η_s (v_s − α_s S_{s−1} k_s)).
T is found by forward substitution, one row at a time (A is strictly lower).

Layouts as in `chunk.delta_rule`: S₀ [B, h, o, i]; q, k [B, n, h, i];
v [B, n, h, o]; η, log α [B, n, h]; o [B, n, h, o]. One program per (b, h) walks the
tiles in order; n is padded to whole tiles by masking (a padded item has η = 0 and
decay 1: it changes nothing). All arithmetic is float32.

Backward: the forward saves the state at the start of every tile ([B, h, N, o, i];
only when some input wants a gradient).
The backward walks the tiles in reverse, carrying dS (the loss's gradient with
respect to the tile's end state); per tile it recomputes T, U and the masks from
the saved start state, then differentiates the three equations above:

    dU = diag(e^{γ_C − γ}) K dSᵀ + (M ∘ Q Kᵀ)ᵀ dO,    dR = Tᵀ dU  (R = diag(η) X),
    dA = −dR Uᵀ  (kept on r < s),                   dS₀ = e^{γ_C} dS + dOᵀ diag(e^ρ) Q − dRᵀ diag(η e^{π}) K,

and from them dq, dk, dv, dη and the gradients of γ, γ⁻ (π is one of them), γ_C, which
reverse cumulative sums turn into the gradient of each log decay.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...kernels import differentiate
from .chunk import LOG_FLOOR, delta_rule


def _block(n: int) -> int:
    """A block size for a dimension of n: a power of two, and at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(n))


# ------------------------------------------------------------------- helpers
# tl.dot's input precision: ieee float32 products, to match the float32 reference
# (tf32 would cost ~1e-3). A constant, not a helper: the interpreter re-patches
# triton.language on every call of a jit function, which would dominate its time.
IEEE: tl.constexpr = tl.constexpr("ieee")


@triton.jit
def _unit_lower_inverse(A, C: tl.constexpr):
    """(I + A)⁻¹ for A strictly lower triangular [C, C]: row s of the inverse is
    e_s − Σ_{r<s} A[s, r] T[r], and the rows r < s are final when row s is made."""
    rows = tl.arange(0, C)
    T = (rows[:, None] == rows[None, :]).to(tl.float32)
    for s in range(1, C):
        a = tl.sum(tl.where(rows[:, None] == s, A, 0.0), 0)  # A[s, :], zero from s on
        row = tl.sum(a[:, None] * T, 0)
        T = tl.where(rows[:, None] == s, T - row[None, :], T)
    return T


@triton.jit
def _tile(S, q, k, v, eta, log_decay, WITHIN: tl.constexpr, DECAY_FIRST: tl.constexpr, C: tl.constexpr):
    """One tile from its start state S [o, i]: the reads, the end state, and the
    intermediates the backward needs (see the module docstring for the equations)."""
    rows = tl.arange(0, C)
    t, s = rows[:, None], rows[None, :]
    g = tl.cumsum(log_decay, 0)  # γ_t
    g_ex = g - log_decay  # γ⁻_t = γ_{t-1}
    # γ_C, taken from the cumulative sum (not summed again) so that γ_C − γ_t is exactly 0
    # for the tile's last item: the log decays may reach −60 per item, and float32
    # rounds two sums of them differently
    g_end = tl.sum(tl.where(rows == C - 1, g, 0.0), 0)
    if DECAY_FIRST:  # π: item t's gradient is taken after its own decay, or just before it
        g_at = g
    else:
        g_at = g_ex
    # e^{π_t − γ_s} for s < t: the decay from after item s to where item t's gradient is taken
    decay_a = tl.exp(tl.where(s < t, g_at[:, None] - g[None, :], float("-inf")))
    if WITHIN:
        read = g
        decay_o = tl.exp(tl.where(s <= t, g[:, None] - g[None, :], float("-inf")))
    else:
        read = g_ex
        if DECAY_FIRST:
            decay_o = tl.exp(tl.where(s < t, g_ex[:, None] - g[None, :], float("-inf")))
        else:
            decay_o = decay_a
    KK = tl.dot(k, tl.trans(k), input_precision=IEEE)
    A = eta[:, None] * decay_a * KK
    T = _unit_lower_inverse(A, C)
    KS = tl.dot(k, tl.trans(S), input_precision=IEEE)  # row s: S₀ k_s
    X = v - tl.exp(g_at)[:, None] * KS  # v_s minus what the decayed start state predicts
    U = tl.dot(T, eta[:, None] * X, input_precision=IEEE)  # row s: u_s = η_s (v_s − S_{s−1} k_s) (or α_s S_{s−1})
    QS = tl.dot(q, tl.trans(S), input_precision=IEEE)
    P = decay_o * tl.dot(q, tl.trans(k), input_precision=IEEE)
    o = tl.exp(read)[:, None] * QS + tl.dot(P, U, input_precision=IEEE)
    w = tl.exp(g_end - g)  # each item's decay to the tile's end
    S_end = tl.exp(g_end) * S + tl.dot(tl.trans(w[:, None] * U), k, input_precision=IEEE)
    return o, S_end, g_at, g_end, read, decay_a, decay_o, KK, A, T, KS, X, U, QS, P, w


@triton.jit
def _load_tile(Q, K, V, ETA, LD, b, h, j, n, H, DI, DO, HAS_DECAY: tl.constexpr,
               C: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr):
    """The tile j of sequence b, head h: q, k [C, BI], v [C, BO], η, log α [C], as
    float32 and zero past n or past the true dimensions; plus the token offsets."""
    t = j * C + tl.arange(0, C)
    ci, co = tl.arange(0, BI), tl.arange(0, BO)
    real = t < n
    item = (b * n + t) * H + h  # offset of (b, t, h) in a [B, n, H] tensor
    mask_i = real[:, None] & (ci[None, :] < DI)
    mask_o = real[:, None] & (co[None, :] < DO)
    at_i = item[:, None] * DI + ci[None, :]
    at_o = item[:, None] * DO + co[None, :]
    q = tl.load(Q + at_i, mask=mask_i, other=0.0).to(tl.float32)
    k = tl.load(K + at_i, mask=mask_i, other=0.0).to(tl.float32)
    v = tl.load(V + at_o, mask=mask_o, other=0.0).to(tl.float32)
    eta = tl.load(ETA + item, mask=real, other=0.0).to(tl.float32)
    if HAS_DECAY:
        log_decay = tl.load(LD + item, mask=real, other=0.0).to(tl.float32)
    else:
        log_decay = tl.zeros([C], dtype=tl.float32)
    return q, k, v, eta, log_decay, item, real, at_i, mask_i, at_o, mask_o


# ------------------------------------------------------------------- kernels
@triton.jit
def _forward_kernel(S0, Q, K, V, ETA, LD, O, S_END, STATES, n, H, DI, DO, N_TILES,
                    WITHIN: tl.constexpr, DECAY_FIRST: tl.constexpr, HAS_DECAY: tl.constexpr,
                    SAVE_STATES: tl.constexpr, C: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (b, h)
    b, h = pid // H, pid % H
    co, ci = tl.arange(0, BO), tl.arange(0, BI)
    at_state = co[:, None] * DI + ci[None, :]
    mask_state = (co[:, None] < DO) & (ci[None, :] < DI)
    S = tl.load(S0 + pid * DO * DI + at_state, mask=mask_state, other=0.0).to(tl.float32)
    for j in range(N_TILES):
        if SAVE_STATES:  # the checkpoint the backward restarts each tile from
            tl.store(STATES + (pid * N_TILES + j) * DO * DI + at_state, S, mask=mask_state)
        q, k, v, eta, log_decay, item, real, at_i, mask_i, at_o, mask_o = _load_tile(
            Q, K, V, ETA, LD, b, h, j, n, H, DI, DO, HAS_DECAY, C, BI, BO)
        o, S, _, _, _, _, _, _, _, _, _, _, _, _, _, _ = _tile(S, q, k, v, eta, log_decay, WITHIN, DECAY_FIRST, C)
        tl.store(O + at_o, o, mask=mask_o)
    tl.store(S_END + pid * DO * DI + at_state, S, mask=mask_state)


@triton.jit
def _backward_kernel(Q, K, V, ETA, LD, STATES, DOUT, DS_END,
                     DS0, DQ, DK, DV, DETA, DLD, n, H, DI, DO, N_TILES,
                     WITHIN: tl.constexpr, DECAY_FIRST: tl.constexpr, HAS_DECAY: tl.constexpr,
                     C: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    co, ci = tl.arange(0, BO), tl.arange(0, BI)
    at_state = co[:, None] * DI + ci[None, :]
    mask_state = (co[:, None] < DO) & (ci[None, :] < DI)
    rows = tl.arange(0, C)
    t, s = rows[:, None], rows[None, :]
    dS = tl.load(DS_END + pid * DO * DI + at_state, mask=mask_state, other=0.0).to(tl.float32)
    for jj in range(N_TILES):
        j = N_TILES - 1 - jj
        S = tl.load(STATES + (pid * N_TILES + j) * DO * DI + at_state, mask=mask_state, other=0.0)
        q, k, v, eta, log_decay, item, real, at_i, mask_i, at_o, mask_o = _load_tile(
            Q, K, V, ETA, LD, b, h, j, n, H, DI, DO, HAS_DECAY, C, BI, BO)
        dout = tl.load(DOUT + at_o, mask=mask_o, other=0.0).to(tl.float32)
        _, _, g_at, g_end, read, decay_a, decay_o, KK, A, T, KS, X, U, QS, P, w = _tile(
            S, q, k, v, eta, log_decay, WITHIN, DECAY_FIRST, C)

        KdS = tl.dot(k, tl.trans(dS), input_precision=IEEE)  # row s: dS k_s
        dU = w[:, None] * KdS + tl.dot(tl.trans(P), dout, input_precision=IEEE)
        dR = tl.dot(tl.trans(T), dU, input_precision=IEEE)  # through U = T R
        dA = -tl.dot(dR, tl.trans(U), input_precision=IEEE) * (s < t)  # through T = (I + A)⁻¹
        dP = tl.dot(dout, tl.trans(U), input_precision=IEEE)
        dQK = dP * decay_o
        dKK = eta[:, None] * decay_a * dA
        e_read = tl.exp(read)
        shrink = eta * tl.exp(g_at)  # how much of S₀ k_s the right side R takes off

        dq = e_read[:, None] * tl.dot(dout, S, input_precision=IEEE) + tl.dot(dQK, k, input_precision=IEEE)
        dk = (w[:, None] * tl.dot(U, dS, input_precision=IEEE)
              + tl.dot(tl.trans(dQK), q, input_precision=IEEE)
              - shrink[:, None] * tl.dot(dR, S, input_precision=IEEE)
              + tl.dot(dKK + tl.trans(dKK), k, input_precision=IEEE))
        dv = eta[:, None] * dR
        deta = tl.sum(dR * X, 1) + tl.sum(dA * decay_a * KK, 1)
        tl.store(DQ + at_i, dq, mask=mask_i)
        tl.store(DK + at_i, dk, mask=mask_i)
        tl.store(DV + at_o, dv, mask=mask_o)
        tl.store(DETA + item, deta, mask=real)

        if HAS_DECAY:
            # gradients of γ, γ⁻ and γ_C; every exp(a − b) above gives +z to a and −z to b
            dw = w * tl.sum(U * KdS, 1)
            Zo = dP * P
            Za = dA * A
            d_read = e_read * tl.sum(dout * QS, 1) + tl.sum(Zo, 1)
            d_g = -dw - tl.sum(Zo, 0) - tl.sum(Za, 0)
            d_at = tl.sum(Za, 1) - shrink * tl.sum(KS * dR, 1)  # through π
            d_gex = tl.zeros([C], dtype=tl.float32)
            if DECAY_FIRST:
                d_g += d_at
            else:
                d_gex += d_at
            if WITHIN:
                d_g += d_read
            else:
                d_gex += d_read
            d_end = tl.exp(g_end) * tl.sum(tl.sum(S * dS, 1), 0) + tl.sum(dw, 0)
            # γ_t sums log α_s over s ≤ t, γ⁻_t over s < t, γ_C over the tile
            dld = (tl.sum(tl.where(s >= t, d_g[None, :], 0.0), 1)
                   + tl.sum(tl.where(s > t, d_gex[None, :], 0.0), 1) + d_end)
            tl.store(DLD + item, dld, mask=real)

        dS = (tl.exp(g_end) * dS + tl.dot(tl.trans(e_read[:, None] * dout), q, input_precision=IEEE)
              - tl.dot(tl.trans(shrink[:, None] * dR), k, input_precision=IEEE))
    tl.store(DS0 + pid * DO * DI + at_state, dS, mask=mask_state)


# ------------------------------------------------------------------- autograd
def _launch_options(C: int, BI: int, BO: int) -> dict:
    # a 64-token tile holds a dozen [C, C] and [C, o] float32 blocks: spread them wider
    return {"num_warps": 8 if C * max(C, BI, BO) >= 64 * 64 else 4}


class _GatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, S0, q, k, v, eta, log_decay, within: bool, tile: int, decay_first: bool):
        B, n, H, DI = k.shape
        DO = v.shape[-1]
        C, BI, BO = _block(tile), _block(DI), _block(DO)
        N = triton.cdiv(n, C)
        # the inputs as given are kept for the backward: under create_graph the reference
        # differentiates them, and a contiguous copy made here would have no history
        S0c, qc, kc, vc, etac = (x.contiguous() for x in (S0, q, k, v, eta))
        ld = log_decay.contiguous() if log_decay is not None else etac  # a placeholder pointer, never read
        o = q.new_empty(B, n, H, DO, dtype=v.dtype)
        S_end = torch.empty_like(S0c)
        save = any(ctx.needs_input_grad)  # no checkpoints when nothing will go backward
        states = torch.empty(B, H, N if save else 0, DO, DI, dtype=torch.float32, device=k.device)
        _forward_kernel[(B * H,)](S0c, qc, kc, vc, etac, ld, o, S_end, states, n, H, DI, DO, N,
                                  WITHIN=within, DECAY_FIRST=decay_first, HAS_DECAY=log_decay is not None,
                                  SAVE_STATES=save,
                                  C=C, BI=BI, BO=BO,
                                  **_launch_options(C, BI, BO))
        ctx.save_for_backward(S0, q, k, v, eta, log_decay, states)
        ctx.meta = (within, decay_first, log_decay is not None, C, BI, BO, S0.dtype)
        return o, S_end

    @staticmethod
    def backward(ctx, d_o, d_S_end):
        S0, q, k, v, eta, log_decay, states = ctx.saved_tensors
        within, decay_first, has_decay, C, BI, BO, s_dtype = ctx.meta
        if torch.is_grad_enabled():  # create_graph: the Triton backward has no derivative; the reference's has
            def reference(S0, q, k, v, eta, log_decay):
                return delta_rule(S0, q, k, v, eta, log_decay, period=1, tile=C, within=within, l2=True,
                                  decay_first=decay_first)
            return (*differentiate(reference, (S0, q, k, v, eta, log_decay), ctx.needs_input_grad[:6],
                                   (d_o, d_S_end)), None, None, None)
        q, k, v, eta = (x.contiguous() for x in (q, k, v, eta))
        ld = log_decay.contiguous() if has_decay else eta  # a placeholder pointer, never read
        B, n, H, DI = k.shape
        DO = v.shape[-1]
        N = triton.cdiv(n, C)
        dS0 = torch.empty(B, H, DO, DI, dtype=s_dtype, device=k.device)
        dq, dk, dv, deta = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(eta)
        dld = torch.empty_like(ld) if has_decay else deta  # a placeholder pointer, never written
        _backward_kernel[(B * H,)](q, k, v, eta, ld, states, d_o.contiguous(), d_S_end.contiguous(),
                                   dS0, dq, dk, dv, deta, dld, n, H, DI, DO, N,
                                   WITHIN=within, DECAY_FIRST=decay_first, HAS_DECAY=has_decay, C=C, BI=BI, BO=BO,
                                   **_launch_options(C, BI, BO))
        return dS0, dq, dk, dv, deta, dld if has_decay else None, None, None, None


def gated_delta_rule(S0: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor,
                     log_decay: torch.Tensor | None, *, within: bool, tile: int = 64, decay_first: bool = False):
    """Reads and end state of the gated delta rule over n tokens (see the module
    docstring): `chunk.delta_rule(..., period=1, l2=True, decay_first=...)` in Triton, differentiable
    in every input. S0 [B, h, o, i]; q, k [B, n, h, i]; v [B, n, h, o]; eta and
    log_decay [B, n, h] (log_decay None: no decay). `tile` is rounded up to a power
    of two of at least 16; it changes rounding only. Returns (o [B, n, h, o],
    S_end [B, h, o, i])."""
    if log_decay is not None:  # as the reference: a decay below e^-60 counts as e^-60
        log_decay = log_decay.clamp(min=LOG_FLOOR)
    return _GatedDeltaRule.apply(S0, q, k, v, eta, log_decay, bool(within), int(tile), bool(decay_first))
