"""Memories: their initial states, how they are read, and the gradients of their
inner objectives (design §2, §4).

A parametric memory's state θ is a dict of tensors with a leading batch dimension
(one fast state per sequence, design §2): `linear` W [B, h, o, i]; `mlp` W2
[B, h, k, i], W1 [B, h, o, k] (+ b2 [B, h, k], b1 [B, h, o]). Keys, values and
queries are split per head: [B, n, h, i]. A state may also be *per item*, one per
token [B, n, h, ...]: the states a `read within` sees.

Gradients are in closed form (the sums a backward pass would compute, written out),
so they are ordinary differentiable tensors: the outer gradient flows through the
inner updates to θ₀ with no double backward, and they work under `no_grad`. A test
holds them equal to autograd.
"""
from __future__ import annotations

import math

import torch

from .ops import ACT, ACT_GRAD


# --------------------------------------------------------------- initial states
def initial_state(kind: str, shapes: dict[str, tuple[int, ...]], init: str, generator=None) -> dict[str, torch.Tensor]:
    """θ₀ of one memory (no batch dimension). `normal` draws N(0, 1/fan_in), the
    scale that keeps a read's output at the size of its input."""
    out = {}
    for name, shape in shapes.items():
        if name.startswith("b") or init == "zeros":
            t = torch.zeros(shape)
        elif init == "ones":
            t = torch.ones(shape)
        elif init == "identity":
            t = torch.eye(shape[-2], shape[-1]).expand(shape).clone()
        else:  # normal
            t = torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
        out[name] = t
    return out


def batched(theta: dict, batch: int) -> dict:
    """θ₀ [h, ...] as a fast state [B, h, ...]: every sequence starts from it."""
    return {k: v.unsqueeze(0).expand(batch, *v.shape) for k, v in theta.items()}


