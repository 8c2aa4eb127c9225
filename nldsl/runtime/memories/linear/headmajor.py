"""A linear memory's read and gradient on the fused path: naive.py's formulas on
head-major tensors (memories/layout.py), states per sequence only. Tests hold the two
equal (tests/test_period.py)."""
from __future__ import annotations

import torch

from ..layout import transposed
from ..norm import headmajor, output, through


def read(theta: dict, x: torch.Tensor, act: str, residual: bool, norm: tuple | None = None) -> torch.Tensor:
    """W x per head, x [B, h, n, i] (through its layer norm, plus x with `residual`)."""
    return output(x @ transposed(theta["W"]), x, residual, headmajor(norm))[0]


def grads(objective: str, theta: dict, k, v, w, act: str, residual: bool, norm: tuple | None = None) -> dict:
    """Σ_i w_i ∇_W ℓ(W; k_i, v_i): k [B, h, n, i], v [B, h, n, o], w [B, h, n, 1]."""
    if objective == "dot" and norm is None:
        return {"W": transposed(-(w * v)) @ k}
    norm = headmajor(norm)
    y, ln = output(k @ transposed(theta["W"]), k, residual, norm)
    r = through(w * (y - v) if objective == "l2" else -(w * v), ln, norm)
    return {"W": transposed(r) @ k}
