"""Optimizers from specs (`nldsl.compile_optimizer`, `Model.configure_optimizer`).

The specs of SGD-momentum, Adam, AdamW and Muon must reproduce torch.optim step for
step (design §10); the paper's new optimizers are checked against their equations
written out here by hand; periods, state round trips, parameter groups and
multi-rate training of cross-sequence levels are checked on small problems.
"""
import copy
import math

import pytest
import torch
from torch import nn

import nldsl
from nldsl.runtime.optim import MultiRateOptimizer, SpecOptimizer

from conftest import ROOT

OPTIM = ROOT / "examples" / "optim"
STEPS = 100


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_mlp(dtype, bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12, bias=bias), nn.Tanh(), nn.Linear(12, 3, bias=bias)).to(dtype)


def trajectory(make_optimizer, dtype=torch.float32, bias=True, steps=STEPS):
    """The parameters of a small MLP after every step of `steps` on a fixed regression."""
    model = small_mlp(dtype, bias)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(16, 5, generator=gen, dtype=dtype)
    Y = torch.randn(16, 3, generator=gen, dtype=dtype)
    opt = make_optimizer(model.parameters())
    out = []
    for _ in range(steps):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def max_difference(a, b) -> float:
    return max((x - y).abs().max().item() for sa, sb in zip(a, b) for x, y in zip(sa, sb))


# --- the optimizers of torch.optim ----------------------------------------------------

