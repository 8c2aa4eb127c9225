"""TTT-Linear and TTT-MLP (Sun et al. 2024, "Learning to (Learn at Test Time)") against a
loop written here from the paper's equations, float64, on the reference and the fused path:

    f(x; θ) = x + LN(f_res(x; θ)),   f_res = W x (linear) or W₁ gelu(W₂ x + b₂) + b₁ (mlp),
    ℓ(θ; t) = ½ ‖f(k_t; θ) − v_t‖²,
    mini-batch gradient descent over b tokens, primal form, token by token:
    θ_t = θ_{t−1} − (η_t / b) ∇ℓ(θ_t'; t),   z_t = f(q_t; θ_t),

with t' the start of t's mini-batch, LN torch's own layer norm per head (ε = 1e-6) with
a scale and bias per head, and the inner gradient by torch.autograd through it. The
spec writes this as `l2(k, v, mean) by gd(lr: eta) read within` on a memory with
`residual, norm`. Also: the outer gradient (to θ₀, the norm's scale and bias, a rate's
projection) of both paths equals the loop's, which differentiates through its own inner
gradients; and the diagnostics of `mean` and `norm`."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.compiler.diagnostics import NLError, Report
from nldsl.compiler.driver import check
from nldsl.runtime.level import scan
from nldsl.runtime.model import ModelState

SPEC = """model m {{
  vocab 32
  dim 8
  heads 2
  context 32
  level L every {P} tokens {{
    memory M : {memory}
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    flow eta = 0.5 * sigmoid(proj(x, heads))
    learn M : l2(k, v, mean) by gd(lr: eta) read within
    out M(q)
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""
MEMORIES = {"linear": "linear(dim, residual, norm, init: normal, heads: heads)",
            "mlp": "mlp(dim, hidden: 16, act: gelu, residual, bias, norm, heads: heads)"}
B, T, D, H, P, CUT = 2, 10, 8, 2, 4, 6  # 10 tokens: the last mini-batch is cut short; 6: mid-batch


def f(theta: dict, scale, bias, x):
    """The inner model on x [B, h, i] per head: x + LN(f_res(x)), LN with torch's layer norm."""
    if "W" in theta:
        y = torch.einsum("bhoi,bhi->bho", theta["W"], x)
    else:
        z = torch.einsum("bhki,bhi->bhk", theta["W2"], x) + theta["b2"]
        y = torch.einsum("bhok,bhk->bho", theta["W1"], F.gelu(z)) + theta["b1"]
    return x + F.layer_norm(y, y.shape[-1:], eps=1e-6) * scale + bias


def loop(theta0: dict, scale, bias, q, k, v, eta, within: bool = True):
    """z_t [B, T, h, o] of the paper's mini-batch TTT, its primal form, and θ at the start
    of the last mini-batch (`within`: z_t = f(q_t; θ_t); else f(q_t; θ_t'), the state
    the mini-batch started with). Differentiable in θ₀, the norm and the rates (create_graph)."""
    theta = {n: t.expand(B, *t.shape) for n, t in theta0.items()}
    out = []
    for start in range(0, T, P):
        at = theta  # θ_t': every gradient of the mini-batch is taken here
        for t in range(start, min(start + P, T)):
            loss = (0.5 * (f(at, scale, bias, k[:, t]) - v[:, t]).pow(2).sum(-1) * eta[:, t] / P).sum()
            g = torch.autograd.grad(loss, list(at.values()), create_graph=True)
            theta = {n: theta[n] - gn for n, gn in zip(at, g)}
            out.append(f(theta if within else at, scale, bias, q[:, t]))
        last = at if start + P > T else theta
    return torch.stack(out, 1), last


def per_head(t):
    return t.reshape(*t.shape[:-1], H, -1)


def streamed(model, x):
    lv = getattr(model, model.slots["L"])[0]
    state = ModelState(model, B)
    y = torch.cat([scan(lv, x[:, :CUT], state), scan(lv, x[:, CUT:], state)], 1)
    return y, state.levels[lv.key].theta("M")


@pytest.mark.parametrize("read", ["within", "before"])
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_ttt_layers_equal_the_papers_mini_batch_loop(memory, read):
    """Read within, the paper's; read before, the state of the mini-batch's start, which
    the fused path reads and differentiates in its head-major formulas."""
    torch.manual_seed(0)
    text = SPEC.format(P=P, memory=MEMORIES[memory]).replace("read within", f"read {read}")
    ref = nldsl.compile(text, fused=False).double()
    fused = nldsl.compile(text).double()
    lv = getattr(ref, ref.slots["L"])[0]
    with torch.no_grad():  # a norm that is not the identity's, so that its scale and bias are seen
        lv.M.norm_scale.uniform_(0.5, 1.5)
        lv.M.norm_bias.normal_(0, 0.3)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, D, dtype=torch.float64)
    proj = {n: x @ getattr(lv, n).proj.T for n in ("q", "k", "v", "eta")}
    q, k, v = (per_head(proj[n]) for n in "qkv")
    eta = 0.5 * torch.sigmoid(proj["eta"])
    theta0 = dict(lv.M.named_parameters())
    scale, bias = theta0.pop("norm_scale"), theta0.pop("norm_bias")
    want, want_S = loop(theta0, scale, bias, q, k, v, eta, within=read == "within")
    want = want.flatten(-2)
    leaves = [lv.M.W if memory == "linear" else lv.M.W1, lv.M.norm_scale, lv.M.norm_bias, lv.eta.proj]
    want_grads = torch.autograd.grad((want * want.detach().sin()).sum(), leaves)
    for model in (ref, fused):
        y, S = streamed(model, x)
        assert (y - want).abs().max() <= 1e-9
        for n in want_S:
            assert (S[n] - want_S[n]).abs().max() <= 1e-9, n
        mlv = getattr(model, model.slots["L"])[0]
        mine = [mlv.M.W if memory == "linear" else mlv.M.W1, mlv.M.norm_scale, mlv.M.norm_bias, mlv.eta.proj]
        got = torch.autograd.grad((y * want.detach().sin()).sum(), mine)
        for g, w in zip(got, want_grads):
            assert (g - w).abs().max() <= 1e-9 * max(1.0, w.abs().max().item())


@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_gradients_through_the_norm_equal_autograd(kind, objective):
    """The written-out gradients through a memory's layer norm, in both layouts (and each
    item's term), equal autograd's of the loss written with torch's layer norm."""
    from nldsl.runtime import memories as M

    torch.manual_seed(0)
    n, d = 5, 8
    shapes = {"W": (H, d // H, d // H)} if kind == "linear" else \
        {"W2": (H, 6, d // H), "W1": (H, d // H, 6), "b2": (H, 6), "b1": (H, d // H)}
    theta = {k: torch.randn(B, *s, dtype=torch.float64) for k, s in shapes.items()}
    norm = (torch.rand(H, d // H, dtype=torch.float64) + 0.5, torch.randn(H, d // H, dtype=torch.float64))
    key, value = torch.randn(B, n, d, dtype=torch.float64), torch.randn(B, n, d, dtype=torch.float64)
    rate = torch.rand(B, n, H, dtype=torch.float64)
    leaves = {k: t.clone().requires_grad_() for k, t in theta.items()}
    y = torch.stack([f(leaves, *norm, per_head(key[:, i])) if kind == "linear" else
                     _mlp_silu(leaves, norm, per_head(key[:, i])) for i in range(n)], 1)
    v = per_head(value)
    item = 0.5 * (y - v).pow(2).sum(-1) if objective == "l2" else -(y * v).sum(-1)
    want = torch.autograd.grad((rate * item).sum(), list(leaves.values()))
    act = "silu"  # the mlp's; a linear memory has none
    for headmajor in (False, True):
        got = M.grads(kind, objective, theta, key, value, rate, H, act, True, headmajor=headmajor, norm=norm)
        for name, w in zip(leaves, want):
            assert (got[name] - w).abs().max() <= 1e-12, (name, headmajor)
    each = M.grads(kind, objective, theta, key, value, rate, H, act, True, per_item=True, norm=norm)
    for name, w in zip(leaves, want):
        assert (each[name].sum(1) - w).abs().max() <= 1e-12
    got_y = M.read(kind, theta, key, H, act, True, headmajor=True, norm=norm)
    assert (got_y - y.detach().flatten(-2)).abs().max() <= 1e-12


def _mlp_silu(theta, norm, x):
    """The mlp inner model with silu (the kinds' default), x + LN(W1 silu(W2 x + b2) + b1)."""
    z = torch.einsum("bhki,bhi->bhk", theta["W2"], x) + theta["b2"]
    y = torch.einsum("bhok,bhk->bho", theta["W1"], F.silu(z)) + theta["b1"]
    return x + F.layer_norm(y, y.shape[-1:], eps=1e-6) * norm[0] + norm[1]


def test_mean_divides_every_gradient_by_the_period():
    """`mean` is the rate over P, whatever the path: written out, the two models agree."""
    torch.manual_seed(0)
    mean = nldsl.compile(SPEC.format(P=P, memory=MEMORIES["linear"])).double()
    spelled = nldsl.compile(SPEC.format(P=P, memory=MEMORIES["linear"]).replace(
        "l2(k, v, mean) by gd(lr: eta)", f"l2(k, v) by gd(lr: eta / {P})")).double()
    spelled.load_state_dict(mean.state_dict())
    tokens = torch.randint(0, 32, (B, T))
    with torch.no_grad():
        a, b = mean(tokens)[0], spelled(tokens)[0]
    assert (a - b).abs().max() <= 1e-12
    plain = nldsl.compile(SPEC.format(P=P, memory=MEMORIES["linear"]).replace(", mean)", ")")).double()
    plain.load_state_dict(mean.state_dict())
    with torch.no_grad():
        assert (plain(tokens)[0] - a).abs().max() > 1e-6


def test_a_residual_linear_memory_runs_chunk_parallel_and_equals_the_reference():
    """Without `norm`, a residual linear memory keeps the chunk-parallel form (W k regressed
    on v − k, the read plus q), and its outputs and gradients equal the reference's."""
    torch.manual_seed(0)
    text = SPEC.format(P=P, memory="linear(dim, residual, init: normal, heads: heads)")
    ref, fused = nldsl.compile(text, fused=False).double(), nldsl.compile(text).double()
    fused.load_state_dict(ref.state_dict())
    assert getattr(fused, fused.slots["L"])[0].desc.memories[0].form == "chunk"
    tokens = torch.randint(0, 32, (B, T))
    outs = []
    for model in (ref, fused):
        y = model(tokens)[0]
        outs.append((y, torch.autograd.grad(y.sin().sum(), [p for _, p in sorted(model.named_parameters())])))
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-10
    for a, b in zip(outs[0][1], outs[1][1]):
        assert (a - b).abs().max() <= 1e-10


def test_a_residual_linear_memory_in_the_gated_delta_rule_kernel():
    """At period 1 the chunk form may run as Triton's gated delta rule, which is handed
    v − k as well (float32: the kernel computes in float32)."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    text = SPEC.format(P=1, memory="linear(dim, residual, init: normal, heads: heads)").replace(", mean)", ")")
    text = text.replace("every 1 tokens", "every 1 token")
    ref, kernel = nldsl.compile(text, fused=False), nldsl.compile(text, kernels="triton")
    kernel.load_state_dict(ref.state_dict())
    assert getattr(kernel, kernel.slots["L"])[0].desc.memories[0].triton == "gated_delta_rule"
    tokens = torch.randint(0, 32, (B, T))
    with torch.no_grad():
        assert (ref(tokens)[0] - kernel(tokens)[0]).abs().max() <= 1e-4


def test_norm_keeps_memories_off_the_fast_forms_that_cannot_differentiate_it():
    """A memory with `norm` runs period by period on the fused path (no chunk form, no
    mlp period node, no kernel) and is never stacked with another."""
    for kind in MEMORIES:  # read before: the mlp would otherwise take the period node and the kernel
        text = SPEC.format(P=P, memory=MEMORIES[kind]).replace(" read within", "")
        text = text.replace("memory M :", "memory M, N :").replace("learn M :", "learn M, N :")
        text = text.replace("out M(q)", "out M(q) + N(q)")
        model = nldsl.compile(text)
        desc = getattr(model, model.slots["L"])[0].desc
        assert desc.parallel and desc.stacks == ()
        assert [(m.norm, m.form, m.triton) for m in desc.memories] == [(True, None, None)] * 2


HEAD = "vocab 10\ndim 8\nheads 2\ncontext 32\n"
TAIL = "objective next_token\noptimizer adamw(lr: 1e-3)\n"


@pytest.mark.parametrize("body, code, line, col", [
    # the norm of one number per head is its bias alone
    ("level a every 4 tokens {\nmemory M : mlp(dim -> heads, norm, heads: heads)\n"
     "learn M : l2(x, proj(x, heads)) by gd(lr: 0.1) }", "NL130", 7, 12),
    # attention memories have no `norm`
    ("level a every 1 token {\nmemory kv : attention(heads: heads, norm)\nlearn kv : l2(x, x) read within\n"
     "out kv(x) }", "NL113", 7, 37),
    # the exact proximal step has no closed form through a layer norm
    ("level a every 1 token {\nmemory M : linear(dim, norm)\nlearn M : l2(x, x) by implicit(lr: 0.1) }",
     "NL112", 8, 23),
    # attention appends: there is no rate to divide
    ("level a every 1 token {\nmemory kv : attention(heads: heads)\nlearn kv : l2(x, x, mean) read within\n"
     "out kv(x) }", "NL112", 8, 21),
    # mean over a period of one token changes nothing: a warning
    ("level a every 1 token {\nmemory M : linear(dim)\nlearn M : l2(x, x, mean) by gd(lr: 0.1) }", "NL118", 8, 20),
])
def test_bad_uses_of_mean_and_norm_are_located(body, code, line, col):
    report = Report()
    with pytest.raises(NLError) if code != "NL118" else contextlib.nullcontext():
        check(f"model m {{\n{HEAD}{body}\nblock {{ x = x + a(x) }}\n{TAIL}}}\n", report)
    (d,) = [d for d in report.diagnostics if d.code == code]
    assert (d.span.line, d.span.col) == (line, col)


def test_mean_in_an_optimizer_level_is_an_error():
    text = ("optimizer o(lr = 0.1) {\n  level mom every 2 steps {\n    memory m : elementwise\n"
            "    learn m : dot(g, mean) by gd(lr: 1, decay: 0.9)\n  }\n  update W -= lr * m\n}\n"
            f"model m {{\n{HEAD}level f outer {{ memory f : mlp(dim) }}\nblock {{ x = x + f(x) }}\n"
            "objective next_token\noptimizer o(lr: 0.1)\n}\n")
    report = Report()
    with pytest.raises(NLError):
        check(text, report)
    (d,) = report.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("NL112", 4, 22)
