"""A linear memory, the reference (design §2, §4, §5): its read W e and the closed-form
gradient of its inner objective, token-major (memories/layout.py), and the sums and
solve of the exact proximal step (`implicit`), the one rule only this kind takes."""
from __future__ import annotations

import torch

from ..layout import mm, outer, split_heads
from ..norm import output, through


def read(theta: dict, e: torch.Tensor, act: str, residual: bool, norm: tuple | None = None) -> torch.Tensor:
    """W e per head, e [B, n, h, i], through its layer norm with `norm` (memories/norm.py),
    plus e with `residual`; a linear memory has no activation."""
    return output(mm(theta["W"], e), e, residual, norm)[0]


def grads(objective: str, theta: dict, k, v, w, act: str, residual: bool, per_item: bool,
          norm: tuple | None = None) -> dict:
    """Σ_i w_i ∇_W ℓ(W; k_i, v_i) per head (or each item's term): k [B, n, h, i],
    v [B, n, h, o], w [B, n, h, 1]."""
    if objective == "dot" and norm is None:  # ∂ℓ/∂y = −v, whatever W is
        return {"W": outer(-(w * v), k, per_item)}
    y, ln = output(mm(theta["W"], k), k, residual, norm)
    r = through(w * (y - v) if objective == "l2" else -(w * v), ln, norm)
    return {"W": outer(r, k, per_item)}


def implicit_stats(key, value, rate, heads: int, per_item: bool = False) -> dict:
    """The sums the exact proximal step of a linear memory on l2 needs (design §5):
    Σ η v kᵀ and Σ η k kᵀ, per head."""
    k, v = split_heads(key, heads), split_heads(value, heads)
    w = rate.unsqueeze(-1)
    return {"VK": outer(w * v, k, per_item), "KK": outer(w * k, k, per_item)}


def implicit_solve(W: torch.Tensor, VK: torch.Tensor, KK: torch.Tensor) -> torch.Tensor:
    """argmin_X Σ η_i/2 ‖X k_i − v_i‖² + ½‖X − W‖² = (W + Σ η v kᵀ)(I + Σ η k kᵀ)⁻¹."""
    eye = torch.eye(KK.shape[-1], dtype=KK.dtype, device=KK.device)
    # X A = B  <=>  Aᵀ Xᵀ = Bᵀ, and A is symmetric
    return torch.linalg.solve(eye + KK, (W + VK).transpose(-1, -2)).transpose(-1, -2)