TORCH_CASES = {
    "sgd": ("sgd.nl", dict(lr=0.05, weight_decay=0.01), lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.01)),
    "sgd_momentum": ("sgd_momentum.nl", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0, weight_decay=0.01,
                                               nesterov=False)),
    "sgd_nesterov": ("sgd_momentum.nl", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0, weight_decay=0.01,
                                               nesterov=True)),
    "adam": ("adam.nl", dict(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_weight_decay": ("adam.nl", dict(lr=0.01, weight_decay=0.1),
                          lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    "adamw": ("adamw.nl", dict(lr=0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reproduces_torch_optim_step_for_step(case, dtype):
    file, hparams, reference = TORCH_CASES[case]
    ours = trajectory(lambda p: nldsl.compile_optimizer(OPTIM / file, p, **hparams), dtype)
    theirs = trajectory(reference, dtype)
    # The formulas differ from torch's only in the order of float operations (torch
    # uses lerp_ and addcdiv_, the specs β·m + (1-β)·g and a division): in float64
    # the trajectories agree to 1e-15, in float32 Adam's m/√v lets the round-off of
    # 100 steps grow to a few 1e-6 (measured: at most 2.3e-6, AdamW).
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert max_difference(ours, theirs) < tol


@pytest.mark.parametrize("file, reference", [
    ("adam.nl", torch.optim.Adam), ("adamw.nl", torch.optim.AdamW), ("muon.nl", torch.optim.Muon)])
def test_defaults_are_torch_optims_defaults(file, reference):
    """Unchanged hyperparameters: the spec's defaults are torch's, so a spec used as
    `optimizer adam` means what `torch.optim.Adam(params)` means."""
    ours = trajectory(lambda p: nldsl.compile_optimizer(OPTIM / file, p), bias=False, steps=20)
    theirs = trajectory(reference, bias=False, steps=20)
    assert max_difference(ours, theirs) < 1e-5


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_reproduces_torch_muon_on_matrices(nesterov):
    ours = trajectory(lambda p: nldsl.compile_optimizer(OPTIM / "muon.nl", p, lr=1e-3, nesterov=nesterov),
                      bias=False)
    theirs = trajectory(lambda p: torch.optim.Muon(p, lr=1e-3, nesterov=nesterov), bias=False)
    # Both run Newton-Schulz in bfloat16. The momentum buffer is computed as
    # β·b + (1-β)·g here and with lerp_ in torch: float32 round-off apart, and where
    # that difference crosses a bfloat16 rounding boundary the orthogonalised update
    # differs by about one bfloat16 ulp (2^-8 relative), i.e. up to ~lr·1e-2 in W.
    # Measured here: 1.5e-8 with nesterov, 3.3e-5 without (one such flip). The
    # tolerance allows a few flips and is still far below a wrong formula (a missing
    # weight decay alone moves W by ~3e-3 over these steps).
    assert max_difference(ours, theirs) < 1e-4


def test_compile_optimizer_is_a_torch_optimizer_over_parameter_groups():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))
    opt = nldsl.compile_optimizer(OPTIM / "sgd.nl", [{"params": [a]}, {"params": [b]}], lr=0.5)
    assert isinstance(opt, torch.optim.Optimizer) and len(opt.param_groups) == 2
    a.grad, b.grad = torch.ones(3), None  # no gradient: left alone, as torch.optim does
    opt.step()
    assert torch.equal(a.detach(), torch.full((3,), 0.5)) and torch.equal(b.detach(), torch.ones(2, 2))
    assert float(opt.state[a]["step"]) == 1 and float(opt.state[b]["step"]) == 0


# --- the paper's optimizers, by hand ---------------------------------------------------

def test_delta_momentum_one_step_by_hand():
    """Paper Eq. 49: m' = m(β − η g²) + η g² (gd on ½‖m⊙g − g‖² with decay β), then
    W' = W − lr·m'⊙g, the momentum read after its update."""
    lr, beta, eta = 0.05, 0.8, 0.3
    W0 = torch.randn(4, 3)
    W = nn.Parameter(W0.clone())
    opt = nldsl.compile_optimizer(OPTIM / "delta_momentum.nl", [W], lr=lr, beta=beta, inner_lr=eta)
    g = torch.randn(4, 3)
    W.grad = g.clone()
    opt.step()
    m = torch.ones(4, 3)  # init: ones
    m = m * (beta - eta * g * g) + eta * g * g
    torch.testing.assert_close(opt.state[W]["m"], m, rtol=0, atol=1e-6)
    torch.testing.assert_close(W.detach(), W0 - lr * m * g, rtol=0, atol=1e-6)


def test_dmgd_one_step_by_hand():
    """Paper Eq. 50 (deep momentum): the momentum is an MLP m(x) = x + W1 σ(W2 x) on each
    gradient coordinate, trained by gd with decay β on Σ_i −⟨m(g_i), g_i⟩; then
    W' = W − lr·m'(g)."""
    lr, beta, eta = 0.1, 0.9, 0.05
    W0 = torch.randn(3, 5)
    W = nn.Parameter(W0.clone())
    opt = nldsl.compile_optimizer(OPTIM / "dmgd.nl", [W], lr=lr, beta=beta, inner_lr=eta, hidden=4)
    # one small memory per parameter: W2 [heads 1, hidden 4, 1], W1 [1, 1, 4]
    assert opt.state[W]["m.W2"].shape == (1, 4, 1) and opt.state[W]["m.W1"].shape == (1, 1, 4)
    W2, W1 = opt.state[W]["m.W2"][0, :, 0].clone(), opt.state[W]["m.W1"][0, 0].clone()  # [4], [4]
    g = torch.randn(3, 5)
    W.grad = g.clone()
    opt.step()

    def silu(z):
        return z * torch.sigmoid(z)

    def dsilu(z):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))

    x = g.reshape(-1)  # the items: every coordinate of the gradient
    z = x[:, None] * W2[None, :]  # [n, hidden]
    # ℓ = −Σ_i g_i (g_i + Σ_j W1_j σ(W2_j g_i))
    dW1 = -(x[:, None] * silu(z)).sum(0)
    dW2 = -(x[:, None] * W1[None, :] * dsilu(z) * x[:, None]).sum(0)
    # the formulas agree with autograd on the same objective
    w1, w2 = W1.clone().requires_grad_(), W2.clone().requires_grad_()
    loss = -(x * (x + (silu(x[:, None] * w2[None, :]) * w1[None, :]).sum(1))).sum()
    torch.testing.assert_close(torch.autograd.grad(loss, [w1, w2]), (dW1, dW2))
    W1, W2 = beta * W1 - eta * dW1, beta * W2 - eta * dW2
    torch.testing.assert_close(opt.state[W]["m.W1"][0, 0], W1, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[W]["m.W2"][0, :, 0], W2, rtol=0, atol=1e-6)
    m_of_g = x + (silu(x[:, None] * W2[None, :]) * W1[None, :]).sum(1)
    torch.testing.assert_close(W.detach(), W0 - lr * m_of_g.reshape(3, 5), rtol=0, atol=1e-6)


def newton_schulz_by_hand(G, steps=5, eps=1e-7):
    """Jordan et al.'s quintic iteration X ← aX + (bA + cA²)X, A = XXᵀ, from
    X = G/‖G‖ on the wide orientation, in bfloat16 (as torch.optim.Muon). A vector
    is left as it is (the library's convention; the paper orthogonalises matrices)."""
    if G.dim() < 2:
        return G
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    tall = X.shape[0] > X.shape[1]
    X = X.T if tall else X
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        # a·X + (b·A + c·A²)·X, with torch.addmm as torch.optim.Muon writes it: in
        # bfloat16 every rounding shows, so the same fused operations are needed
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return (X.T if tall else X).to(G.dtype)


