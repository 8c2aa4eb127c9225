"""One period of a 2-layer mlp memory in Triton: the read, the gradient and the gd
step fused into one program per (sequence b, head h), forward and backward.

The memory is M(e) = W1 σ(W2 e + b2) + b1 (+ e when residual), with W2 [B, h, k, i],
W1 [B, h, o, k] and optional biases b2 [B, h, k], b1 [B, h, o]. Over a period of P
items, all at the state S = (W1, W2, b1, b2) of the period's start:

    y_t = M_S(q_t)                                 (read before)
    r_t = η_t (M_S(k_t) − v_t),   δ_t = (W1ᵀ r_t) ∘ σ'(W2 k_t + b2)
    G_W1 = Σ r_t σ(W2 k_t + b2)ᵀ,   G_W2 = Σ δ_t k_tᵀ,   G_b1 = Σ r_t,   G_b2 = Σ δ_t
    S' = α S − G                                   (α [B, h], or 1)

that is Σ η_t ∇ ½‖M_S(k_t) − v_t‖² (`memories.grads`, l2) and `rules.apply_rule`
(gd); `mlp_period_update_reference` composes those. Layouts: q, k [B, P, h, i],
v [B, P, h, o], η [B, P, h]; y [B, P, h, o]. The program holds the state and the
gradient sums in registers and walks the period in blocks of items (64 by default), so P
may be any length (the state, not the period, bounds the sizes). All arithmetic
is float32.

Backward. Given dy_t and D = (D1, D2, d1, d2), the gradients of S', write for the
read z_t = W2 q_t + b2, a_t = σ(z_t), and for the keys ζ_t = W2 k_t + b2, c_t = σ(ζ_t),
e_t = W1 c_t + b1 (+ k_t) − v_t, r_t = η_t e_t, u_t = W1ᵀ r_t, δ_t = u_t ∘ σ'(ζ_t).
S' = α S − G sends −D into G and α D into S, and dα = ⟨D, S⟩ (over all four parts).
The read, as any mlp's backward:

    dz_t = (W1ᵀ dy_t) ∘ σ'(z_t),   dq_t = W2ᵀ dz_t (+ dy_t),
    dW1 += dy_t a_tᵀ,   dW2 += dz_t q_tᵀ,   db1 += dy_t,   db2 += dz_t.

The gradient sums, through G_W1 = Σ r cᵀ, G_b1 = Σ r, G_W2 = Σ δ kᵀ, G_b2 = Σ δ, then
δ = u ∘ σ'(ζ), u = W1ᵀ r, r = η e:

    dδ_t = −D2 k_t − d2,   du_t = dδ_t ∘ σ'(ζ_t),   dr_t = W1 du_t − D1 c_t − d1,
    de_t = η_t dr_t,   dη_t = dr_t · e_t,   dv_t = −de_t,
    dc_t = W1ᵀ de_t − D1ᵀ r_t,   dζ_t = dc_t ∘ σ'(ζ_t) + dδ_t ∘ u_t ∘ σ''(ζ_t),
    dk_t = W2ᵀ dζ_t − D2ᵀ δ_t (+ de_t),
    dW1 += r_t du_tᵀ + de_t c_tᵀ,   dW2 += dζ_t k_tᵀ,   db1 += de_t,   db2 += dζ_t.

Each item's terms need only the start state, D and the item, so the backward is one
more walk over the period in blocks, recomputing z, ζ and the rest at S (nothing per
item is saved); the state-sized sums add up in registers as in the forward. A padded
item has η = 0 and dy = 0, so r, u, δ, de and dz vanish and it adds nothing.
The Triton backward is first order: under create_graph (a task level above takes a
gradient through the kernel) it differentiates the PyTorch reference instead
(`kernels.differentiate`), so gradients are right to any order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import memories
from ...kernels import differentiate
from ..rules import apply_rule
from ....vocab import ACTIVATIONS, DEFAULT_ACTIVATION
from ..layout import merge_heads
from .naive import forward

ACTS = ACTIVATIONS  # the kernel writes each of the vocabulary's activations


def _block(n: int) -> int:
    """A block size for a dimension of n: a power of two, and at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(n))


