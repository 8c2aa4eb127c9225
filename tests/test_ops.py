"""Flow functions written for a cheaper backward (runtime/ops.py) against their plain
formula under autograd: values, first and second derivatives."""
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
