"""A linear memory's read and gradient on the fused path: naive.py's formulas on
head-major tensors (memories/layout.py), states per sequence only. Tests hold the two
equal (tests/test_period.py)."""
from __future__ import annotations

import torch

from ..layout import transposed


def read(theta: dict, x: torch.Tensor, act: str, residual: bool) -> torch.Tensor:
    """W x per head, x [B, h, n, i]."""
    return x @ transposed(theta["W"])


def grads(objective: str, theta: dict, k, v, w, act: str, residual: bool) -> dict:
    """Σ_i w_i ∇_W ℓ(W; k_i, v_i): k [B, h, n, i], v [B, h, n, o], w [B, h, n, 1]."""
    r = w * (k @ transposed(theta["W"]) - v) if objective == "l2" else -(w * v)
    return {"W": transposed(r) @ k}
