"""Reads and gradients of memories on the fused path: memory.py's formulas laid out
head-major, [B, h, n, d] and contiguous, so that every product is one batched matmul
whose result is contiguous, and every elementwise op after it runs on contiguous
tensors. memory.py's token-major einsums leave their results permuted, and an
elementwise op on a permuted tensor ran 4-5x slower than on a contiguous one here
(docs/performance.md). memory.py stays the reference; tests hold the two equal.

The same signatures as memory.py's `read` and `grads` (token streams [B, n, d] in and
out). Only states per sequence (θ [B, h, ...]) are laid out anew; per-item states (a
`read within`) go to memory.py.
"""
from __future__ import annotations

import torch

from . import memory as M
from .ops import ACT, act_vjp


def heads(e: torch.Tensor, h: int) -> torch.Tensor:
    """A token stream [B, n, h·d] as [B, h, n, d], contiguous."""
    B, n, _ = e.shape
    return e.reshape(B, n, h, -1).transpose(1, 2).contiguous()


def tokens(y: torch.Tensor) -> torch.Tensor:
    """[B, h, n, d] back as a token stream [B, n, h·d]."""
    B, h, n, d = y.shape
    return y.transpose(1, 2).reshape(B, n, h * d)


def _t(W: torch.Tensor) -> torch.Tensor:
    return W.transpose(-1, -2)


def mlp_forward(theta: dict, e: torch.Tensor, act: str, residual: bool):
    """W1 σ(W2 e + b2) + b1 (+ e) for e [B, h, n, i]. Returns (y, z, σ(z))."""
    z = e @ _t(theta["W2"])
    if "b2" in theta:
        z = z + theta["b2"].unsqueeze(-2)
    a = ACT[act](z)
    y = a @ _t(theta["W1"])
    if "b1" in theta:
        y = y + theta["b1"].unsqueeze(-2)
    if residual:
        y = y + e
    return y, z, a


def _per_sequence(theta: dict) -> bool:
    return next(iter(theta.values())).dim() == 4


def read(kind: str, theta: dict, e: torch.Tensor, h: int, act: str = "silu", residual: bool = False):
    """memory.read."""
    if not _per_sequence(theta):
        return M.read(kind, theta, e, h, act, residual)
    x = heads(e, h)
    y = x @ _t(theta["W"]) if kind == "linear" else mlp_forward(theta, x, act, residual)[0]
    return tokens(y)


def grads(kind: str, objective: str, theta: dict, key, value, rate, h: int, act: str = "silu",
          residual: bool = False, per_item: bool = False) -> dict:
    """memory.grads: Σ_i η_i ∇_θ ℓ(θ; k_i, v_i) over a chunk's items, rate [B, n, h]."""
    if per_item or not _per_sequence(theta):
        return M.grads(kind, objective, theta, key, value, rate, h, act, residual, per_item)
    k, v = heads(key, h), heads(value, h)
    w = rate.transpose(1, 2).unsqueeze(-1).contiguous()  # [B, h, n, 1]
    if kind == "linear":
        r = w * (k @ _t(theta["W"]) - v) if objective == "l2" else -(w * v)
        return {"W": _t(r) @ k}
    y, z, a = mlp_forward(theta, k, act, residual)
    r = w * (y - v) if objective == "l2" else -(w * v)  # ∂ℓ/∂y, weighted
    dz = act_vjp(act, r @ theta["W1"], z)
    out = {"W2": _t(dz) @ k, "W1": _t(r) @ a}
    if "b2" in theta:
        out["b2"], out["b1"] = dz.sum(2), r.sum(2)
    return out
