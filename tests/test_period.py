"""The fused path's memory formulas against the reference's: the head-major reads and
gradients (memories/*/headmajor.py) against naive.py's, and mlp/period.py's one-node
period (read, gradient, rule, with its written backward) against naive.py and
rules.apply_rule under autograd, to first and second order."""
from __future__ import annotations

import itertools

import pytest
import torch

from nldsl.runtime import memories as M
from nldsl.runtime.memories.rules import apply_rule
from nldsl.runtime.memories.layout import merge_heads
from nldsl.runtime.memories.mlp import naive as mlp
from nldsl.runtime.memories.mlp.period import mlp_period

f64 = dict(dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind,objective,act,residual,bias", [
    ("linear", "l2", "silu", False, False), ("linear", "dot", "silu", False, False),
    ("mlp", "l2", "silu", True, False), ("mlp", "l2", "gelu", False, True), ("mlp", "dot", "tanh", True, True),
])
def test_headmajor_reads_and_gradients_equal_memory(kind, objective, act, residual, bias):
    g, B, n, h, d = _gen(), 2, 5, 2, 3
    shapes = {"W": (h, d, d)} if kind == "linear" else {"W1": (h, d, 4), "W2": (h, 4, d)}
    if bias:
        shapes.update(b1=(h, d), b2=(h, 4))
    theta = {k: torch.randn(B, *s, generator=g, **f64).requires_grad_() for k, s in shapes.items()}
    key, value, e = (torch.randn(B, n, h * d, generator=g, **f64) for _ in range(3))
    rate = torch.rand(B, n, h, generator=g, **f64)
    torch.testing.assert_close(M.read(kind, theta, e, h, act, residual, headmajor=True),
                               M.read(kind, theta, e, h, act, residual))
    got = M.grads(kind, objective, theta, key, value, rate, h, act, residual, headmajor=True)
    want = M.grads(kind, objective, theta, key, value, rate, h, act, residual)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    # and their derivatives, as the outer backward takes them
    weights = {k: torch.randn_like(v) for k, v in want.items()}
    totals = [sum((t[k] * weights[k]).sum() for k in t) for t in (got, want)]
    assert totals[0].requires_grad == totals[1].requires_grad  # a linear memory's dot gradient has no θ in it
    if totals[1].requires_grad:
        back = [torch.autograd.grad(t, list(theta.values()), allow_unused=True, materialize_grads=True)
                for t in totals]
        for a, b in zip(*back):
            torch.testing.assert_close(a, b)


def _plain(theta, z, k, v, q, w, alpha, beta, act, residual):
    """One period from naive.py's formulas and apply_rule, token-major."""
    B, h = k.shape[:2]
    tok = lambda t: t.transpose(1, 2)  # noqa: E731  [B, h, n, d] -> [B, n, h, d]
    y = None if q is None else mlp.forward(theta, tok(q), act, residual)[0].transpose(1, 2)
    acc = M.grads("mlp", "l2", theta, merge_heads(tok(k)), merge_heads(tok(v)), w.squeeze(-1).transpose(1, 2),
                  h, act, residual)
    S, Z = apply_rule("gd" if z is None else "momentum", theta, z, acc,
                      None if alpha is None else alpha.reshape(B, h), None if beta is None else beta.reshape(B, h))
    return y, S, Z


def _period_inputs(momentum, decay, beta, read, seed=0, B=2, h=2, n=3, m=2, i=3, k=4):
    g = _gen(seed)
    R = lambda *s: torch.randn(*s, generator=g, **f64)  # noqa: E731
    theta = {"W1": R(B, h, i, k) / 2, "W2": R(B, h, k, i) / 2}
    z = {"W1": R(B, h, i, k) / 10, "W2": R(B, h, k, i) / 10} if momentum else None
    args = [theta, z, R(B, h, n, i), R(B, h, n, i), R(B, h, m, i) if read else None,
            torch.rand(B, h, n, 1, generator=g, **f64),
            torch.rand(B, h, 1, 1, generator=g, **f64) if decay else None,
            torch.rand(B, h, 1, 1, generator=g, **f64) if beta and momentum else None]
    leaves = [*theta.values(), *(z or {}).values(), *(t for t in args[2:] if t is not None)]
    for t in leaves:
        t.requires_grad_()
    return args, leaves


def _outputs(out):
    y, S, Z = out
    return [t for t in [y, *S.values(), *(Z or {}).values()] if t is not None]


CASES = [c for c in itertools.product(["silu", "gelu", "tanh", "relu"], [True, False], [True, False],
                                      [True, False], [True, False], [True, False])]


@pytest.mark.parametrize("act,residual,momentum,decay,beta,read", CASES)
def test_one_node_period_equals_the_plain_formulas_to_second_order(act, residual, momentum, decay, beta, read):
    args, leaves = _period_inputs(momentum, decay, beta, read)
    want = _outputs(_plain(*args, act, residual))
    got = _outputs(mlp_period(*args, act=act, residual=residual))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    weights = [torch.randn(t.shape, generator=_gen(1), **f64) for t in want]
    first = [torch.autograd.grad(outs, leaves, weights, create_graph=True) for outs in (got, want)]
    for a, b in zip(*first):
        torch.testing.assert_close(a, b)
    # the gradient of a function of those gradients: what a task level above takes
    u = [torch.randn(t.shape, generator=_gen(2), **f64) for t in first[1]]
    second = [torch.autograd.grad(sum((t * c).sum() for t, c in zip(grads, u)), leaves, allow_unused=True)
              for grads in first]
    for a, b in zip(*second):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is not None:
            torch.testing.assert_close(a, b)