def m3_by_hand(W, grads, lr, b1, b2, b3, alpha, eps, f):
    """optim/m3.nl from its equations: Adam's moments m1, v; m2 the moving average
    of the chunks' mean gradient, decayed by β3 once a chunk, at steps f, 2f, ...;
    W −= lr·(NS(m̂1 / (√v̂ + ε)) + α·NS(m2 / (√v̂ + ε)))."""
    m1, v, m2, chunk = (torch.zeros_like(W) for _ in range(4))
    out = []
    for t, g in enumerate(grads, 1):
        m1 = b1 * m1 + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        chunk = chunk + g
        if t % f == 0:  # the step that completes a chunk reads the new m2
            m2, chunk = b3 * m2 + (1 - b3) * chunk / f, torch.zeros_like(W)
        denom = (v / (1 - b2 ** t)).sqrt() + eps
        W = W - lr * (newton_schulz_by_hand(m1 / (1 - b1 ** t) / denom) + alpha * newton_schulz_by_hand(m2 / denom))
        out.append(W)
    return out


def m3_literal_by_hand(W, grads, lr, b1, b2, b3, alpha, eps, f):
    """Algorithm 1 as printed (optim/m3_literal.nl): M1 += β1·g, V += β2·g² every
    step; M2 += β3·(the chunk's f gradients) at steps f, 2f, ...;
    W −= lr·(NS(M1) + α·NS(M2)) / (√V + ε)."""
    M1, V, M2, chunk = (torch.zeros_like(W) for _ in range(4))
    out = []
    for t, g in enumerate(grads, 1):
        M1 = M1 + b1 * g
        V = V + b2 * g * g
        chunk = chunk + g
        if t % f == 0:
            M2, chunk = M2 + b3 * chunk, torch.zeros_like(W)
        W = W - lr * (newton_schulz_by_hand(M1) + alpha * newton_schulz_by_hand(M2)) / (V.sqrt() + eps)
        out.append(W)
    return out


@pytest.mark.parametrize("file, by_hand", [("m3.nl", m3_by_hand), ("m3_literal.nl", m3_literal_by_hand)])
def test_m3_readings_follow_their_equations(file, by_hand):
    """Both readings of M3 (docs/optimizers.md), step for step against loops written
    from their equations, over two boundaries of the slow level (t = 4, 8) and the
    steps around them, on a wide and a tall matrix and a vector. In float64 the
    momenta agree to round-off, so Newton-Schulz sees the same bfloat16 input."""
    hp = dict(lr=0.01, beta1=0.8, beta2=0.95, beta3=0.6, alpha=0.7, eps=1e-8, slow_every=4)
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 6), (6, 4), (5,)]
    W0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for _ in range(10)] for s in shapes]
    params = [nn.Parameter(w.clone()) for w in W0]
    opt = nldsl.compile_optimizer(OPTIM / file, params, **hp)
    ours = []
    for t in range(10):
        for p, gs in zip(params, grads):
            p.grad = gs[t].clone()
        opt.step()
        ours.append([p.detach().clone() for p in params])
    args = [hp[k] for k in ("lr", "beta1", "beta2", "beta3", "alpha", "eps", "slow_every")]
    for i, (w0, gs) in enumerate(zip(W0, grads)):
        want = by_hand(w0, gs, *args)
        for t in range(10):
            torch.testing.assert_close(ours[t][i], want[t], rtol=1e-12, atol=1e-12, msg=f"{shapes[i]}, step {t + 1}")
    assert not torch.equal(opt.state[params[0]]["m2"], torch.zeros(4, 6, dtype=torch.float64))


@pytest.mark.parametrize("file, hparams", [
    ("dmgd.nl", dict(lr=0.02)),
    ("delta_momentum.nl", dict(lr=0.02)),
    ("m3.nl", dict(lr=0.01)),
])
def test_new_optimizers_train_least_squares(file, hparams):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=gen)
    Y = X @ torch.randn(8, 4, generator=gen) + 0.01 * torch.randn(64, 4, generator=gen)
    W = nn.Parameter(torch.zeros(8, 4))

    def loss():
        return ((X @ W - Y) ** 2).mean()

    start = loss().item()  # the loss plain SGD starts from, too: the same W
    opt = nldsl.compile_optimizer(OPTIM / file, [W], **hparams)
    for _ in range(200):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.25 * start


