"""An mlp memory's forward and gradients on the fused path: naive.py's formulas laid
out head-major, [B, h, n, d] and contiguous (memories/layout.py), so that every product
is one batched matmul whose result is contiguous, and every elementwise op after it
runs on contiguous tensors. naive.py's token-major einsums leave their results
permuted, and an elementwise op on a permuted tensor ran 4-5x slower than on a
contiguous one here (docs/performance.md). naive.py stays the reference; tests hold
the two equal (tests/test_period.py).

Only states per sequence (θ [B, h, ...]) are laid out anew; per-item states (a
`read within`) keep the reference's formulas (memories.read, memories.grads).
"""
from __future__ import annotations

import torch

from ...ops import ACT, act_vjp
from ..layout import transposed
from ..norm import headmajor, output, through


def forward(theta: dict, e: torch.Tensor, act: str, residual: bool, norm: tuple | None = None):
    """W1 σ(W2 e + b2) + b1, through its layer norm, plus e with `residual`, for e
    [B, h, n, i]; `norm` head-major (norm.headmajor). Returns (y, z, σ(z), the norm's ŷ and 1/σ or None)."""
    z = e @ transposed(theta["W2"])
    if "b2" in theta:
        z = z + theta["b2"].unsqueeze(-2)
    a = ACT[act](z)
    y = a @ transposed(theta["W1"])
    if "b1" in theta:
        y = y + theta["b1"].unsqueeze(-2)
    y, ln = output(y, e, residual, norm)
    return y, z, a, ln


def read(theta: dict, x: torch.Tensor, act: str, residual: bool, norm: tuple | None = None) -> torch.Tensor:
    return forward(theta, x, act, residual, headmajor(norm))[0]


def grads(objective: str, theta: dict, k, v, w, act: str, residual: bool, norm: tuple | None = None) -> dict:
    """Σ_i w_i ∇_θ ℓ(θ; k_i, v_i): k [B, h, n, i], v [B, h, n, o], w [B, h, n, 1]."""
    norm = headmajor(norm)
    y, z, a, ln = forward(theta, k, act, residual, norm)
    r = through(w * (y - v) if objective == "l2" else -(w * v), ln, norm)  # ∂ℓ/∂(W1 a + b1), weighted
    dz = act_vjp(act, r @ theta["W1"], z)
    out = {"W2": transposed(dz) @ k, "W1": transposed(r) @ a}
    if "b2" in theta:
        out["b2"], out["b1"] = dz.sum(2), r.sum(2)
    return out
