"""Functions written for a cheaper backward (runtime/ops.py, runtime/memories/layout.py)
against their plain formula under autograd: values, first and second derivatives."""
from __future__ import annotations

import torch

from nldsl.runtime import ops


def _plain_l2norm(x, heads, eps=1e-6):
    shape = x.shape
    x = x.reshape(*shape[:-1], heads, shape[-1] // heads)
    return (x / (x.norm(dim=-1, keepdim=True) + eps)).reshape(shape)


def test_l2norm_equals_the_plain_formula_to_second_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.l2norm(x, heads=2), (x,))
    assert torch.autograd.gradgradcheck(lambda x: ops.l2norm(x, heads=2), (x,))
    up, u = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    got, want = (torch.autograd.grad(f(x, 2), x, up, create_graph=True)[0] for f in (ops.l2norm, _plain_l2norm))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(*(torch.autograd.grad((t * u).sum(), x)[0] for t in (got, want)))


def test_l2norm_of_a_zero_row_is_zero_with_a_finite_gradient():
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    x[0, 1] = 0
    x[1, 2, :4] = 0  # one head of an item
    x.requires_grad_()
    y = ops.l2norm(x, heads=2)
    torch.testing.assert_close(y, _plain_l2norm(x, 2))
    assert not y[0, 1].any()
    up = torch.randn_like(x)
    first = torch.autograd.grad(y, x, up)[0]
    torch.testing.assert_close(first, torch.autograd.grad(_plain_l2norm(x, 2), x, up)[0])
    assert torch.isfinite(first).all()


def _plain_periods(e, h, P):
    B, n, _ = e.shape
    return list(e.reshape(B, n, h, -1).transpose(1, 2).flatten(0, 1).split(P, 1))


def _plain_stream(ys, h):
    y = torch.cat(ys, 1)
    G, n, d = y.shape
    return y.unflatten(0, (G // h, h)).transpose(1, 2).reshape(G // h, n, h * d)


def test_head_periods_and_period_stream_equal_transposes_and_splits_to_second_order():
    from nldsl.runtime.memories.layout import head_periods, period_stream
    g = torch.Generator().manual_seed(0)
    h, P = 2, 3
    e = torch.randn(2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    got, want = head_periods(e, h, P), _plain_periods(e, h, P)
    assert len(got) == 2 and all(t.is_contiguous() for t in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(period_stream(got, h), e)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in got]

    def loss(cut, stream):  # a nonlinear round trip, so that second derivatives are not zero
        return (stream([torch.tanh(t) * w for t, w in zip(cut(e), weights)], h) ** 2).sum()
    up = torch.randn_like(e)
    pairs = ((lambda x: head_periods(x, h, P), period_stream), (lambda x: _plain_periods(x, h, P), _plain_stream))
    first = [torch.autograd.grad(loss(c, s), e, create_graph=True)[0] for c, s in pairs]
    torch.testing.assert_close(*first)
    torch.testing.assert_close(*(torch.autograd.grad((f * up).sum(), e)[0] for f in first))
    assert torch.autograd.gradcheck(lambda x: period_stream(head_periods(x, h, P), h), (e,))
