"""Memories, one folder per kind, each kind's reference beside its fast forms (design §2, §4):

- `linear/`: `naive.py` (the reference: W e, its closed-form gradients, the implicit
  step), `headmajor.py` (the same formulas on the fused path's layout), `chunk.py` (the
  chunk-parallel delta rule) and `triton.py` (the gated delta rule as a Triton kernel);
- `mlp/`: `naive.py`, `headmajor.py`, `period.py` (a period as one autograd node) and
  `triton.py` (a period as one Triton program);
- `elementwise/` (optimizer memories) and `attention/`: `naive.py` only;
- `norm.py`: the layer norm a linear or mlp memory may apply to its output (`norm`).

A reference never imports its fast forms; a kernel imports its reference, to fall back
to it or to differentiate it. Which fast form runs is the fused path's choice
(runtime/fused.py).

This module is what the kinds share: θ₀, and `read` and `grads` dispatched by kind, in
the reference's layout or, with `headmajor`, the fused path's (memories/layout.py).

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

from ...vocab import DEFAULT_ACTIVATION
from .layout import heads as to_heads, merge_heads, split_heads, tokens
from .linear import headmajor as linear_headmajor, naive as linear_naive
from .mlp import headmajor as mlp_headmajor, naive as mlp_naive

NAIVE = {"linear": linear_naive, "mlp": mlp_naive}
HEADMAJOR = {"linear": linear_headmajor, "mlp": mlp_headmajor}


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


# ------------------------------------------------------------ reads, gradients
def _per_sequence(theta: dict) -> bool:
    return next(iter(theta.values())).dim() == 4


def read(kind: str, theta: dict, e: torch.Tensor, heads: int, act: str = DEFAULT_ACTIVATION, residual: bool = False,
         headmajor: bool = False, norm: tuple | None = None):
    """M(e) for a token stream e [B, n, d_in] -> [B, n, d_out], at one state per
    sequence or at each item's own state (per-item θ). `headmajor`: on the fused path's
    layout, for states per sequence (per-item states, a `read within`, keep the reference's).
    `norm`: the memory's layer norm (scale, bias) [h, o], or None (memories/norm.py)."""
    if headmajor and _per_sequence(theta):
        return tokens(HEADMAJOR[kind].read(theta, to_heads(e, heads), act, residual, norm))
    return merge_heads(NAIVE[kind].read(theta, split_heads(e, heads), act, residual, norm))


def grads(kind: str, objective: str, theta: dict, key, value, rate, heads: int, act: str = DEFAULT_ACTIVATION,
          residual: bool = False, per_item: bool = False, headmajor: bool = False, norm: tuple | None = None) -> dict:
    """η-weighted gradients of the inner objective at θ over the items of a chunk:
    Σ_i η_i ∇_θ ℓ(θ; k_i, v_i), or each item's term (per_item). key [B, n, d_in],
    value [B, n, d_out], rate [B, n, h]. The value is a constant of the inner problem
    (design §4): it enters as given, whatever produced it. `headmajor`, `norm` as for `read`."""
    if headmajor and not per_item and _per_sequence(theta):
        k, v = to_heads(key, heads), to_heads(value, heads)
        w = rate.transpose(1, 2).unsqueeze(-1).contiguous()  # [B, h, n, 1]
        return HEADMAJOR[kind].grads(objective, theta, k, v, w, act, residual, norm)
    k, v = split_heads(key, heads), split_heads(value, heads)
    return NAIVE[kind].grads(objective, theta, k, v, rate.unsqueeze(-1), act, residual, per_item, norm)