# tl.dot's input precision: ieee float32 products, to match the float32 reference
# (tf32 would cost ~1e-3). A constant, not a helper: the interpreter re-patches
# triton.language on every call of a jit function, which would dominate its time.
IEEE: tl.constexpr = tl.constexpr("ieee")


@triton.jit
def _act(z, ACT: tl.constexpr):
    """σ(z) and σ'(z), as ops.ACT and ops.ACT_GRAD."""
    if ACT == "silu":
        sig = tl.sigmoid(z)
        a, da = z * sig, sig * (1 + z * (1 - sig))
    elif ACT == "gelu":  # the exact (erf) gelu
        a = 0.5 * z * (1 + tl.erf(z * 0.7071067811865476))
        da = 0.5 * (1 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == "relu":
        a, da = tl.maximum(z, 0.0), (z > 0).to(tl.float32)
    elif ACT == "tanh":  # tanh z = 2 sigmoid(2z) − 1: tl has sigmoid on every backend
        a = 2 * tl.sigmoid(2 * z) - 1
        da = 1 - a * a
    elif ACT == "sigmoid":
        a = tl.sigmoid(z)
        da = a * (1 - a)
    else:  # identity
        a, da = z, tl.full(z.shape, 1.0, tl.float32)
    return a, da


@triton.jit
def _act_curvature(z, a, da, ACT: tl.constexpr):
    """σ''(z), given σ(z) = a and σ'(z) = da (as period._act2)."""
    if ACT == "silu":  # s (1 − s) (2 + z (1 − 2s))
        sig = tl.sigmoid(z)
        dda = sig * (1 - sig) * (2 + z * (1 - 2 * sig))
    elif ACT == "gelu":  # φ(z) (2 − z²)
        dda = tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2 - z * z)
    elif ACT == "tanh":
        dda = -2 * a * da
    elif ACT == "sigmoid":
        dda = da * (1 - 2 * a)
    else:  # relu, identity: piecewise linear
        dda = tl.zeros(z.shape, dtype=tl.float32)
    return dda


@triton.jit
def _program(H, BH: tl.constexpr, BO: tl.constexpr):
    """This program's (b, h) (one program per pair, `pid` = b·H + h) and the hidden and
    output columns."""
    pid = tl.program_id(0).to(tl.int64)
    return pid, pid // H, pid % H, tl.arange(0, BH), tl.arange(0, BO)


