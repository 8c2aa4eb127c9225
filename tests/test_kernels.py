"""The Triton kernels against their PyTorch references, run on the CPU by the Triton
interpreter (conftest sets TRITON_INTERPRET=1). Shapes stay small: the interpreter
runs every program one op at a time.

Tolerance: everything is float32. A read or a gradient is a sum of a few hundred
products, each rounded to ~6e-8 relative, and the kernels sum in another order
than the references: against a float64 run all three (kernel, chunk.delta_rule,
loop) are within ~1e-6 of the tensor's largest entry. Log decays at the −60 floor
inside a 64-token tile cost more, ~2e-5: a tile's log-decay sums reach a few
hundred, which float32 holds to ~2e-5. We allow 1e-4 of the largest entry (or of
1); a wrong term in a formula is off by ~1e-1. Keys are unit length and η < 1, so
each step α − η kkᵀ is a contraction and nothing amplifies the rounding.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import nldsl  # noqa: E402
from nldsl.runtime import kernels  # noqa: E402
from nldsl.runtime.memories.linear.chunk import delta_rule  # noqa: E402
from nldsl.runtime.kernels import gated_delta_rule, mlp_period_update, mlp_period_update_reference  # noqa: E402
from nldsl.runtime.memories.mlp import triton as mlp_triton  # noqa: E402
from nldsl.vocab import ACTIVATIONS  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def _seed_and_device():
    """Seeded; on the GPU when NLDSL_TEST_DEVICE=cuda (make gpu-check): every tensor the
    tests make is then a CUDA tensor, and the kernels run compiled."""
    from conftest import DEVICE

    torch.manual_seed(0)
    with torch.device(DEVICE):
        yield


def close(got: torch.Tensor, want: torch.Tensor, what: str):
    """Equal within TOL of the larger of 1 and the reference's largest entry."""
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= TOL * scale, f"{what}: max error {err:.2e} (scale {scale:.2e})"


