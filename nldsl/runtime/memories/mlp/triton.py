"""One period of a 2-layer mlp memory in Triton: the read, the gradient and the gd
step fused into one program per (sequence b, head h).

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

The kernel is forward only. Its backward recomputes the period in PyTorch with
the reference and differentiates that (`kernels.differentiate`), so gradients are
right, to any order, not fast.
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
def _period_kernel(W1, W2, B1, B2, Q, K, V, ETA, DECAY, Y, W1_NEW, W2_NEW, B1_NEW, B2_NEW,
                   P, H, DI, DH, DO,
                   ACT: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DECAY: tl.constexpr,
                   BP: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (b, h)
    b, h = pid // H, pid % H
    ci, ch, co = tl.arange(0, BI), tl.arange(0, BH), tl.arange(0, BO)

    # the state at the period's start; past the true sizes everything is 0
    at_w2, mask_w2 = ch[:, None] * DI + ci[None, :], (ch[:, None] < DH) & (ci[None, :] < DI)
    at_w1, mask_w1 = co[:, None] * DH + ch[None, :], (co[:, None] < DO) & (ch[None, :] < DH)
    w2 = tl.load(W2 + pid * DH * DI + at_w2, mask=mask_w2, other=0.0).to(tl.float32)  # [BH, BI]
    w1 = tl.load(W1 + pid * DO * DH + at_w1, mask=mask_w1, other=0.0).to(tl.float32)  # [BO, BH]
    if HAS_BIAS:
        b2 = tl.load(B2 + pid * DH + ch, mask=ch < DH, other=0.0).to(tl.float32)
        b1 = tl.load(B1 + pid * DO + co, mask=co < DO, other=0.0).to(tl.float32)
    else:
        b2 = tl.zeros([BH], dtype=tl.float32)
        b1 = tl.zeros([BO], dtype=tl.float32)

    # the period's items, a block of BP at a time; a padded item has η = 0, so it adds
    # nothing to the gradient
    g1 = tl.zeros([BO, BH], dtype=tl.float32)
    g2 = tl.zeros([BH, BI], dtype=tl.float32)
    g_b1 = tl.zeros([BO], dtype=tl.float32)
    g_b2 = tl.zeros([BH], dtype=tl.float32)
    for start in range(0, P, BP):
        t = start + tl.arange(0, BP)
        real = t < P
        item = (b * P + t) * H + h  # offset of (b, t, h) in a [B, P, H] tensor
        mask_i, mask_o = real[:, None] & (ci[None, :] < DI), real[:, None] & (co[None, :] < DO)
        at_i, at_o = item[:, None] * DI + ci[None, :], item[:, None] * DO + co[None, :]
        q = tl.load(Q + at_i, mask=mask_i, other=0.0).to(tl.float32)
        k = tl.load(K + at_i, mask=mask_i, other=0.0).to(tl.float32)
        v = tl.load(V + at_o, mask=mask_o, other=0.0).to(tl.float32)
        eta = tl.load(ETA + item, mask=real, other=0.0).to(tl.float32)

        # read before: the queries see the start state
        a_q, _ = _act(tl.dot(q, tl.trans(w2), input_precision=IEEE) + b2[None, :], ACT)
        y = tl.dot(a_q, tl.trans(w1), input_precision=IEEE) + b1[None, :]
        if RESIDUAL:
            y += q  # residual needs i == o, so BI == BO
        tl.store(Y + at_o, y, mask=mask_o)

        # the η-weighted l2 gradient at the start state
        a_k, da_k = _act(tl.dot(k, tl.trans(w2), input_precision=IEEE) + b2[None, :], ACT)
        y_k = tl.dot(a_k, tl.trans(w1), input_precision=IEEE) + b1[None, :]
        if RESIDUAL:
            y_k += k
        r = eta[:, None] * (y_k - v)  # [BP, BO]
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
                             HAS_DECAY=decay is not None,
                             BP=min(_block(block), _block(P)), BI=_block(DI), BH=_block(DH), BO=_block(DO))
    return (y, W1_new, W2_new, b1_new, b2_new) if has_bias else (y, W1_new, W2_new)


class _MlpPeriodUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W1, W2, q, k, v, eta, decay, b1, b2, act: str, residual: bool, block: int):
        ctx.save_for_backward(W1, W2, q, k, v, eta, decay, b1, b2)
        ctx.meta = (act, residual)
        return _launch(W1, W2, q, k, v, eta, decay, b1, b2, act, residual, block)

    @staticmethod
    def backward(ctx, *grads):
        # recompute the period with the PyTorch reference and differentiate it
        act, residual = ctx.meta

        def reference(W1, W2, q, k, v, eta, decay, b1, b2):
            return mlp_period_update_reference(W1, W2, q, k, v, eta, decay, act=act, residual=residual, b1=b1, b2=b2)
        return (*differentiate(reference, ctx.saved_tensors, ctx.needs_input_grad[:9], grads), None, None, None)


def mlp_period_update(W1: torch.Tensor, W2: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      eta: torch.Tensor, decay: torch.Tensor | None, *, act: str = DEFAULT_ACTIVATION, residual: bool,
                      b1: torch.Tensor | None = None, b2: torch.Tensor | None = None, block: int = 64):
    """The reads of a period at its start state, and the state after its gd step on
    l2 (see the module docstring). W1 [B, h, o, k], W2 [B, h, k, i]; q, k [B, P, h, i];
    v [B, P, h, o]; eta [B, P, h]; decay [B, h] or None. Returns (y [B, P, h, o],
    W1_new, W2_new), and b1_new, b2_new after them when the biases are given.
    `block`: the items the program takes at a time (rounded up to a power of two ≥ 16)."""
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
