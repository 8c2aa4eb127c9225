"""One period of a 2-layer MLP memory on l2, by gd or momentum, as one autograd node:
the read of the period's queries, the gradient of its items and the update rule,
with the backward written out (the fused path's loop over periods, runtime/fused.py).

Autograd's replay of the same ops pays for every elementwise op on a state-sized
tensor, and on this kind of CPU such a pass over a fresh tensor costs as much as a
small matmul. The written backward makes fewer of them: products that add into one
tensor are one batched matmul over concatenated items (`baddbmm`), and the read and
the gradient share one forward of the MLP over keys and queries together.

Head-major tensors (runtime/headmajor.py): states W1 [B, h, o, k], W2 [B, h, k, i];
keys and queries [B, h, n, i], values [B, h, n, o], rates w [B, h, n, 1], the
period's decay α and momentum β [B, h, 1, 1] or None. For item j, with
z = W2 k_j, a = σ(z), y = W1 a (+ k_j), r = w_j (y − v_j), h = W1ᵀ r:

    ∇W1 = Σ r aᵀ,  ∇W2 = Σ (h ⊙ σ'(z)) k_jᵀ
    gd        W' = α W − ∇W
    momentum  Z' = β Z − ∇W;  W' = α W + Z'

The backward is itself differentiable (a task level above takes the gradient of a
gradient through it): under create_graph it recomputes the forward's intermediates
from the inputs with autograd on, so the second derivative sees them. Tests hold
both orders to autograd over the plain formulas (memory.py, level.apply_rule)."""
from __future__ import annotations

import math

import torch

from .ops import ACT, ACT_GRAD


def _act2(act: str, z):
    """σ''(z)."""
    if act == "silu":
        s = torch.sigmoid(z)
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    if act == "gelu":
        return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2 - z * z)
    if act == "tanh":
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)
    if act == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s) * (1 - 2 * s)
    return torch.zeros_like(z)  # relu, identity


def _act(act: str, zx, n: int):
    """σ(z) of every row, and σ'(z) of the first n (the keys'), sharing what they can."""
    if act == "silu":  # σ' = s + a (1 − s), with s the sigmoid and a = z s
        s = torch.sigmoid(zx)
        ax = zx * s
        return ax, s[:, :, :n] + ax[:, :, :n] * (1 - s[:, :, :n])
    ax = ACT[act](zx)
    if act in ("sigmoid", "tanh"):  # σ' from σ
        a = ax[:, :, :n]
        return ax, a * (1 - a) if act == "sigmoid" else 1 - a * a
    return ax, ACT_GRAD[act](zx[:, :, :n])


def _addmm(C, A, B, alpha: float = 1.0):
    """C + alpha · A @ B over batch dims [B, h]: one baddbmm, one pass over C."""
    out = torch.baddbmm(C.reshape(-1, *C.shape[-2:]), A.reshape(-1, *A.shape[-2:]),
                        B.reshape(-1, *B.shape[-2:]), alpha=alpha)
    return out.view(*A.shape[:-2], *out.shape[-2:])


def _dot(a, b):
    """⟨a, b⟩ per batch and head, [B, h, 1, 1]."""
    return (a * b).sum((-2, -1), keepdim=True)


def _forward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act, residual):
    """The period's read and update, and what the backward needs."""
    n = k.shape[2]
    x = k if q is None else torch.cat([k, q], 2)  # keys and queries read at the same state
    zx = x @ W2.mT
    ax, ds = _act(act, zx, n)  # the queries' σ' only in the backward: a read needs none
    yx = ax @ W1.mT
    if residual:
        yx = yx + x
    a, y = ax[:, :, :n], yx[:, :, :n]
    e = y - v
    r = w * e
    h = r @ W1
    dz = h * ds
    news = []
    for W, Z, (left, right) in ((W1, Z1, (r, a)), (W2, Z2, (dz, k))):
        base = W if alpha is None else alpha * W
        if Z is None:  # gd
            news.append((_addmm(base, left.mT, right, -1.0), None))
        else:
            Zn = _addmm(Z if beta is None else beta * Z, left.mT, right, -1.0)
            news.append((Zn + W if alpha is None else torch.addcmul(Zn, alpha, W), Zn))
    yq = None if q is None else yx[:, :, n:]
    parts = dict(x=x, zx=zx, ax=ax, e=e, r=r, h=h, ds=ds, dz=dz)
    return yq, news, parts


