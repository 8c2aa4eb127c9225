"""An mlp memory, the reference (design §2, §4): its forward and the closed-form
gradients of its inner objective, token-major (memories/layout.py).

States W2 [B, h, k, i], W1 [B, h, o, k] (+ b2 [B, h, k], b1 [B, h, o]), or one per item
([B, n, h, ...]) for a `read within`."""
from __future__ import annotations

import torch

from ...ops import ACT, ACT_GRAD
from ..layout import mm, outer
from ..norm import output, through


def _bias(b: torch.Tensor, n_dims: int) -> torch.Tensor:
    return b.unsqueeze(1) if b.dim() == n_dims - 1 else b


def forward(theta: dict, e: torch.Tensor, act: str, residual: bool, norm: tuple | None = None):
    """W1 σ(W2 e + b2) + b1, through its layer norm with `norm` (memories/norm.py), plus e
    with `residual`, per head, e [B, n, h, i]. Returns (y, z, σ(z), the norm's ŷ and 1/σ or None)."""
    z = mm(theta["W2"], e)
    if "b2" in theta:
        z = z + _bias(theta["b2"], 4)
    a = ACT[act](z)
    y = mm(theta["W1"], a)
    if "b1" in theta:
        y = y + _bias(theta["b1"], 4)
    y, ln = output(y, e, residual, norm)
    return y, z, a, ln


def read(theta: dict, e: torch.Tensor, act: str, residual: bool, norm: tuple | None = None) -> torch.Tensor:
    return forward(theta, e, act, residual, norm)[0]


def grads(objective: str, theta: dict, k, v, w, act: str, residual: bool, per_item: bool,
          norm: tuple | None = None) -> dict:
    """Σ_i w_i ∇_θ ℓ(θ; k_i, v_i) per head (or each item's term): k [B, n, h, i],
    v [B, n, h, o], w [B, n, h, 1]."""
    y, z, a, ln = forward(theta, k, act, residual, norm)
    r = through(w * (y - v if objective == "l2" else -v), ln, norm)  # ∂ℓ/∂(W1 a + b1), weighted
    dz = torch.einsum("bhok,bnho->bnhk", theta["W1"], r) * ACT_GRAD[act](z)
    out = {"W2": outer(dz, k, per_item), "W1": outer(r, a, per_item)}
    if "b2" in theta:
        out["b2"] = dz if per_item else dz.sum(1)
        out["b1"] = r if per_item else r.sum(1)
    return out
