"""The Triton kernels against their PyTorch references, run on the CPU by the Triton
interpreter (conftest sets TRITON_INTERPRET=1). Shapes stay small: the interpreter
runs every program one op at a time.

Tolerance: everything is float32. A read or a gradient is a sum of a few hundred
products, each rounded to ~6e-8 relative, and the kernels sum in another order
than the references: against a float64 run all three (kernel, chunked.delta_rule,
loop) are within ~1e-6 of the tensor's largest entry. Log decays at the −60 floor
inside a 64-token tile cost more, ~2e-5: a tile's log-decay sums reach a few
hundred, which float32 holds to ~2e-5. We allow 1e-4 of the largest entry (or of
1); a wrong term in a formula is off by ~1e-1. Keys are unit length and η < 1, so
each step α − η kkᵀ is a contraction and nothing amplifies the rounding.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from nldsl.runtime import kernels  # noqa: E402
from nldsl.runtime.chunked import delta_rule  # noqa: E402
from nldsl.runtime.kernels import gated_delta_rule, mlp_period_update, mlp_period_update_reference  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def close(got: torch.Tensor, want: torch.Tensor, what: str):
    """Equal within TOL of the larger of 1 and the reference's largest entry."""
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= TOL * scale, f"{what}: max error {err:.2e} (scale {scale:.2e})"


def test_available(monkeypatch):
    """On the CPU only the interpreter runs kernels."""
    cpu = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.available(cpu)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not kernels.available(cpu)


# ---------------------------------------------------------------- delta rule
def loop(S0, q, k, v, eta, log_decay, within):
    """The gated delta rule one token at a time, from its equation:
    S_t = α_t S_{t-1} − η_t (S_{t-1} k_t − v_t) k_tᵀ;  o_t = S_t q_t or S_{t-1} q_t."""
    S, outs = S0, []
    for t in range(k.shape[1]):
        kt, qt = k[:, t, :, :, None], q[:, t, :, :, None]  # [B, h, i, 1]
        alpha = 1.0 if log_decay is None else log_decay[:, t, :, None, None].exp()
        new = alpha * S - eta[:, t, :, None, None] * (S @ kt - v[:, t, :, :, None]) @ kt.transpose(-1, -2)
        outs.append(((new if within else S) @ qt)[..., 0])
        S = new
    return torch.stack(outs, 1), S


def delta_inputs(B, n, h, i, o, decay: bool):
    S0 = torch.randn(B, h, o, i) / i ** 0.5
    q = torch.randn(B, n, h, i)
    k = torch.nn.functional.normalize(torch.randn(B, n, h, i), dim=-1)
    v = torch.randn(B, n, h, o)
    eta = torch.rand(B, n, h) * 0.9 + 0.05
    log_decay = torch.log(torch.rand(B, n, h) * 0.5 + 0.5) if decay else None
    return [x if x is None else x.requires_grad_() for x in (S0, q, k, v, eta, log_decay)]


NAMES = ("S0", "q", "k", "v", "eta", "log_decay")


@pytest.mark.parametrize("within", [True, False], ids=["within", "before"])
@pytest.mark.parametrize("decay", [True, False], ids=["decay", "nodecay"])
@pytest.mark.parametrize("tile,n,i,o", [(16, 40, 16, 32), (32, 40, 32, 16)])
def test_gated_delta_rule(within, decay, tile, n, i, o):
    """Reads, end state and the gradients of all six inputs, against chunked.delta_rule
    and the per-token loop; n is not a multiple of the tile."""
    inputs = delta_inputs(2, n, 2, i, o, decay)
    given = [x for x in inputs if x is not None]
    results = {
        "kernel": gated_delta_rule(*inputs, within=within, tile=tile),
        "chunked": delta_rule(*inputs, period=1, tile=tile, within=within),
        "loop": loop(*inputs, within=within),
    }
    w_out, w_state = torch.randn_like(results["loop"][0]), torch.randn_like(results["loop"][1])
    grads = {name: torch.autograd.grad((out * w_out).sum() + (S * w_state).sum(), given)
             for name, (out, S) in results.items()}
    for ref in ("chunked", "loop"):
        close(results["kernel"][0], results[ref][0], f"o vs {ref}")
        close(results["kernel"][1], results[ref][1], f"S_end vs {ref}")
        names = [nm for nm, x in zip(NAMES, inputs) if x is not None]
        for name, got, want in zip(names, grads["kernel"], grads[ref]):
            close(got, want, f"d{name} vs {ref}")