# --- state, errors, code ---------------------------------------------------------------

@pytest.mark.parametrize("file", ["m3.nl", "dmgd.nl", "adam.nl"])
def test_state_dict_round_trip_continues_identically(file):
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 6, generator=gen) for _ in range(11)]
    W = nn.Parameter(torch.randn(4, 6, generator=gen))
    opt = nldsl.compile_optimizer(OPTIM / file, [W])
    for g in grads[:6]:  # m3: stop in the middle of the slow level's period (its running sum is state)
        W.grad = g.clone()
        opt.step()
    saved, W_saved = copy.deepcopy(opt.state_dict()), W.detach().clone()
    for g in grads[6:]:
        W.grad = g.clone()
        opt.step()

    W2 = nn.Parameter(W_saved.clone())
    fresh = nldsl.compile_optimizer(OPTIM / file, [W2])
    fresh.load_state_dict(saved)
    for g in grads[6:]:
        W2.grad = g.clone()
        fresh.step()
    assert torch.equal(W.detach(), W2.detach())
    assert all(torch.equal(opt.state[W][k], fresh.state[W2][k]) for k in opt.state[W])


def test_unknown_hyperparameter_or_optimizer_is_a_clear_error():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="optimizer `adam` has no hyperparameter `betta1`; did you mean `beta1`"):
        nldsl.compile_optimizer(OPTIM / "adam.nl", p, betta1=0.9)
    with pytest.raises(ValueError, match="no optimizer named `adma`; did you mean `adam`"):
        nldsl.compile_optimizer(OPTIM / "adam.nl", p, name="adma")
    with pytest.raises(TypeError, match="must be a number or a bool"):
        nldsl.compile_optimizer(OPTIM / "adam.nl", p, lr="fast")


def test_name_picks_a_definition_and_hparams_reach_sizes():
    text = ("optimizer first(lr = 1) {\n  update W -= lr * g\n}\n"
            "optimizer second(lr = 1, hidden = 2) {\n"
            "  level momentum every 1 step {\n"
            "    memory m : mlp(1, hidden: hidden)\n"
            "    learn m : dot(g, g) by gd(lr: 0.1, decay: 0.9)\n"
            "  }\n"
            "  update W -= lr * m(g)\n}\n")
    p = nn.Parameter(torch.zeros(3))
    assert nldsl.compile_optimizer(text, [p]).spec.name == "first"
    opt = nldsl.compile_optimizer(text, [p], name="second", hidden=6)
    assert opt.state[p]["m.W2"].shape == (1, 6, 1)


def test_updates_chain_in_order_and_flows_see_the_w_of_the_step_start():
    text = ("optimizer chain(lr = 0.1) {\n"
            "  flow start = W\n"
            "  update W *= 0.5\n"
            "  update W -= lr * W\n"  # the W the first update left
            "  update W += lr * start\n"  # a flow: W when g was computed
            "}\n")
    W = nn.Parameter(torch.tensor([2.0, -4.0]))
    opt = nldsl.compile_optimizer(text, [W])
    W.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(W.detach(), torch.tensor([2.0, -4.0]) * (0.5 - 0.1 * 0.5 + 0.1))


def test_fx_code_is_readable_and_reads_after_the_update():
    opt = nldsl.compile_optimizer(OPTIM / "adamw.nl", [nn.Parameter(torch.zeros(2, 2))])
    code = opt.print_readable(print_output=False)
    assert "def forward(self, g, W, step, st, hp)" in code
    assert "lr = hp['lr']" in code  # hyperparameters are read from the group at each step
    learn, read = code.index("st.learn('m', None, g"), code.index("st.read('m', None)")
    assert learn < read  # optimizers read after this step's update (docs/semantics.md §2)
    decay, adam_step = code.index("W_1 = W * sub"), code.index("W_2 = W_1 - ")
    assert decay < adam_step  # updates chain in written order
    assert "adamw.nl:9 in spec, code: update W *= 1 - lr * weight_decay" in code
    spans = [n.meta["nl_span"] for n in opt.graph.graph.nodes if "nl_span" in n.meta]
    assert {s.line for s in spans} == {3, 5, 6, 7, 9, 10}  # 3: the definition, where the hyperparameters are


# --- the outer optimizer of a model ------------------------------------------------------