@triton.jit
def _zero_state(BI: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    """Zeros shaped as W1, W2, b1, b2: the sums a kernel accumulates over a period."""
    return (tl.zeros([BO, BH], dtype=tl.float32), tl.zeros([BH, BI], dtype=tl.float32),
            tl.zeros([BO], dtype=tl.float32), tl.zeros([BH], dtype=tl.float32))


@triton.jit
def _load_state(W1, W2, B1, B2, pid, DI, DH, DO, HAS_BIAS: tl.constexpr,
                BI: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    """(b, h)'s W1 [BO, BH], W2 [BH, BI], b1 [BO], b2 [BH] (or their gradients) as
    float32, 0 past the true sizes; plus the offsets and masks of W1 and W2."""
    ci, ch, co = tl.arange(0, BI), tl.arange(0, BH), tl.arange(0, BO)
    at_w2, mask_w2 = ch[:, None] * DI + ci[None, :], (ch[:, None] < DH) & (ci[None, :] < DI)
    at_w1, mask_w1 = co[:, None] * DH + ch[None, :], (co[:, None] < DO) & (ch[None, :] < DH)
    w2 = tl.load(W2 + pid * DH * DI + at_w2, mask=mask_w2, other=0.0).to(tl.float32)
    w1 = tl.load(W1 + pid * DO * DH + at_w1, mask=mask_w1, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b2 = tl.load(B2 + pid * DH + ch, mask=ch < DH, other=0.0).to(tl.float32)
        b1 = tl.load(B1 + pid * DO + co, mask=co < DO, other=0.0).to(tl.float32)
    else:
        b2 = tl.zeros([BH], dtype=tl.float32)
        b1 = tl.zeros([BO], dtype=tl.float32)
    return w1, w2, b1, b2, at_w1, mask_w1, at_w2, mask_w2


@triton.jit
def _load_items(Q, K, V, ETA, b, h, start, P, H, DI, DO,
                BP: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr):
    """Items start .. start + BP of (b, h): q, k [BP, BI], v [BP, BO], η [BP] as float32,
    0 past P (so a padded item has η = 0) or past the true sizes; plus offsets and masks."""
    ci, co = tl.arange(0, BI), tl.arange(0, BO)
    t = start + tl.arange(0, BP)
    real = t < P
    item = (b * P + t) * H + h  # offset of (b, t, h) in a [B, P, H] tensor
    mask_i, mask_o = real[:, None] & (ci[None, :] < DI), real[:, None] & (co[None, :] < DO)
    at_i, at_o = item[:, None] * DI + ci[None, :], item[:, None] * DO + co[None, :]
    q = tl.load(Q + at_i, mask=mask_i, other=0.0).to(tl.float32)
    k = tl.load(K + at_i, mask=mask_i, other=0.0).to(tl.float32)
    v = tl.load(V + at_o, mask=mask_o, other=0.0).to(tl.float32)
    eta = tl.load(ETA + item, mask=real, other=0.0).to(tl.float32)
    return q, k, v, eta, item, real, at_i, mask_i, at_o, mask_o


@triton.jit
def _hidden(x, w2, b2, ACT: tl.constexpr):
    """z = W2 x + b2 for rows x, and σ(z), σ'(z)."""
    z = tl.dot(x, tl.trans(w2), input_precision=IEEE) + b2[None, :]
    a, da = _act(z, ACT)
    return z, a, da


@triton.jit
def _out(x, a, w1, b1, RESIDUAL: tl.constexpr):
    """W1 a + b1 (+ x): the memory's output from its hidden activations."""
    y = tl.dot(a, tl.trans(w1), input_precision=IEEE) + b1[None, :]
    if RESIDUAL:
        y += x  # residual needs i == o, so BI == BO
    return y


@triton.jit
def _period_kernel(W1, W2, B1, B2, Q, K, V, ETA, DECAY, Y, W1_NEW, W2_NEW, B1_NEW, B2_NEW,
                   P, H, DI, DH, DO,
                   ACT: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DECAY: tl.constexpr,
                   BP: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    pid, b, h, ch, co = _program(H, BH, BO)
    w1, w2, b1, b2, at_w1, mask_w1, at_w2, mask_w2 = _load_state(W1, W2, B1, B2, pid, DI, DH, DO, HAS_BIAS,
                                                                 BI, BH, BO)
    g1, g2, g_b1, g_b2 = _zero_state(BI, BH, BO)
    for start in range(0, P, BP):
        q, k, v, eta, item, real, at_i, mask_i, at_o, mask_o = _load_items(Q, K, V, ETA, b, h, start, P, H, DI, DO,
                                                                           BP, BI, BO)
        # read before: the queries see the start state
        _, a_q, _ = _hidden(q, w2, b2, ACT)
        tl.store(Y + at_o, _out(q, a_q, w1, b1, RESIDUAL), mask=mask_o)

        # the η-weighted l2 gradient at the start state
        _, a_k, da_k = _hidden(k, w2, b2, ACT)
        r = eta[:, None] * (_out(k, a_k, w1, b1, RESIDUAL) - v)  # [BP, BO]
        delta = tl.dot(r, w1, input_precision=IEEE) * da_k  # [BP, BH]
        g1 += tl.dot(tl.trans(r), a_k, input_precision=IEEE)  # [BO, BH]
        g2 += tl.dot(tl.trans(delta), k, input_precision=IEEE)  # [BH, BI]
        g_b1 += tl.sum(r, 0)
        g_b2 += tl.sum(delta, 0)

    # gd: S' = α S − G
    if HAS_DECAY:
        alpha = tl.load(DECAY + pid).to(tl.float32)
    else:
        alpha = 1.0
    tl.store(W1_NEW + pid * DO * DH + at_w1, alpha * w1 - g1, mask=mask_w1)
    tl.store(W2_NEW + pid * DH * DI + at_w2, alpha * w2 - g2, mask=mask_w2)
    if HAS_BIAS:
        tl.store(B1_NEW + pid * DO + co, alpha * b1 - g_b1, mask=co < DO)
        tl.store(B2_NEW + pid * DH + ch, alpha * b2 - g_b2, mask=ch < DH)


@triton.jit
def _backward_kernel(W1, W2, B1, B2, Q, K, V, ETA, DECAY, DY, D_W1_NEW, D_W2_NEW, D_B1_NEW, D_B2_NEW,
                     D_W1, D_W2, D_B1, D_B2, DQ, DK, DV, DETA, DDECAY,
                     P, H, DI, DH, DO,
                     ACT: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DECAY: tl.constexpr,
                     BP: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    pid, b, h, ch, co = _program(H, BH, BO)
    w1, w2, b1, b2, at_w1, mask_w1, at_w2, mask_w2 = _load_state(W1, W2, B1, B2, pid, DI, DH, DO, HAS_BIAS,
                                                                 BI, BH, BO)
    # D: the gradients of S'; −D is what reaches G
    D1, D2, d1, d2, _, _, _, _ = _load_state(D_W1_NEW, D_W2_NEW, D_B1_NEW, D_B2_NEW, pid, DI, DH, DO, HAS_BIAS,
                                             BI, BH, BO)
    dw1, dw2, db1, db2 = _zero_state(BI, BH, BO)
    for start in range(0, P, BP):
        q, k, v, eta, item, real, at_i, mask_i, at_o, mask_o = _load_items(Q, K, V, ETA, b, h, start, P, H, DI, DO,
                                                                           BP, BI, BO)
        dy = tl.load(DY + at_o, mask=mask_o, other=0.0).to(tl.float32)

        # the read y = W1 σ(z) + b1 (+ q)
        _, a_q, da_q = _hidden(q, w2, b2, ACT)
        dz_q = tl.dot(dy, w1, input_precision=IEEE) * da_q  # [BP, BH]
        dq = tl.dot(dz_q, w2, input_precision=IEEE)
        if RESIDUAL:
            dq += dy
        dw1 += tl.dot(tl.trans(dy), a_q, input_precision=IEEE)
        dw2 += tl.dot(tl.trans(dz_q), q, input_precision=IEEE)
        db1 += tl.sum(dy, 0)
        db2 += tl.sum(dz_q, 0)

        # the gradient sums: recompute ζ, c, e, r, u, δ at the start state, then back
        zeta, c, dc_dz = _hidden(k, w2, b2, ACT)
        e = _out(k, c, w1, b1, RESIDUAL) - v  # [BP, BO]
        r = eta[:, None] * e
        u = tl.dot(r, w1, input_precision=IEEE)  # [BP, BH]
        delta = u * dc_dz
        d_delta = -tl.dot(k, tl.trans(D2), input_precision=IEEE) - d2[None, :]  # [BP, BH]
        du = d_delta * dc_dz
        dr = (tl.dot(du, tl.trans(w1), input_precision=IEEE) - tl.dot(c, tl.trans(D1), input_precision=IEEE)
              - d1[None, :])  # [BP, BO]
        de = eta[:, None] * dr
        dc = tl.dot(de, w1, input_precision=IEEE) - tl.dot(r, D1, input_precision=IEEE)  # [BP, BH]
        dzeta = dc * dc_dz + d_delta * u * _act_curvature(zeta, c, dc_dz, ACT)
        dk = tl.dot(dzeta, w2, input_precision=IEEE) - tl.dot(delta, D2, input_precision=IEEE)
        if RESIDUAL:
            dk += de
        dw1 += tl.dot(tl.trans(r), du, input_precision=IEEE) + tl.dot(tl.trans(de), c, input_precision=IEEE)
        dw2 += tl.dot(tl.trans(dzeta), k, input_precision=IEEE)
        db1 += tl.sum(de, 0)
        db2 += tl.sum(dzeta, 0)

        tl.store(DQ + at_i, dq, mask=mask_i)
        tl.store(DK + at_i, dk, mask=mask_i)
        tl.store(DV + at_o, -de, mask=mask_o)
        tl.store(DETA + item, tl.sum(dr * e, 1), mask=real)

    # S' = α S − G: α D into S, ⟨D, S⟩ into α
    if HAS_DECAY:
        alpha = tl.load(DECAY + pid).to(tl.float32)
        d_alpha = tl.sum(tl.sum(D1 * w1, 1), 0) + tl.sum(tl.sum(D2 * w2, 1), 0)
        if HAS_BIAS:
            d_alpha += tl.sum(d1 * b1, 0) + tl.sum(d2 * b2, 0)
        tl.store(DDECAY + pid, d_alpha)
    else:
        alpha = 1.0
    tl.store(D_W1 + pid * DO * DH + at_w1, alpha * D1 + dw1, mask=mask_w1)
    tl.store(D_W2 + pid * DH * DI + at_w2, alpha * D2 + dw2, mask=mask_w2)
    if HAS_BIAS:
        tl.store(D_B1 + pid * DO + co, alpha * d1 + db1, mask=co < DO)
        tl.store(D_B2 + pid * DH + ch, alpha * d2 + db2, mask=ch < DH)


def _sizes(W1, q, block: int) -> dict:
    """The kernels' block sizes: items (from `block`, no more than the period needs) and dimensions."""
    P, DI = q.shape[1], q.shape[3]
    DO, DH = W1.shape[-2:]
    return dict(BP=min(_block(block), _block(P)), BI=_block(DI), BH=_block(DH), BO=_block(DO))


def _launch(W1, W2, q, k, v, eta, decay, b1, b2, act: str, residual: bool, block: int):
    B, P, H, DI = q.shape
    DO, DH = W1.shape[-2:]
    has_bias = b1 is not None
    W1, W2, q, k, v, eta = (x.contiguous() for x in (W1, W2, q, k, v, eta))
    decay_c = decay.contiguous() if decay is not None else eta  # placeholders: never read
    b1c, b2c = (b1.contiguous(), b2.contiguous()) if has_bias else (eta, eta)
    y = torch.empty(B, P, H, DO, dtype=v.dtype, device=v.device)
    W1_new, W2_new = torch.empty_like(W1), torch.empty_like(W2)
    b1_new, b2_new = (torch.empty_like(b1c), torch.empty_like(b2c)) if has_bias else (W1_new, W2_new)
    _period_kernel[(B * H,)](W1, W2, b1c, b2c, q, k, v, eta, decay_c, y, W1_new, W2_new, b1_new, b2_new,
                             P, H, DI, DH, DO, ACT=act, RESIDUAL=residual, HAS_BIAS=has_bias,
                             HAS_DECAY=decay is not None, **_sizes(W1, q, block))
    return (y, W1_new, W2_new, b1_new, b2_new) if has_bias else (y, W1_new, W2_new)


def _launch_backward(inputs, grads, act: str, residual: bool, block: int):
    """The Triton backward: the gradients of (W1, W2, q, k, v, eta, decay, b1, b2), None
    for an input not given, from those of (y, W1', W2'[, b1', b2'])."""
    W1, W2, q, k, v, eta, decay, b1, b2 = inputs
    B, P, H, DI = q.shape
    DO, DH = W1.shape[-2:]
    has_bias, has_decay = b1 is not None, decay is not None
    W1, W2, q, k, v, eta = (x.contiguous() for x in (W1, W2, q, k, v, eta))
    decay_c = decay.contiguous() if has_decay else eta  # placeholders: never read nor written
    b1c, b2c = (b1.contiguous(), b2.contiguous()) if has_bias else (eta, eta)
    dy, dW1n, dW2n, *db_new = (g.contiguous() for g in grads)
    db1n, db2n = db_new if has_bias else (eta, eta)
    dW1, dW2, dq, dk, dv, deta = (torch.empty_like(x) for x in (W1, W2, q, k, v, eta))
    ddecay = torch.empty_like(decay_c) if has_decay else deta
    db1, db2 = (torch.empty_like(b1c), torch.empty_like(b2c)) if has_bias else (dW1, dW2)
    _backward_kernel[(B * H,)](W1, W2, b1c, b2c, q, k, v, eta, decay_c, dy, dW1n, dW2n, db1n, db2n,
                               dW1, dW2, db1, db2, dq, dk, dv, deta, ddecay,
                               P, H, DI, DH, DO, ACT=act, RESIDUAL=residual, HAS_BIAS=has_bias,
                               HAS_DECAY=has_decay, **_sizes(W1, q, block))
    return (dW1, dW2, dq, dk, dv, deta, ddecay if has_decay else None,
            db1 if has_bias else None, db2 if has_bias else None)


class _MlpPeriodUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W1, W2, q, k, v, eta, decay, b1, b2, act: str, residual: bool, block: int):
        # the inputs as given are kept for the backward: under create_graph the reference
        # differentiates them, and a contiguous copy made here would have no history
        ctx.save_for_backward(W1, W2, q, k, v, eta, decay, b1, b2)
        ctx.meta = (act, residual, block)
        return _launch(W1, W2, q, k, v, eta, decay, b1, b2, act, residual, block)

    @staticmethod
    def backward(ctx, *grads):
        act, residual, block = ctx.meta
        if torch.is_grad_enabled():  # create_graph: the Triton backward has no derivative; the reference's has
            def reference(W1, W2, q, k, v, eta, decay, b1, b2):
                return mlp_period_update_reference(W1, W2, q, k, v, eta, decay, act=act, residual=residual,
                                                   b1=b1, b2=b2)
            return (*differentiate(reference, ctx.saved_tensors, ctx.needs_input_grad[:9], grads), None, None, None)
        got = _launch_backward(ctx.saved_tensors, grads, act, residual, block)
        return (*(g if need else None for g, need in zip(got, ctx.needs_input_grad)), None, None, None)


def mlp_period_update(W1: torch.Tensor, W2: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      eta: torch.Tensor, decay: torch.Tensor | None, *, act: str = DEFAULT_ACTIVATION, residual: bool,
                      b1: torch.Tensor | None = None, b2: torch.Tensor | None = None, block: int = 64):
    """The reads of a period at its start state, and the state after its gd step on
    l2 (see the module docstring); differentiable in every input. W1 [B, h, o, k],
    W2 [B, h, k, i]; q, k [B, P, h, i]; v [B, P, h, o]; eta [B, P, h]; decay [B, h]
    or None. Returns (y [B, P, h, o], W1_new, W2_new), and b1_new, b2_new after them
    when the biases are given. `block`: the items the program takes at a time
    (rounded up to a power of two ≥ 16); it changes rounding only."""
    if act not in ACTS:
        raise ValueError(f"mlp_period_update: unknown activation {act!r} (one of {', '.join(ACTS)})")
    if (b1 is None) != (b2 is None):
        raise ValueError("mlp_period_update: give both biases b1 and b2, or neither")
    if residual and q.shape[-1] != v.shape[-1]:
        raise ValueError(f"mlp_period_update: a residual memory needs i == o, got {q.shape[-1]} and {v.shape[-1]}")
    return _MlpPeriodUpdate.apply(W1, W2, q, k, v, eta, decay, b1, b2, act, bool(residual), int(block))


def mlp_period_update_reference(W1, W2, q, k, v, eta, decay, *, act: str = DEFAULT_ACTIVATION, residual: bool, b1=None, b2=None):
    """`mlp_period_update` in PyTorch: naive.forward for the read, memories.grads
    for Σ η ∇ℓ, rules.apply_rule for the gd step."""
    theta = {"W1": W1, "W2": W2}
    if b1 is not None:
        theta.update(b1=b1, b2=b2)
    heads = q.shape[2]
    y = forward(theta, q, act, residual)[0]
    acc = memories.grads("mlp", "l2", theta, merge_heads(k), merge_heads(v), eta, heads, act, residual)
    new, _ = apply_rule("gd", theta, None, acc, decay)
    out = (y, new["W1"], new["W2"])
    return out + (new["b1"], new["b2"]) if b1 is not None else out