# ------------------------------------------------------------------- reading
def split_heads(e: torch.Tensor, h: int) -> torch.Tensor:
    return e.reshape(*e.shape[:-1], h, e.shape[-1] // h)


def merge_heads(e: torch.Tensor) -> torch.Tensor:
    return e.reshape(*e.shape[:-2], e.shape[-2] * e.shape[-1])


def _mm(W: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """W e for a state W [B, h, o, i] or per-item states [B, n, h, o, i]; e [B, n, h, i]."""
    if W.dim() == 4:
        return torch.einsum("bhoi,bnhi->bnho", W, e)
    return torch.einsum("bnhoi,bnhi->bnho", W, e)


def _bias(b: torch.Tensor, n_dims: int) -> torch.Tensor:
    return b.unsqueeze(1) if b.dim() == n_dims - 1 else b


def mlp_forward(theta: dict, e: torch.Tensor, act: str, residual: bool):
    """W1 σ(W2 e + b2) + b1 (+ e), per head. Returns (y, z, σ(z))."""
    z = _mm(theta["W2"], e)
    if "b2" in theta:
        z = z + _bias(theta["b2"], 4)
    a = ACT[act](z)
    y = _mm(theta["W1"], a)
    if "b1" in theta:
        y = y + _bias(theta["b1"], 4)
    if residual:
        y = y + e
    return y, z, a


def read(kind: str, theta: dict, e: torch.Tensor, heads: int, act: str = "silu", residual: bool = False):
    """M(e) for a token stream e [B, n, d_in] -> [B, n, d_out], at one state per
    sequence or at each item's own state (per-item θ)."""
    e = split_heads(e, heads)
    if kind == "linear":
        y = _mm(theta["W"], e)
    else:
        y = mlp_forward(theta, e, act, residual)[0]
    return merge_heads(y)


def as_rate(r, batch: int, n: int, heads: int, like: torch.Tensor) -> torch.Tensor:
    """A rate (a number, a learned scalar, or one value per item or per item and
    head) as [B, n, h]."""
    r = torch.as_tensor(r, dtype=like.dtype, device=like.device)
    if r.dim() == 3:  # [B, n, 1 | h], a per-item flow
        return r.expand(batch, n, heads)
    return r.reshape(-1)[0].expand(batch, n, heads) if r.numel() == 1 else r.expand(batch, n, heads)


# ----------------------------------------------------------------- gradients
def _outer(r: torch.Tensor, e: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Σ_n r eᵀ per head ([B, h, o, i]), or each item's r eᵀ ([B, n, h, o, i])."""
    if per_item:
        return torch.einsum("bnho,bnhi->bnhoi", r, e)
    return torch.einsum("bnho,bnhi->bhoi", r, e)


def grads(kind: str, objective: str, theta: dict, key, value, rate, heads: int, act: str = "silu",
          residual: bool = False, per_item: bool = False) -> dict:
    """η-weighted gradients of the inner objective at θ over the items of a chunk:
    Σ_i η_i ∇_θ ℓ(θ; k_i, v_i), or each item's term (per_item). key [B, n, d_in],
    value [B, n, d_out], rate [B, n, h]. The value is a constant of the inner problem
    (design §4): it enters as given, whatever produced it."""
    k, v = split_heads(key, heads), split_heads(value, heads)
    w = rate.unsqueeze(-1)
    if kind == "linear":
        r = _mm(theta["W"], k) - v if objective == "l2" else -v
        return {"W": _outer(w * r, k, per_item)}
    y, z, a = mlp_forward(theta, k, act, residual)
    r = w * (y - v if objective == "l2" else -v)  # ∂ℓ/∂y, weighted
    dz = torch.einsum("bhok,bnho->bnhk", theta["W1"], r) * ACT_GRAD[act](z)
    out = {"W2": _outer(dz, k, per_item), "W1": _outer(r, a, per_item)}
    if "b2" in theta:
        out["b2"] = dz if per_item else dz.sum(1)
        out["b1"] = r if per_item else r.sum(1)
    return out


def implicit_stats(key, value, rate, heads: int, per_item: bool = False) -> dict:
    """The sums the exact proximal step of a linear memory on l2 needs (design §5):
    Σ η v kᵀ and Σ η k kᵀ, per head."""
    k, v = split_heads(key, heads), split_heads(value, heads)
    w = rate.unsqueeze(-1)
    return {"VK": _outer(w * v, k, per_item), "KK": _outer(w * k, k, per_item)}


def implicit_solve(W: torch.Tensor, VK: torch.Tensor, KK: torch.Tensor) -> torch.Tensor:
    """argmin_X Σ η_i/2 ‖X k_i − v_i‖² + ½‖X − W‖² = (W + Σ η v kᵀ)(I + Σ η k kᵀ)⁻¹."""
    eye = torch.eye(KK.shape[-1], dtype=KK.dtype, device=KK.device)
    # X A = B  <=>  Aᵀ Xᵀ = Bᵀ, and A is symmetric
    return torch.linalg.solve(eye + KK, (W + VK).transpose(-1, -2)).transpose(-1, -2)


# ---------------------------------------------------------------- attention
def attention(q, K, V, q_pos, k_pos, bound_within: bool, period: int, window: int | None, heads: int):
    """Causal softmax attention of queries q [B, n, d] at absolute positions q_pos [n]
    over stored keys/values K, V [B, L, d] at positions k_pos [L] (design §2).

    A key at s is visible to the query at t when s < bound, with bound = t + 1 for
    `read within` and the start of t's period for `read before`; with a window c,
    only the last c items of that state are: s ≥ bound − c. A query that sees
    nothing reads zeros."""
    bound = q_pos + 1 if bound_within else (q_pos // period) * period
    visible = k_pos[None, :] < bound[:, None]
    if window is not None:
        visible = visible & (k_pos[None, :] >= bound[:, None] - window)
    qh, kh, vh = (split_heads(t, heads).transpose(1, 2) for t in (q, K, V))  # [B, h, n|L, dh]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    seen = visible.any(-1, keepdim=True)  # a row with no visible key reads zeros, not NaN
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)
    p = torch.softmax(scores, dim=-1) * seen
    return merge_heads((p @ vh).transpose(1, 2))
