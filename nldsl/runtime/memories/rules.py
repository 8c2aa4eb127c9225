"""The step a memory's state takes at a boundary of its period, by its update rule
(gd, momentum, implicit), from the sums of its period's gradients: the one place the
rules are written, for the reference level, the optimizers and the kernels' references."""
from __future__ import annotations

import torch

from .linear.naive import implicit_solve


def per_head(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-head factor [B, h] (or per item [B, n, h]) broadcast onto a state tensor;
    a number, or a tensor shaped like the state, as it is."""
    if not torch.is_tensor(r) or r.dim() >= like.dim():
        return r
    return r.reshape(*r.shape, *([1] * (like.dim() - r.dim())))


def apply_rule(rule: str, S: dict, Z: dict | None, acc: dict, decay=None, beta=None):
    """One boundary of an update rule (design §5), all gradients taken at S (at α S
    with `decay_first`, where `Fast.record` took them):
    gd        S' = α S − Σ η ∇ℓ
    momentum  Z' = β Z − Σ η ∇ℓ;  S' = α S + Z'
    implicit  S' = (S + Σ η v kᵀ)(I + Σ η k kᵀ)⁻¹, the exact proximal step.
    `acc` holds the sums; α and β are per-head [B, h], or tensors broadcast onto S.
    Returns (S', Z')."""
    if rule == "implicit":
        return {"W": implicit_solve(S["W"], acc["VK"], acc["KK"])}, Z
    decayed = {k: v if decay is None else v * per_head(decay, v) for k, v in S.items()}
    if Z is None:
        return {k: decayed[k] - acc[k] for k in S}, None
    Z = {k: v * (1.0 if beta is None else per_head(beta, v)) - acc[k] for k, v in Z.items()}
    return {k: decayed[k] + Z[k] for k in S}, Z