CROSS = """
model tiny {
  vocab 16
  dim 8
  context 4
  batch 2
  level slow every 24 tokens { memory ffn : mlp(dim, hidden: 8) }
  block { x = x + slow(rmsnorm(x)) }
  objective next_token
  optimizer adam(lr: 1e-2)
}
"""


@pytest.mark.parametrize("line, reference", [
    ("adam(lr: 1e-2)", lambda ps: torch.optim.Adam(ps, lr=1e-2)),  # the slow part's own step count
    ("sgd(lr: 0.5)", lambda ps: torch.optim.SGD(ps, lr=0.5)),  # Adam would hide a sum in place of the mean
])
def test_cross_sequence_level_steps_every_k_on_averaged_gradients(line, reference):
    """slow: P = 24 tokens, B·T = 2·4 = 8 tokens a step, so k = 3: its weights change only
    at steps 3, 6, ..., by the optimizer on the mean of the last 3 gradients, with its own
    step count (a second torch optimizer here); everything else steps every time."""
    text = CROSS.replace("adam(lr: 1e-2)", line)
    torch.manual_seed(0)
    model = nldsl.compile(text)
    torch.manual_seed(0)
    ref = nldsl.compile(text)
    opt = model.configure_optimizer()
    assert isinstance(opt, MultiRateOptimizer) and [k for _, k in opt.parts] == [1, 3]
    slow = {n for n, _ in ref.named_parameters() if n.startswith("slow.")}
    assert slow == {"slow.0.ffn.W1", "slow.0.ffn.W2"}
    fast_ref = reference([p for n, p in ref.named_parameters() if n not in slow])
    slow_ref = reference([p for n, p in ref.named_parameters() if n in slow])
    sums = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if n in slow}
    gen = torch.Generator().manual_seed(0)
    before = dict(model.named_parameters())
    for step in range(1, 10):
        tokens = torch.randint(0, 16, (2, 5), generator=gen)
        last = {n: p.detach().clone() for n, p in before.items()}
        opt.zero_grad()
        model.loss(tokens).backward()
        opt.step()

        fast_ref.zero_grad()
        slow_ref.zero_grad()
        ref.loss(tokens).backward()
        fast_ref.step()
        for n, p in ref.named_parameters():
            if n in slow:
                sums[n] += p.grad
        if step % 3 == 0:
            for n, p in ref.named_parameters():
                if n in slow:
                    p.grad = sums[n] / 3
                    sums[n].zero_()
            slow_ref.step()

        for n, p in model.named_parameters():
            changed = not torch.equal(p.detach(), last[n])
            assert changed == (n not in slow or step % 3 == 0), (n, step)
        for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-5, msg=f"{n} at step {step}")


def test_multi_rate_state_dict_round_trip():
    torch.manual_seed(0)
    model = nldsl.compile(CROSS)
    opt = model.configure_optimizer()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 16, (2, 5), generator=gen) for _ in range(8)]

    def train(m, o, bs):
        for tokens in bs:
            o.zero_grad()
            m.loss(tokens).backward()
            o.step()

    train(model, opt, batches[:4])  # step 4: one gradient summed for the slow level's next step
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    assert saved["calls"] == 4 and saved["sums"][1][0] is not None
    train(model, opt, batches[4:])
    torch.manual_seed(1)
    again = nldsl.compile(CROSS)
    again.load_state_dict(weights)
    opt2 = again.configure_optimizer()
    opt2.load_state_dict(saved)
    train(again, opt2, batches[4:])
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_parameter_groups_matrices_and_rest():
    text = CROSS.replace("optimizer adam(lr: 1e-2)", "optimizer muon(lr: 0.02) for matrices\n"
                                                     "  optimizer adam(lr: 1e-3) for rest")
    model = nldsl.compile(text)
    opt = model.configure_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    parts = {(o.spec.name, k): sorted(names[id(p)] for g in o.param_groups for p in g["params"])
             for o, k in opt.parts}
    assert parts == {("muon", 1): ["embed", "head"], ("muon", 3): ["slow.0.ffn.W1", "slow.0.ffn.W2"],
                     ("adam", 1): ["block0.0.x.rmsnorm", "norm"]}
    assert all(isinstance(o, SpecOptimizer) for o, _ in opt.parts)
    assert len(opt.param_groups) == 3
    assert opt.parts[0][0].spec.hparams["lr"] == 0.02  # the use site's value
    assert math.isclose(opt.parts[-1][0].spec.hparams["lr"], 1e-3)
