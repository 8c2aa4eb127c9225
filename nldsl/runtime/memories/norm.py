"""The layer norm inside a memory (the option `norm`): TTT's inner model
f(x) = x + LN(f_res(x)) (Sun et al. 2024, §3.1), with `residual`; LN(f_res(x)) without.

LN normalises each head's output on its own, (y − μ)/√(σ² + ε), and scales and shifts it
by the memory's `norm_scale` and `norm_bias` [h, o], outer parameters that the inner
rule does not change. The inner gradient flows through it: `vjp` is ∂/∂y of ⟨g, LN(y)⟩,
written out as the kinds' gradients are (memories/__init__.py), so that it is an
ordinary differentiable tensor. Both layouts: the scale and bias broadcast onto
token-major outputs [B, n, h, o] as they are, onto head-major [B, h, n, o] by `headmajor`."""
from __future__ import annotations

import torch

EPS = 1e-6  # as the TTT authors' inner layer norm


def headmajor(norm: tuple | None) -> tuple | None:
    """(scale, bias) [h, o] as [h, 1, o], for outputs [B, h, n, o]."""
    return None if norm is None else tuple(t.unsqueeze(-2) for t in norm)


def forward(y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """LN(y) over the last dimension, and what its vjp needs: (out, ŷ, 1/√(σ² + ε))."""
    c = y - y.mean(-1, keepdim=True)
    rstd = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + EPS)
    y_hat = c * rstd
    return y_hat * scale + bias, y_hat, rstd


def vjp(g: torch.Tensor, y_hat: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """∂⟨g, LN(y)⟩/∂y = (g' − mean(g') − ŷ mean(g' ŷ)) / √(σ² + ε), with g' = g ⊙ scale."""
    gs = g * scale
    return rstd * (gs - gs.mean(-1, keepdim=True) - y_hat * (gs * y_hat).mean(-1, keepdim=True))


def output(y: torch.Tensor, e: torch.Tensor, residual: bool, norm: tuple | None):
    """A memory's output from its map's y: LN(y) with `norm`, plus e with `residual`;
    and the layer norm's (ŷ, 1/√(σ² + ε)) for `vjp`, or None."""
    ln = None
    if norm is not None:
        y, *ln = forward(y, *norm)
    return (y + e if residual else y), ln


def through(r: torch.Tensor, ln, norm: tuple | None) -> torch.Tensor:
    """∂ℓ/∂y from ∂ℓ/∂output r: through the layer norm when there is one (the residual adds
    nothing: it does not depend on θ)."""
    return r if ln is None else vjp(r, *ln, norm[0])
