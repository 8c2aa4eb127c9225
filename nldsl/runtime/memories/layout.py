"""How memories lay out their tensors: a token stream split into heads, per-item rates,
and the per-head products every kind's formulas are made of.

Two layouts: token-major, [B, n, h, d], the reference's (`naive.py` of each kind), and
head-major, [B, h, n, d] and contiguous, the fused path's (`headmajor.py`), where every
product is one batched matmul with a contiguous result (docs/performance.md).
"""
from __future__ import annotations

import torch

from ..ops import written_backward


# -------------------------------------------------------------- token-major
def split_heads(e: torch.Tensor, h: int) -> torch.Tensor:
    return e.reshape(*e.shape[:-1], h, e.shape[-1] // h)


def merge_heads(e: torch.Tensor) -> torch.Tensor:
    return e.reshape(*e.shape[:-2], e.shape[-2] * e.shape[-1])


def mm(W: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """W e for a state W [B, h, o, i] or per-item states [B, n, h, o, i]; e [B, n, h, i]."""
    if W.dim() == 4:
        return torch.einsum("bhoi,bnhi->bnho", W, e)
    return torch.einsum("bnhoi,bnhi->bnho", W, e)


def outer(r: torch.Tensor, e: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Σ_n r eᵀ per head ([B, h, o, i]), or each item's r eᵀ ([B, n, h, o, i])."""
    if per_item:
        return torch.einsum("bnho,bnhi->bnhoi", r, e)
    return torch.einsum("bnho,bnhi->bhoi", r, e)


def as_rate(r, batch: int, n: int, heads: int, like: torch.Tensor) -> torch.Tensor:
    """A rate (a number, a learned scalar, or one value per item or per item and
    head) as [B, n, h]."""
    r = torch.as_tensor(r, dtype=like.dtype, device=like.device)
    if r.dim() == 3:  # [B, n, 1 | h], a per-item flow
        return r.expand(batch, n, heads)
    return r.reshape(-1)[0].expand(batch, n, heads) if r.numel() == 1 else r.expand(batch, n, heads)


# --------------------------------------------------------------- head-major
def heads(e: torch.Tensor, h: int) -> torch.Tensor:
    """A token stream [B, n, h·d] as [B, h, n, d], contiguous."""
    B, n, _ = e.shape
    return e.reshape(B, n, h, -1).transpose(1, 2).contiguous()


def tokens(y: torch.Tensor) -> torch.Tensor:
    """[B, h, n, d] back as a token stream [B, n, h·d]."""
    B, h, n, d = y.shape
    return y.transpose(1, 2).reshape(B, n, h * d)


def _periods(e: torch.Tensor, h: int, P: int) -> tuple:
    B, n, _ = e.shape
    return e.reshape(B, n // P, P, h, -1).permute(1, 0, 3, 2, 4).contiguous().flatten(1, 2).unbind(0)


def _stream(ys, h: int) -> torch.Tensor:
    G, P, d = ys[0].shape
    B, n = G // h, P * len(ys)
    # with differentiable ops where the gradient is differentiated again, and under a
    # compiler, which takes no `out=` that is not contiguous (and fuses the copy itself)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.stack(ys).unflatten(1, (B, h)).permute(1, 0, 3, 2, 4).reshape(B, n, h * d)
    out = ys[0].new_empty(B, n, h, d)
    torch.cat([y.unflatten(0, (B, h)) for y in ys], 2, out=out.transpose(1, 2))
    return out.view(B, n, h * d)


class _Periods(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e, h: int, P: int):
        ctx.h = h
        return _periods(e, h, P)

    @staticmethod
    def backward(ctx, *grads):
        return _stream(grads, ctx.h), None, None


class _Stream(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: int, *ys):
        ctx.h, ctx.P = h, ys[0].shape[1]
        return _stream(ys, h)

    @staticmethod
    def backward(ctx, g):
        return None, *_periods(g, ctx.h, ctx.P)


def head_periods(e: torch.Tensor, h: int, P: int) -> tuple:
    """A token stream [B, n, h·d] as its n / P periods, each [B·h, P, d]: head-major with
    the batch dims folded, contiguous (period-major underneath), for a loop over periods.
    One copy each way: autograd's own backward of a transpose and a split would
    concatenate the periods' gradients and then copy them token-major, 3.5× the time."""
    return _Periods.apply(e, h, P) if written_backward() else _periods(e, h, P)


def period_stream(ys, h: int) -> torch.Tensor:
    """head_periods' inverse: periods [B·h, P, d] back as one token stream [B, n, h·d],
    written in place by one concatenation."""
    return _Stream.apply(h, *ys) if written_backward() else _stream(ys, h)


def transposed(W: torch.Tensor) -> torch.Tensor:
    return W.transpose(-1, -2)