def test_available(monkeypatch):
    """On the CPU only the interpreter runs kernels."""
    cpu = torch.zeros(1, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.available(cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not kernels.available(cpu)


# ---------------------------------------------------------------- delta rule
def loop(S0, q, k, v, eta, log_decay, within, decay_first=False):
    """The gated delta rule one token at a time, from its equation:
    S_t = α_t S_{t-1} − η_t (S_{t-1} k_t − v_t) k_tᵀ;  o_t = S_t q_t or S_{t-1} q_t;
    with `decay_first` the gradient at α_t S_{t-1}: S_t = α_t S_{t-1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ."""
    S, outs = S0, []
    for t in range(k.shape[1]):
        kt, qt = k[:, t, :, :, None], q[:, t, :, :, None]  # [B, h, i, 1]
        alpha = 1.0 if log_decay is None else log_decay[:, t, :, None, None].exp()
        at = alpha * S if decay_first else S
        new = alpha * S - eta[:, t, :, None, None] * (at @ kt - v[:, t, :, :, None]) @ kt.transpose(-1, -2)
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
@pytest.mark.parametrize("decay,first", [(True, False), (False, False), (True, True)],
                         ids=["decay", "nodecay", "decay_first"])
@pytest.mark.parametrize("tile,n,i,o", [(16, 40, 16, 32), (32, 40, 32, 16)])
def test_gated_delta_rule(within, decay, first, tile, n, i, o):
    """Reads, end state and the gradients of all six inputs, against chunk.delta_rule
    and the per-token loop, in both orders of decay and step; n is not a multiple of
    the tile."""
    inputs = delta_inputs(2, n, 2, i, o, decay)
    given = [x for x in inputs if x is not None]
    results = {
        "kernel": gated_delta_rule(*inputs, within=within, tile=tile, decay_first=first),
        "chunked": delta_rule(*inputs, period=1, tile=tile, within=within, decay_first=first),
        "loop": loop(*inputs, within=within, decay_first=first),
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
    kernel clamps them as chunk.delta_rule does, and their gradients are 0."""
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
    """With b1, b2 and a decay; gradients reach every input."""
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


MLP_NAMES = ("W1", "W2", "q", "k", "v", "eta", "decay", "b1", "b2")


def mlp_gradients(fn, inputs, weights, act: str, residual: bool, **options):
    """The gradients of Σ ⟨weight, output⟩ over fn's outputs, for the inputs given (not None)."""
    W1, W2, q, k, v, eta, decay, b1, b2 = inputs
    outs = fn(W1, W2, q, k, v, eta, decay, act=act, residual=residual, b1=b1, b2=b2)
    loss = sum((x * w.to(x.dtype)).sum() for x, w in zip(outs, weights))
    return torch.autograd.grad(loss, [x for x in inputs if x is not None], **options)


def mlp_grad_inputs(P: int, dims: tuple, extras: bool):
    """Inputs wanting gradients (biases and decay with `extras`), and a weight per output."""
    args, biases = mlp_inputs(2, P, 2, *dims, decay=extras, bias=extras)
    inputs = [x if x is None else x.requires_grad_() for x in (*args, *biases.values())]
    with torch.no_grad():
        outs = mlp_period_update_reference(*inputs[:7], act="silu", residual=False, b1=inputs[7], b2=inputs[8])
    return inputs, [torch.randn_like(x) for x in outs]


def _no_reference(*args):
    raise AssertionError("the first-order backward differentiated the reference")


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("extras", [True, False], ids=["bias_residual_decay", "plain"])
def test_mlp_period_update_backward(act, extras, monkeypatch):
    """The Triton backward (the reference's switched off) against autograd through
    mlp_period_update_reference, run in float32 and in float64: the gradient of every
    input, for every activation. With biases, a residual and a decay, 40 items in
    blocks of 16 (the last partial); without, 9 items in one partial block."""
    monkeypatch.setattr(mlp_triton, "differentiate", _no_reference)
    P, dims = (40, (16, 32, 16)) if extras else (9, (16, 16, 32))  # (i, k, o); a residual needs i == o
    inputs, weights = mlp_grad_inputs(P, dims, extras)
    kernel = functools.partial(mlp_period_update, block=16)
    got = mlp_gradients(kernel, inputs, weights, act, extras)
    want = mlp_gradients(mlp_period_update_reference, inputs, weights, act, extras)
    inputs64 = [x if x is None else x.detach().double().requires_grad_() for x in inputs]
    want64 = mlp_gradients(mlp_period_update_reference, inputs64, weights, act, extras)
    names = [name for name, x in zip(MLP_NAMES, inputs) if x is not None]
    assert len(got) == (9 if extras else 6)
    for name, a, b, b64 in zip(names, got, want, want64):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        close(a, b, f"d{name}")
        close(a.double(), b64, f"d{name} vs float64")


def test_mlp_period_update_double_backward():
    """Under create_graph the backward differentiates the reference (the Triton backward
    has no derivative of its own): the first gradients, and the gradients of a
    function of them with respect to every input, equal the reference's."""
    inputs, weights = mlp_grad_inputs(20, (16, 32, 16), extras=True)
    given = [x for x in inputs if x is not None]
    fns = {"kernel": functools.partial(mlp_period_update, block=16), "reference": mlp_period_update_reference}
    firsts = {name: mlp_gradients(fn, inputs, weights, "silu", True, create_graph=True) for name, fn in fns.items()}
    probes = [torch.randn_like(g) for g in firsts["reference"]]
    seconds = {name: torch.autograd.grad(sum((g * p).sum() for g, p in zip(gs, probes)), given)
               for name, gs in firsts.items()}
    for name, a, b, a2, b2 in zip(MLP_NAMES, firsts["kernel"], firsts["reference"],
                                  seconds["kernel"], seconds["reference"]):
        close(a, b, f"d{name}")
        close(a2, b2, f"d{name} of the gradients")


# ---------------------------------------------------------------- dispatch from the fused path
EXAMPLES = Path(__file__).parent.parent / "examples"

# linear by implicit, period 1, read before: the gated delta rule with η/(1+η‖k‖²)
IMPLICIT = """model implicit_delta {
  vocab 32
  dim 16
  heads 2
  context 32
  level L every 1 token {
    memory S : linear(dim, heads: heads, init: normal)
    flow q = proj(x)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = sigmoid(proj(x, heads))
    learn S : l2(k, v) by implicit(lr: eta)
    out proj(S(q))
  }
  block { x = x + L(rmsnorm(x)) }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""

# two mlp memories by gd on l2, read before: M with biases and a decay, read; N
# residual, learned but not read (the kernel still moves its state)
MLP = """model mlp_gd {
  vocab 32
  dim 16
  heads 2
  context 16
  level L every 4 tokens {
    memory M : mlp(dim, hidden: 32, heads: heads, bias)
    memory N : mlp(dim, heads: heads, residual, act: gelu)
    flow q = l2norm(proj(x), heads: heads)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = 0.5 * sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    learn M : l2(k, v) by gd(lr: eta, decay: keep)
    learn N : l2(k, v) by gd(lr: eta)
    out proj(M(q))
  }
  block { x = x + L(rmsnorm(x)) }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""


@pytest.fixture
def calls(monkeypatch):
    """How often the fused path called each kernel (it looks them up on `kernels`)."""
    counts = Counter()

    def counted(name):
        kernel = getattr(kernels, name)

        def call(*args, **kw):
            counts[name] += 1
            return kernel(*args, **kw)
        return call

    for name in ("gated_delta_rule", "mlp_period_update"):
        monkeypatch.setattr(kernels, name, counted(name))
    return counts


def run_stream(model, tokens, cut: int):
    """Logits of two calls cut mid-period (the fused path takes the whole periods, the
    reference the rest), every parameter's gradient, and the end state."""
    a, state = model(tokens[:, :cut])
    b, state = model(tokens[:, cut:], state)
    logits = torch.cat([a, b], 1)
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return logits, [p.grad for p in model.parameters()], state


def triton_against_torch(source, sizes: dict, cut: int, kernel: str, calls):
    """The model compiled with kernels="torch" and with "triton", same weights, on one
    stream cut at `cut`: their logits and every parameter's gradient held equal (float32,
    so within 1e-4: the kernels sum in another order; a wrong term is off by ~1e-1), the
    kernel called by the second only. Returns (the triton model, both end states)."""
    ref = nldsl.compile(source, kernels="torch", **sizes)
    got = nldsl.compile(source, kernels="triton", **sizes)
    got.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, int(ref.settings["vocab"]), (2, int(ref.settings["context"])))
    want_logits, want_grads, want_state = run_stream(ref, tokens, cut)
    assert not calls
    got_logits, got_grads, got_state = run_stream(got, tokens, cut)
    assert calls[kernel] > 0
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    for (name, _), g, want in zip(ref.named_parameters(), got_grads, want_grads):
        assert (g is None) == (want is None), name
        if g is not None:
            torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4, msg=name)
    return got, want_state, got_state


@pytest.mark.parametrize("source,sizes,kernel,cut", [
    (EXAMPLES / "gated_deltanet.nl", dict(dim=16, heads=2, context=32, depth=1), "gated_delta_rule", 21),
    (IMPLICIT, {}, "gated_delta_rule", 21),
    (MLP, {}, "mlp_period_update", 10),
    (MLP.replace("gd(lr: eta, decay: keep)", "gd(lr: eta, decay: keep, per_token)"), {}, "mlp_period_update", 10),
], ids=["gated_deltanet", "implicit", "mlp", "mlp_per_token"])
def test_fused_path_with_kernels_equals_torch(source, sizes, kernel, cut, calls):
    """kernels="triton" against kernels="torch", same weights: logits, every parameter's
    gradient and the fast states left. Float32 (the kernels compute in it), so the two
    differ by rounding only: the sums run in another order (see the module docstring);
    1e-4 is far below a wrong term's ~1e-1."""
    got, want_state, got_state = triton_against_torch(source, sizes, cut, kernel, calls)
    assert next(got.levels()).desc.parallel
    assert len(calls) == 1
    tol = dict(atol=1e-4, rtol=1e-4)
    for key, ls in want_state.levels.items():
        for memory, f in ls.fast.items():
            theta = getattr(f, "theta", None)
            if theta is not None:
                mine = got_state.levels[key].fast[memory].theta
                assert list(mine) == list(theta), memory
                for part in theta:
                    torch.testing.assert_close(mine[part], theta[part], **tol, msg=f"{memory}.{part}")


def test_kernels_option(calls):
    """A bad value is refused; "auto" on the CPU keeps to PyTorch, even under the interpreter."""
    with pytest.raises(ValueError, match="'auto', 'triton', 'torch'"):
        nldsl.compile(MLP, kernels="bogus")
    model = nldsl.compile(MLP)
    assert model.options["kernels"] == "auto"
    model(torch.randint(0, 32, (1, 16)))
    model = nldsl.compile(EXAMPLES / "gated_deltanet.nl", dim=16, heads=2, context=32, depth=1, kernels="auto")
    model(torch.randint(0, 256, (1, 32)))
    assert not calls


def test_a_level_kernel_hint_overrides_the_option(calls):
    """`schedule { L.kernel = ... }` picks for its level, whatever the compile option says."""
    hinted = MLP.replace("optimizer adam(lr: 1e-3)", "optimizer adam(lr: 1e-3)\n  schedule { L.kernel = triton }")
    nldsl.compile(hinted, kernels="torch")(torch.randint(0, 32, (1, 16)))
    assert calls["mlp_period_update"] > 0
    calls.clear()
    off = MLP.replace("optimizer adam(lr: 1e-3)", "optimizer adam(lr: 1e-3)\n  schedule { L.kernel = torch }")
    nldsl.compile(off, kernels="triton")(torch.randint(0, 32, (1, 16)))
    assert not calls


def _below_a_task_level(level: str) -> str:
    """A task level, then a kernel level: the task level's gradient runs back through
    the kernel with create_graph, and training differentiates that gradient again."""
    body = level.split("level L", 1)[1].split("\n  block", 1)[0]
    return f"""model second_order {{
  vocab 32
  dim 16
  heads 2
  context 16
  level T every 8 tokens {{
    memory ffn : mlp(dim, hidden: 16)
    learn ffn : task by gd(lr: 0.1)
  }}
  level L{body}
  block {{
    x = x + T(rmsnorm(x))
    x = x + L(rmsnorm(x))
  }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


@pytest.mark.parametrize("source,kernel", [(IMPLICIT, "gated_delta_rule"), (MLP, "mlp_period_update")],
                         ids=["gated_delta_rule", "mlp"])
def test_kernels_below_a_task_level_give_second_order_gradients(source, kernel, calls):
    """Each kernel's backward is differentiated again here (through the task level's
    gradient): every parameter's gradient, kernels="triton" against kernels="torch"."""
    triton_against_torch(_below_a_task_level(source), {}, 8, kernel, calls)