class _MLPPeriod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act: str, residual: bool):
        yq, ((W1n, Z1n), (W2n, Z2n)), parts = _forward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act, residual)
        ctx.act, ctx.residual, ctx.n = act, residual, k.shape[2]
        ctx.has = (Z1 is not None, q is not None, alpha is not None, beta is not None)
        ctx.save_for_backward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, *(parts[p] for p in _SAVED))
        outs = (W1n, W2n) + ((Z1n, Z2n) if Z1 is not None else ()) + ((yq,) if q is not None else ())
        return outs

    @staticmethod
    def backward(ctx, *grads):
        W1, W2, Z1, Z2, k, v, q, w, alpha, beta, *saved = ctx.saved_tensors
        momentum, read, _, _ = ctx.has
        if torch.is_grad_enabled():  # create_graph: the intermediates as functions of the inputs
            parts = _forward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, ctx.act, ctx.residual)[2]
        else:
            parts = dict(zip(_SAVED, saved))
        gW1n, gW2n, *grads = grads
        gZ1n, gZ2n = (grads.pop(0), grads.pop(0)) if momentum else (None, None)
        gyq = grads.pop(0) if read else None
        return _backward(ctx, W1, W2, Z1, Z2, k, q, w, alpha, beta, parts, gW1n, gW2n, gZ1n, gZ2n, gyq)


_SAVED = ("x", "zx", "ax", "e", "r", "h", "ds", "dz")


def _backward(ctx, W1, W2, Z1, Z2, k, q, w, alpha, beta, p, gW1n, gW2n, gZ1n, gZ2n, gyq):
    n, act = ctx.n, ctx.act
    x, zx, ax, e, r, h, ds, dz = (p[name] for name in _SAVED)
    z = zx[:, :, :n]
    # the rule: N = ∂/∂(−∇W), what reaches the period's gradient
    N1, N2 = (gW1n, gW2n) if Z1 is None else (gZ1n + gW1n, gZ2n + gW2n)
    g_alpha = None if alpha is None else _dot(gW1n, W1) + _dot(gW2n, W2)
    g_beta = None if beta is None or Z1 is None else _dot(N1, Z1) + _dot(N2, Z2)
    dW1, dW2 = (gW1n, gW2n) if alpha is None else (alpha * gW1n, alpha * gW2n)
    gZ1 = gZ2 = None
    if Z1 is not None:
        gZ1, gZ2 = (N1, N2) if beta is None else (beta * N1, beta * N2)
    # ∇W1 = rᵀ a and ∇W2 = dzᵀ k, entering with −N
    gr = -(ax[:, :, :n] @ N1.mT)
    ga = -(r @ N1)
    gdz = -(k @ N2.mT)
    gk = -(dz @ N2)
    # dz = h ⊙ σ'(z), h = r W1
    gh = gdz * ds
    gz = gdz * h * _act2(act, z)
    gr = gr + gh @ W1.mT
    # r = w (y − v)
    ge = w * gr
    gw = (gr * e).sum(-1, keepdim=True)
    # the MLP over keys (gradient ge) and queries (gradient gyq) at once
    gyx = ge if gyq is None else torch.cat([ge, gyq], 2)
    pad = gyx.shape[2] - n
    gax = gyx @ W1 + _pad(ga, pad)
    dsx = ds if pad == 0 else torch.cat([ds, ACT_GRAD[act](zx[:, :, n:])], 2)
    gzx = gax * dsx + _pad(gz, pad)
    gx = gzx @ W2
    if ctx.residual:
        gx = gx + gyx
    gW1 = _addmm(dW1, torch.cat([gyx, r], 2).mT, torch.cat([ax, gh], 2))
    gW2 = _addmm(dW2, gzx.mT, x)
    gk = gk + gx[:, :, :n]
    gq = None if q is None else gx[:, :, n:]
    return gW1, gW2, gZ1, gZ2, gk, -ge, gq, gw, g_alpha, g_beta, None, None


def _pad(t, extra: int):
    """t [B, h, n, d] with `extra` zero rows after it."""
    return t if extra == 0 else torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], 2)


def mlp_period(theta: dict, z: dict | None, k, v, q, w, alpha=None, beta=None, *, act: str = "silu",
               residual: bool = False):
    """One period. theta {W1, W2}, z its momentum ({W1, W2}) or None for gd; q None when
    the memory is not read. Returns (y [B, h, m, o] or None, theta', z')."""
    Z1, Z2 = (None, None) if z is None else (z["W1"], z["W2"])
    outs = _MLPPeriod.apply(theta["W1"], theta["W2"], Z1, Z2, k, v, q, w, alpha, beta, act, bool(residual))
    W1n, W2n, *rest = outs
    new = {"W1": W1n, "W2": W2n}
    zn = None
    if z is not None:
        zn, rest = {"W1": rest[0], "W2": rest[1]}, rest[2:]
        zn = {name: zn[name] for name in z}
    return (rest[0] if q is not None else None), {name: new[name] for name in theta}, zn  # the keys in θ's order
