"""Products of per-item rates inside a chunk (runtime/rates.py), held to their definition
D[t, i] = Π_{i<l≤t} r_l, and the last row alone to the whole matrix's, to second order,
with rates of exactly 0 among them."""
import pytest
import torch

from nldsl.runtime.rates import later_decays, products


def _rates(B=2, n=6, h=3, zeros=True):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(B, n, h, generator=g, dtype=torch.float64) * 0.8 + 0.1
    if zeros:  # a rate of 0 stops every product through it
        r[0, 2, 1] = 0.0
        r[1, 4, 0] = 0.0
    return r


def _by_definition(r):
    B, n, h = r.shape
    D = torch.zeros(B, h, n, n, dtype=r.dtype)
    for t in range(n):
        for i in range(t + 1):
            D[:, :, t, i] = r[:, i + 1:t + 1].prod(1)
    return D


@pytest.mark.parametrize("zeros", [False, True])
def test_products_are_the_definition(zeros):
    r = _rates(zeros=zeros)
    D = products(r)
    torch.testing.assert_close(D, _by_definition(r))
    torch.testing.assert_close(products(r, last=True), D[..., -1:, :])


@pytest.mark.parametrize("zeros", [False, True])
def test_last_row_differentiates_as_the_matrix_to_second_order(zeros):
    r = _rates(zeros=zeros).requires_grad_()
    weights = torch.randn(2, 3, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grads(last: bool):
        row = products(r, last=True) if last else products(r)[..., -1:, :]
        (g,) = torch.autograd.grad((row * weights).sum(), r, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), r)  # differentiated again, as a task level does
        return g.detach(), gg

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want)


def test_later_decays_are_the_rest_of_each_period():
    r = _rates(n=8, zeros=True)
    got = later_decays(r, period=4)
    want = torch.stack([r[:, i + 1:(i // 4 + 1) * 4].prod(1) for i in range(8)], 1)
    torch.testing.assert_close(got, want)