def test_gated_delta_rule_whole_tiles_and_floor():
    """n a multiple of a 64-token tile, and log decays below the floor (−60): the
    kernel clamps them as chunked.delta_rule does, and their gradients are 0."""
    S0, q, k, v, eta, log_decay = delta_inputs(1, 64, 2, 16, 16, decay=True)
    with torch.no_grad():
        log_decay[:, ::16] = -80.0
    inputs = (S0, q, k, v, eta, log_decay)
    got = gated_delta_rule(*inputs, within=True, tile=64)
    want = delta_rule(*inputs, period=1, tile=64, within=True)
    for a, b, what in zip(got, want, ("o", "S_end")):
        close(a, b, what)
    with torch.no_grad():  # no checkpoints saved: the same forward
        for a, b in zip(gated_delta_rule(*inputs, within=True, tile=64), got):
            assert torch.equal(a, b)
    w = torch.randn_like(got[0])
    g_got = torch.autograd.grad((got[0] * w).sum(), inputs)
    g_want = torch.autograd.grad((want[0] * w).sum(), inputs)
    for name, a, b in zip(NAMES, g_got, g_want):
        close(a, b, f"d{name}")
    assert (g_got[-1][:, ::16] == 0).all()


# ---------------------------------------------------------------- mlp period
def mlp_inputs(B, P, h, i, k, o, decay: bool, bias: bool):
    W1 = torch.randn(B, h, o, k) / k ** 0.5
    W2 = torch.randn(B, h, k, i) / i ** 0.5
    q, key = torch.randn(B, P, h, i), torch.randn(B, P, h, i)
    v = torch.randn(B, P, h, o)
    eta = torch.rand(B, P, h) * 0.1
    alpha = torch.rand(B, h) * 0.5 + 0.5 if decay else None
    b1, b2 = (torch.randn(B, h, o) * 0.1, torch.randn(B, h, k) * 0.1) if bias else (None, None)
    return (W1, W2, q, key, v, eta, alpha), dict(b1=b1, b2=b2)


@pytest.mark.parametrize("act", ["silu", "gelu", "relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_mlp_period_update(act, residual):
    """The reads, W1' and W2' of one period against memory.read/grads + apply_rule."""
    P, dims = (8, (16, 32, 16)) if residual else (16, (32, 16, 16))  # (i, k, o); a residual needs i == o
    args, _ = mlp_inputs(2, P, 2, *dims, decay=residual, bias=False)
    got = mlp_period_update(*args, act=act, residual=residual)
    want = mlp_period_update_reference(*args, act=act, residual=residual)
    for a, b, what in zip(got, want, ("y", "W1'", "W2'")):
        close(a, b, what)


def test_mlp_period_update_blocks():
    """A period longer than the program's block of items: the gradient sums carry
    across blocks, and the last block is partial."""
    args, _ = mlp_inputs(2, 40, 2, 16, 16, 32, decay=True, bias=False)
    got = mlp_period_update(*args, act="gelu", residual=False, block=16)
    want = mlp_period_update_reference(*args, act="gelu", residual=False)
    for a, b, what in zip(got, want, ("y", "W1'", "W2'")):
        close(a, b, what)


def test_mlp_period_update_biases_and_gradients():
    """With b1, b2 and a decay; gradients (the reference's, recomputed) reach every input."""
    args, biases = mlp_inputs(2, 8, 2, 16, 32, 16, decay=True, bias=True)
    args = [x.requires_grad_() for x in args]
    biases = {name: x.requires_grad_() for name, x in biases.items()}
    given = [*args, *biases.values()]
    got = mlp_period_update(*args, act="silu", residual=True, **biases)
    want = mlp_period_update_reference(*args, act="silu", residual=True, **biases)
    assert len(got) == 5
    for a, b, what in zip(got, want, ("y", "W1'", "W2'", "b1'", "b2'")):
        close(a, b, what)
    weights = [torch.randn_like(x) for x in want]
    g_got = torch.autograd.grad(sum((x * w).sum() for x, w in zip(got, weights)), given)
    g_want = torch.autograd.grad(sum((x * w).sum() for x, w in zip(want, weights)), given)
    for a, b in zip(g_got, g_want):
        close(a, b, "gradient")
