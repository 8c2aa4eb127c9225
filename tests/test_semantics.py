"""The compiled modules against references written here from the equations of
design/semantics.md: closed forms, naive per-token loops, explicit loops over
periods, finite differences, plain torch modules. None of them calls the runtime's
memories, rules or scheduler."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.compiler import passes
from nldsl.compiler.stats import totals
from nldsl.runtime.errors import NonFiniteError
from nldsl.runtime.level import scan
from nldsl.runtime.memories import grads, read
from nldsl.runtime.model import ModelState
from test_positions import complex_rope, interleave

EXAMPLES = Path(__file__).parent.parent / "examples"


def level_of(model, name: str, copy: int = 0):
    return getattr(model, model.slots[name])[copy]


def run_level(model, name: str, x: torch.Tensor, state=None):
    """One level copy over a stream x [B, T, d], from fresh states."""
    state = state or ModelState(model, x.shape[0])
    return scan(level_of(model, name), x, state), state


def qkv(lv, x: torch.Tensor):
    """The flows q, k, v = proj(x) of a level, computed here from its weights."""
    return tuple(x @ getattr(lv, n).proj.T for n in "qkv")


def heads(t: torch.Tensor, h: int) -> torch.Tensor:  # [B, T, d] -> [B, h, T, d/h]
    return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)


def spec(level: str, *, dim=8, hds=1, context=16, extra_levels="", block=None) -> str:
    block = block or "x = x + L(rmsnorm(x))"
    return f"""model m {{
  vocab 32
  dim {dim}
  heads {hds}
  context {context}
  level L {level}
  {extra_levels}
  block {{ {block} }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------ closed forms, loops
def test_linear_attention_is_the_closed_form():
    model = nldsl.compile(EXAMPLES / "linear_attention.nl", dim=16, heads=2, context=12, depth=1).double()
    lv = level_of(model, "attn")
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    y, _ = run_level(model, "attn", x)
    q, k, v = (heads(x @ getattr(lv, n).proj.T, 2) for n in "qkv")
    # o_t = S_t q_t with S_t = Σ_{s<=t} v_s k_sᵀ: causal (q kᵀ) v
    scores = (q @ k.transpose(-1, -2)).tril()
    o = (scores @ v).transpose(1, 2).reshape(2, 12, 16)
    torch.testing.assert_close(y, o @ lv.out.proj.T)


def _causal_conv(x, w):  # x [B, T, d], w [d, width]: depthwise, left-padded
    return F.conv1d(F.pad(x.transpose(1, 2), (w.shape[1] - 1, 0)), w.unsqueeze(1), groups=w.shape[0]).transpose(1, 2)


def gated_delta_flows(lv, x, h: int):
    """The flows of the `delta` level of gated_deltanet.nl (and _nl88), computed here
    from its weights: q, k (unit per head), v, β, α = exp(−exp(A) softplus(a(x) + dt_bias))
    and the output gate."""
    def unit(t):  # l2norm per head
        s = t.reshape(*t.shape[:-1], h, -1)
        return (s / (s.norm(dim=-1, keepdim=True) + 1e-6)).reshape(t.shape)

    q = unit(F.silu(_causal_conv(x @ lv.q.proj.T, lv.q.conv)))
    k = unit(F.silu(_causal_conv(x @ lv.k.proj.T, lv.k.conv)))
    v = F.silu(_causal_conv(x @ lv.v.proj.T, lv.v.conv))
    beta = torch.sigmoid(x @ lv.beta.proj.T)
    alpha = torch.exp(-lv.alpha.learned.exp() * F.softplus(x @ lv.alpha.proj.T + lv.alpha.learned_1))
    return q, k, v, beta, alpha, F.silu(x @ lv.gate.proj.T)


def head_rmsnorm(o, weight, h: int, eps: float = 1e-5):
    """RMSNorm of each of the h slices of o, with one scale shared by the heads."""
    s = o.reshape(*o.shape[:-1], h, -1)
    return (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight).reshape(o.shape)


@pytest.mark.parametrize("example", ["gated_deltanet.nl", "gated_deltanet_nl88.nl"])
def test_gated_deltanet_is_its_papers_recurrence(example):
    """gated_deltanet.nl: Yang et al.'s S_t = α_t S_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ;
    gated_deltanet_nl88.nl: the NL paper's S_t = S_{t-1}(α_t I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ.
    o_t = S_t q_t per head, then the gated per-head RMSNorm and the output projection."""
    model = nldsl.compile(EXAMPLES / example, dim=16, heads=2, context=10, depth=1).double()
    lv = level_of(model, "delta")
    with torch.no_grad():
        lv.alpha.learned_1.fill_(0.5)  # α near 0.4 rather than 0.99: the two orders differ plainly
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y, _ = run_level(model, "delta", x)
    q, k, v, beta, alpha, gate = gated_delta_flows(lv, x, 2)
    eye = torch.eye(8, dtype=torch.float64)
    o = torch.zeros(2, 10, 16, dtype=torch.float64)
    for b in range(2):
        for h in range(2):
            sl = slice(8 * h, 8 * h + 8)
            S = torch.zeros(8, 8, dtype=torch.float64)
            for t in range(10):
                kt, vt, a, bt = k[b, t, sl], v[b, t, sl], alpha[b, t, h], beta[b, t, h]
                if example == "gated_deltanet.nl":  # decay, then the delta-rule write
                    S = a * S @ (eye - bt * torch.outer(kt, kt)) + bt * torch.outer(vt, kt)
                else:  # the gradient at S_{t-1}, then the decay
                    S = S @ (a * eye - bt * torch.outer(kt, kt)) + bt * torch.outer(vt, kt)
                o[b, t, sl] = S @ q[b, t, sl]
    torch.testing.assert_close(y, (head_rmsnorm(o, lv.out.rmsnorm, 2) * gate) @ lv.out.proj.T)


def test_softmax_attention_is_causal_attention():
    model = nldsl.compile(EXAMPLES / "transformer.nl", dim=16, heads=2, context=12, depth=1).double()
    lv = level_of(model, "attn")
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    y, _ = run_level(model, "attn", x)
    # rotary queries and keys, in the complex form over Llama's pairs (a permutation of each
    # head's coordinates that the scores do not see: tests/test_positions.py)
    q, k = (heads(complex_rope(interleave(x @ getattr(lv, n).proj.T, 2), torch.arange(12), 2), 2) for n in "qk")
    v = heads(x @ lv.v.proj.T, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 12, 16)
    torch.testing.assert_close(y, o @ lv.out.proj.T)


@pytest.mark.parametrize("read_mode,window", [("before", None), ("within", 3), ("before", 3)])
def test_attention_read_modes_and_window(read_mode, window):
    w = f", window: {window}" if window else ""
    text = spec(f"""every 1 token {{
    memory kv : attention(heads: 2{w})
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    learn kv : l2(k, v) read {read_mode}
    out kv(q)
  }}""", dim=8, hds=2)
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    y, _ = run_level(model, "L", x)
    q, k, v = (heads(x @ getattr(lv, n).proj.T, 2) for n in "qkv")
    t = torch.arange(9)
    bound = t + 1 if read_mode == "within" else t  # keys before `bound` are in the state
    visible = t[None, :] < bound[:, None]
    if window:
        visible &= t[None, :] >= bound[:, None] - window
    scores = (q @ k.transpose(-1, -2) / math.sqrt(4)).masked_fill(~visible, float("-inf"))
    p = torch.softmax(scores, -1).nan_to_num(0.0)  # the first token, reading before, sees nothing
    torch.testing.assert_close(y, (p @ v).transpose(1, 2).reshape(1, 9, 8))


def _mini_batch_reference(x, Wq, Wk, Wv, S0, lr, P, decay=1.0, within=False):
    """Explicit loop over periods: every gradient at S_j, the state at the period's start."""
    B, T, _ = x.shape
    q, k, v = x @ Wq.T, x @ Wk.T, x @ Wv.T
    out = torch.zeros_like(q)
    for b in range(B):
        S = S0.clone()
        for j in range(0, T, P):
            G = torch.zeros_like(S)
            for t in range(j, min(j + P, T)):
                G = G + lr * torch.outer(S @ k[b, t] - v[b, t], k[b, t])
                n = t - j + 1
                out[b, t] = ((decay ** n) * S - G) @ q[b, t] if within else S @ q[b, t]
            S = decay ** (min(j + P, T) - j) * S - G
    return out


@pytest.mark.parametrize("within", [False, True])
def test_mini_batch_level_equals_a_loop_over_periods(within):
    read_mode = "within" if within else "before"
    text = spec(f"""every 4 tokens {{
    memory M : linear(dim, init: normal)
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: 0.1, decay: 0.9) read {read_mode}
    out M(q)
  }}""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(2, 14, 8, dtype=torch.float64)  # 14: the last period is cut short
    y, _ = run_level(model, "L", x)
    ref = _mini_batch_reference(x, lv.q.proj, lv.k.proj, lv.v.proj, lv.M.W[0], 0.1, 4, 0.9, within)
    torch.testing.assert_close(y, ref)


def test_mlp_memory_with_momentum_equals_autograd_loop():
    """A residual MLP memory, period 4, momentum with per-item rates: the reference
    takes every inner gradient with torch.autograd from the written loss."""
    text = spec("""every 4 tokens {
    memory M : mlp(dim, hidden: 12, residual, bias)
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    flow lr = 0.1 * sigmoid(proj(x, 1))
    learn M : l2(k, v) by momentum(lr: lr, beta: 0.8, decay: 0.95)
    out M(q)
  }""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    y, _ = run_level(model, "L", x)
    q, k, v = qkv(lv, x)
    lr = 0.1 * torch.sigmoid(x @ lv.lr.proj.T)[..., 0]

    def mlp(th, e):
        return e + th["W1"] @ F.silu(th["W2"] @ e + th["b2"]) + th["b1"]

    out = torch.zeros_like(q)
    for b in range(2):
        th = {n: getattr(lv.M, n)[0].detach().clone() for n in ("W1", "W2", "b1", "b2")}
        Z = {n: torch.zeros_like(t) for n, t in th.items()}
        for j in range(0, 12, 4):
            leaves = {n: t.clone().requires_grad_() for n, t in th.items()}
            loss = sum(lr[b, t] * 0.5 * (mlp(leaves, k[b, t]) - v[b, t]).pow(2).sum() for t in range(j, j + 4))
            g = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            for t in range(j, j + 4):
                out[b, t] = mlp(th, q[b, t])
            Z = {n: 0.8 ** 4 * Z[n] - g[n] for n in th}
            th = {n: 0.95 ** 4 * th[n] + Z[n] for n in th}
    torch.testing.assert_close(y, out)


@pytest.mark.parametrize("within", [False, True])
def test_decay_first_takes_the_gradient_at_the_decayed_state(within):
    """`gd(..., decay_first)` on an MLP memory, every token: θ_t = α_t θ_{t-1} −
    η_t ∇ℓ(α_t θ_{t-1}), every tensor of θ decayed, the gradient by torch.autograd."""
    read_mode = "within" if within else "before"
    text = spec(f"""every 1 token {{
    memory M : mlp(dim, hidden: 12, bias)
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    flow lr = 0.5 * sigmoid(proj(x, 1))
    flow keep = sigmoid(proj(x, 1))
    learn M : l2(k, v) by gd(lr: lr, decay: keep, decay_first) read {read_mode}
    out M(q)
  }}""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    y, _ = run_level(model, "L", x)
    q, k, v = qkv(lv, x)
    lr, keep = (torch.sigmoid(x @ getattr(lv, n).proj.T)[..., 0] for n in ("lr", "keep"))
    lr = 0.5 * lr

    def mlp(th, e):
        return th["W1"] @ F.silu(th["W2"] @ e + th["b2"]) + th["b1"]

    out = torch.zeros_like(q)
    for b in range(2):
        th = {n: getattr(lv.M, n)[0].detach().clone() for n in ("W1", "W2", "b1", "b2")}
        for t in range(7):
            at = {n: (keep[b, t] * p).detach().requires_grad_() for n, p in th.items()}
            g = torch.autograd.grad(0.5 * (mlp(at, k[b, t]) - v[b, t]).pow(2).sum(), list(at.values()))
            new = {n: at[n].detach() - lr[b, t] * d for (n, _), d in zip(at.items(), g)}
            out[b, t] = mlp(new if within else th, q[b, t])
            th = new
    torch.testing.assert_close(y, out)


def test_self_modifying_titans_equals_a_loop_over_periods():
    """HOPE's titans level (design §7), written from its equations: per period, every
    memory is read at S_j; q, k, v pass a causal width-4 conv over the whole stream;
    keys, queries and values of unit length per head; each memory steps at every
    token by the NL paper's Eq. 90 (`per_token`),
    M_t = α_t M_{t-1} − η_t ∇ℓ_t(S_j), per head, the autograd gradient of
    η_t/2 ‖M(k_t) − M(v_t)‖² (target held constant) at S_j."""
    model = nldsl.compile(EXAMPLES / "hope.nl", dim=8, heads=2, depth=1, context=64).double()
    lv = level_of(model, "titans")
    B, T, d, h, P = 2, 40, 8, 2, 16  # 40: the last period is cut short
    x = torch.randn(B, T, d, dtype=torch.float64)
    y, st = run_level(model, "titans", x)

    names = ("k", "v", "mem", "eta", "alpha")

    def mem(th, e, residual):  # [.., d] -> [.., h, o]: per head e + W1 silu(W2 e)
        e = e.reshape(*e.shape[:-1], h, d // h)
        out = torch.einsum("hok,...hk->...ho", th["W1"], F.silu(torch.einsum("hki,...hi->...hk", th["W2"], e)))
        return out + e if residual else out

    def causal_conv(seq, w):  # seq [n, d], w [d, 4]: y_t = Σ_s w[:, s] seq_{t-3+s}
        padded = torch.cat([seq.new_zeros(3, d), seq])
        return torch.stack([(padded[t:t + 4].T * w).sum(-1) for t in range(len(seq))])

    def unit(e):  # l2norm per head
        e = e.reshape(*e.shape[:-1], h, d // h)
        return (e / (e.norm(dim=-1, keepdim=True) + 1e-6)).flatten(-2)

    q_all = x @ lv.q.proj.T
    out = torch.zeros_like(x)
    for b in range(B):
        th = {n: {w: getattr(getattr(lv, n), w).detach().clone() for w in ("W1", "W2")} for n in names}
        kx, vx = [], []
        for j in range(0, T, P):
            span = range(j, min(j + P, T))
            xs = x[b, j:span.stop]
            kx.append(mem(th["k"], xs, True).flatten(-2))
            vx.append(mem(th["v"], xs, True).flatten(-2))
            n = len(span)
            q = unit(causal_conv(q_all[b, :span.stop], lv.q.conv)[-n:])
            key = unit(causal_conv(torch.cat(kx), lv.key_.conv)[-n:])
            val = unit(causal_conv(torch.cat(vx), lv.val.conv)[-n:])
            lr = 0.01 * torch.sigmoid(mem(th["eta"], xs, False)[..., 0])  # [n, h]
            keep = torch.sigmoid(mem(th["alpha"], xs, False)[..., 0] + lv.keep.learned)
            out[b, j:span.stop] = mem(th["mem"], q, True).flatten(-2)
            new = {}
            for name in names:
                residual = name not in ("eta", "alpha")
                target = mem(th[name], val, residual).detach()
                M = th[name]
                for i in range(n):  # token by token, every gradient at the period's start
                    leaves = {w: t.clone().requires_grad_() for w, t in th[name].items()}
                    loss = (lr[i, :, None] * 0.5 * (mem(leaves, key[i], residual) - target[i]) ** 2).sum()
                    g = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
                    M = {w: keep[i, :, None, None] * M[w] - g[w] for w in M}
                new[name] = M
            if span.stop - j == P:  # a period cut short by the stream's end waits for its boundary
                th = new
        for name in names:
            for w in ("W1", "W2"):
                torch.testing.assert_close(st.levels["titans.0"].theta(name)[w][b], th[name][w])
    torch.testing.assert_close(y, out)


@pytest.mark.parametrize("value", [0.1, 0.3])
def test_a_learned_rate_is_an_outer_scalar(value):
    """`lr: learned(0.1)`: one scalar of the outer level, starting at 0.1; the output
    and its gradient to the scalar equal the period loop's with that rate."""
    text = spec("""every 4 tokens {
    memory M : linear(dim, init: normal)
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: learned(0.1), decay: 0.9)
    out M(q)
  }""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    rate = lv.M.lr.learned
    assert rate.item() == pytest.approx(0.1) and rate.requires_grad
    with torch.no_grad():
        rate.fill_(value)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    y, _ = run_level(model, "L", x)
    ref_rate = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    ref = _mini_batch_reference(x, lv.q.proj, lv.k.proj, lv.v.proj, lv.M.W[0], ref_rate, 4, 0.9)
    torch.testing.assert_close(y, ref)
    probe = torch.randn_like(y)
    (got,) = torch.autograd.grad((y * probe).sum(), [rate])
    (want,) = torch.autograd.grad((ref * probe).sum(), [ref_rate])
    torch.testing.assert_close(got, want)


def test_independent_cms_with_a_frozen_level_is_plain_torch():
    """The `independent` CMS wiring x + w_a a(h) + w_b b(h) with `learned` weights,
    then a `frozen` linear level, against the same model written in plain torch: equal
    logits and gradients; an optimizer step moves the weights and leaves the frozen
    level as it was (a buffer, never a parameter)."""
    text = """model m {
  vocab 32
  dim 8
  context 8
  level a outer { memory f : mlp(dim, hidden: 16) }
  level b outer { memory f : mlp(dim, hidden: 16) }
  level t frozen { memory f : linear(dim, init: normal) }
  block {
    h = rmsnorm(x)
    x = x + learned(0.5) * a(h) + learned(2) * b(h)
    x = t(x)
  }
  objective next_token
  optimizer adam(lr: 1e-2)
}"""
    model = nldsl.compile(text).double()
    P = dict(model.named_parameters())
    frozen = model.get_buffer("t.0.f.W")
    assert not any(p is frozen for p in P.values())
    assert P["block0.0.x.learned"].item() == 0.5 and P["block0.0.x.learned_1"].item() == 2.0

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def mlp(name, x):
        return F.silu(x @ P[f"{name}.0.f.W2"][0].T) @ P[f"{name}.0.f.W1"][0].T

    tokens = torch.randint(0, 32, (3, 8))
    x = F.embedding(tokens, P["embed"])
    h = norm(x, P["block0.0.h.rmsnorm"])
    x = x + P["block0.0.x.learned"] * mlp("a", h) + P["block0.0.x.learned_1"] * mlp("b", h)
    x = x @ frozen[0].T
    want = norm(x, P["norm"]) @ P["head"].T
    got, _ = model(tokens)
    torch.testing.assert_close(got, want)
    probe = torch.randn_like(got)
    names = list(P)
    g_got = torch.autograd.grad((got * probe).sum(), [P[n] for n in names])
    g_want = torch.autograd.grad((want * probe).sum(), [P[n] for n in names])
    for n, a, b in zip(names, g_got, g_want):
        torch.testing.assert_close(a, b, msg=n)

    before = frozen.clone()
    weights = {n: p.detach().clone() for n, p in P.items()}
    opt = model.configure_optimizer()
    model.loss(tokens).backward()
    opt.step()
    assert torch.equal(model.get_buffer("t.0.f.W"), before)
    assert all(not torch.equal(P[n], weights[n]) for n in ("block0.0.x.learned", "a.0.f.W1", "embed"))


def test_implicit_rule_with_unit_keys_rescales_the_rate():
    """Period 1: the exact proximal step is a delta rule with η' = η/(1+η‖k‖²)
    (Sherman-Morrison), η/(1+η) for unit keys, the paper's η'."""
    text = spec("""every 1 token {
    memory M : linear(dim, init: normal)
    flow q = proj(x)
    flow k = l2norm(proj(x))
    flow v = proj(x)
    learn M : l2(k, v) by implicit(lr: 0.5)
    out M(q)
  }""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    y, st = run_level(model, "L", x)
    q, k, v = qkv(lv, x)
    k = k / (k.norm(dim=-1, keepdim=True) + 1e-6)  # l2norm, unit up to its 1e-6
    assert torch.allclose(k.norm(dim=-1), torch.ones(1, 6, dtype=torch.float64), atol=1e-5)
    S = lv.M.W[0].detach().clone()
    for t in range(6):
        torch.testing.assert_close(y[0, t], S @ q[0, t])  # read before: S_{t-1}
        eta = 0.5 / (1 + 0.5 * k[0, t] @ k[0, t])
        S = S - eta * torch.outer(S @ k[0, t] - v[0, t], k[0, t])
    torch.testing.assert_close(st.levels["L.0"].fast["M"].theta["W"][0, 0], S)


def test_feed_forward_is_swiglu():
    """transformer.nl's ffn, a level of flows with period `outer`, is Llama's SwiGLU block
    w2(silu(w1 x) · w3 x)."""
    model = nldsl.compile(EXAMPLES / "transformer.nl", dim=16, heads=2, context=8, depth=1)
    lv = level_of(model, "ffn")
    w1, w3, w2 = (torch.nn.Linear(*shape, bias=False) for shape in ((16, 48), (16, 48), (48, 16)))
    with torch.no_grad():
        w1.weight.copy_(lv.h.proj)
        w3.weight.copy_(lv.h.proj_1)
        w2.weight.copy_(lv.out.proj)
    x = torch.randn(3, 8, 16)
    y, _ = run_level(model, "ffn", x)
    torch.testing.assert_close(y, w2(F.silu(w1(x)) * w3(x)))


def test_closed_form_gradients_equal_autograd():
    B, n, h, d, hid = 2, 5, 2, 6, 8
    for kind, objective, act in [("linear", "l2", "silu"), ("linear", "dot", "silu"), ("mlp", "l2", "gelu"),
                                 ("mlp", "dot", "tanh"), ("mlp", "l2", "relu"), ("mlp", "l2", "sigmoid")]:
        if kind == "linear":
            theta = {"W": torch.randn(B, h, d // h, d // h, dtype=torch.float64)}
        else:
            theta = {"W2": torch.randn(B, h, hid // h, d // h, dtype=torch.float64),
                     "W1": torch.randn(B, h, d // h, hid // h, dtype=torch.float64),
                     "b2": torch.randn(B, h, hid // h, dtype=torch.float64),
                     "b1": torch.randn(B, h, d // h, dtype=torch.float64)}
        k, v = torch.randn(B, n, d, dtype=torch.float64), torch.randn(B, n, d, dtype=torch.float64)
        rate = torch.rand(B, n, h, dtype=torch.float64)
        leaves = {name: t.clone().requires_grad_() for name, t in theta.items()}
        y = read(kind, leaves, k, h, act, residual=True).reshape(B, n, h, d // h)
        vv = v.reshape(B, n, h, d // h)
        per = 0.5 * (y - vv).pow(2).sum(-1) if objective == "l2" else -(y * vv).sum(-1)
        auto = torch.autograd.grad((rate * per).sum(), list(leaves.values()))
        closed = grads(kind, objective, theta, k, v, rate, h, act, residual=True)
        for name, a in zip(leaves, auto):
            torch.testing.assert_close(closed[name], a, msg=f"{kind} {objective} {act} {name}")


# ------------------------------------------------------------ sequences, streaming
def _hope(**kw):
    return nldsl.compile(EXAMPLES / "hope.nl", **({"dim": 16, "heads": 2, "context": 64, "depth": 1} | kw))


def test_a_batch_is_independent_sequences():
    model = _hope()
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        both, _ = model(tokens)
        one, _ = model(tokens[:1])
        two, _ = model(tokens[1:])
    torch.testing.assert_close(both, torch.cat([one, two]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("example,cut", [("hope.nl", 23), ("hope.nl", 64), ("gated_deltanet.nl", 7),
                                         ("transformer.nl", 9)])
def test_streaming_equals_one_call(example, cut):
    model = nldsl.compile(EXAMPLES / example, dim=16, heads=2, context=64, depth=2)
    tokens = torch.randint(0, 256, (2, 80))
    with torch.no_grad():
        whole, _ = model(tokens)
        first, state = model(tokens[:, :cut])
        second, state = model(tokens[:, cut:], state)
        if example == "hope.nl":  # and one token at a time, from the cut on
            _, st = model(tokens[:, :cut])
            steps = [model(tokens[:, i:i + 1], st)[0] for i in range(cut, cut + 6)]
            torch.testing.assert_close(torch.cat(steps, 1), whole[:, cut:cut + 6], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-4)


def test_a_conv_in_a_block_carries_over_between_calls():
    model = nldsl.compile(spec("outer { memory f : mlp(dim) }", block="x = x + L(conv(rmsnorm(x), 3))"))
    tokens = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        whole, _ = model(tokens)
        first, state = model(tokens[:, :4])
        second, _ = model(tokens[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_streaming_with_gradients_equals_one_call():
    model = _hope()
    tokens = torch.randint(0, 256, (1, 48))
    whole, _ = model(tokens)
    a, st = model(tokens[:, :30])
    b, _ = model(tokens[:, 30:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=1e-4)
    g1 = torch.autograd.grad(whole.square().sum(), level_of(model, "titans").k.W1)[0]
    g2 = torch.autograd.grad(torch.cat([a, b], 1).square().sum(), level_of(model, "titans").k.W1)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------ gradients through inner updates
def _gradcheck_level(text, param_path, T=6):
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(1, T, 8, dtype=torch.float64)
    param = lv.get_parameter(param_path)
    probe = torch.randn(1, T, 8, dtype=torch.float64)

    def f(theta0):
        with torch.no_grad():
            param.copy_(theta0)
        y, _ = run_level(model, "L", x)
        return (y * probe).sum()

    def grad_of(theta0):
        with torch.no_grad():
            param.copy_(theta0)
        y, _ = run_level(model, "L", x)
        return torch.autograd.grad((y * probe).sum(), param)[0]

    theta0 = param.detach().clone()
    analytic = grad_of(theta0)
    numeric = torch.zeros_like(theta0)
    eps = 1e-6
    flat = numeric.view(-1)
    for i in range(flat.numel()):
        d = torch.zeros_like(theta0).view(-1)
        d[i] = eps
        flat[i] = (f(theta0 + d.view_as(theta0)) - f(theta0 - d.view_as(theta0))) / (2 * eps)
    return analytic, numeric


@pytest.mark.parametrize("memory,rule", [("linear(dim, init: normal)", "gd(lr: 0.3, decay: 0.9)"),
                                         ("mlp(dim, hidden: 4, residual)", "momentum(lr: 0.2, beta: 0.5)"),
                                         ("linear(dim, init: normal)", "implicit(lr: 0.5)")])
def test_gradient_to_initial_state_matches_finite_differences(memory, rule):
    text = spec(f"""every 2 tokens {{
    memory M : {memory}
    flow q = proj(x)
    flow k = l2norm(proj(x))
    flow v = proj(x)
    learn M : l2(k, self(v)) by {rule}
    out M(q)
  }}""")
    path = "M.W" if memory.startswith("linear") else "M.W2"
    analytic, numeric = _gradcheck_level(text, path)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-5)


def test_detach_gives_the_first_order_gradient():
    """With `detach`, ∂S'/∂S drops the Hessian term: S' = αS − η∇ℓ(sg(S)).
    Reference: the loop written with the inner gradient of a detached state."""
    text = spec("""every 1 token {
    memory M : linear(dim, init: normal, detach)
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: 0.2, decay: 0.9)
    out M(q)
  }""")
    model = nldsl.compile(text).double()
    lv = level_of(model, "L")
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    probe = torch.randn(1, 5, 8, dtype=torch.float64)
    y, _ = run_level(model, "L", x)
    ours = torch.autograd.grad((y * probe).sum(), lv.M.W)[0]
    q, k, v = qkv(lv, x)
    S0 = lv.M.W[0].detach().clone().requires_grad_()
    S, out = S0, []
    for t in range(5):
        out.append(S @ q[0, t])
        Sd = S.detach()
        S = 0.9 * S - 0.2 * torch.outer(Sd @ k[0, t] - v[0, t], k[0, t])
    ref = torch.autograd.grad((torch.stack(out) * probe[0]).sum(), S0)[0]
    torch.testing.assert_close(ours[0], ref)
    exact_text = text.replace(", detach", "")
    model2 = nldsl.compile(exact_text).double()
    model2.load_state_dict(model.state_dict())
    y2, _ = run_level(model2, "L", x)
    exact = torch.autograd.grad((y2 * probe).sum(), level_of(model2, "L").M.W)[0]
    assert not torch.allclose(exact, ours)  # the two really differ


# ------------------------------------------------------------ task levels, nested CMS
def _cms_task(period=4):
    return spec(f"""every {period} tokens {{
    memory ffn : mlp(dim, hidden: 16)
    learn ffn : task by gd(lr: 0.05)
  }}""", context=16)


def test_task_level_takes_the_gradient_of_its_period_loss():
    """After the first period, the level's state is θ₀ − η ∇θ₀ Σ CE over the pairs of
    that period; the tokens after it read exactly that state."""
    model = nldsl.compile(_cms_task()).double()
    tokens = torch.randint(0, 32, (1, 8))
    logits, _ = model(tokens)
    lv = level_of(model, "L")
    first, _ = model(tokens[:, :4])
    loss = F.cross_entropy(first[0, :3], tokens[0, 1:4], reduction="sum")
    g = torch.autograd.grad(loss, [lv.ffn.W1, lv.ffn.W2])
    model2 = nldsl.compile(_cms_task()).double()
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        level_of(model2, "L").ffn.W1 -= 0.05 * g[0]
        level_of(model2, "L").ffn.W2 -= 0.05 * g[1]
    second, _ = model2(tokens[:, 4:])
    torch.testing.assert_close(logits[:, 4:], second)
    torch.testing.assert_close(logits[:, :4], first)


def test_nested_cms_restarts_from_the_slower_level():
    text = spec("""every 2 tokens {
    memory ffn : mlp(dim, hidden: 8, init: S.ffn)
    learn ffn : task by gd(lr: 0.1)
  }""", extra_levels="""level S every 4 tokens {
    memory ffn : mlp(dim, hidden: 8)
    learn ffn : task by gd(lr: 0.1)
  }""", block="x = x + L(rmsnorm(x))\n x = x + S(rmsnorm(x))")
    model = nldsl.compile(text)
    assert not any("L.0.ffn" in n for n, _ in model.named_parameters())  # no θ₀ of its own
    tokens = torch.randint(0, 32, (1, 8))
    st = ModelState(model, 1)
    _, st = model(tokens[:, :4], st)
    fast, slow = st.levels["L.0"].fast["ffn"], st.levels["S.0"].fast["ffn"]
    for k in fast.theta:
        torch.testing.assert_close(fast.theta[k], slow.theta[k])
    _, st = model(tokens[:, 4:6], st)
    assert not torch.allclose(fast.theta["W1"], slow.theta["W1"])  # moved on its own in between


# ------------------------------------------------------------ faults and counts
def test_nan_in_an_inner_update_names_level_memory_and_token():
    text = spec("""every 2 tokens {
    memory M : linear(dim, init: normal)
    flow k = proj(x)
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: 1e15)
    out M(k)
  }""")
    model = nldsl.compile(text)
    with torch.no_grad():
        level_of(model, "L").k.proj.mul_(1e10)
    tokens = torch.randint(0, 32, (1, 16))
    with pytest.raises(NonFiniteError) as e:
        model(tokens)
    assert "level `L.0`" in str(e.value) and "memory `M`" in str(e.value) and "token" in str(e.value)
    clipped = nldsl.compile(text, inner_clip=1.0)
    clipped.load_state_dict(model.state_dict())
    logits, _ = clipped(tokens)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.nl")))
def test_stats_parameter_count_equals_the_module(example):
    program = nldsl.check(EXAMPLES / example, dim=16, heads=2, context=64)
    for m in program.models:
        model = nldsl.compile(EXAMPLES / example, name=m.name, dim=16, heads=2, context=64)
        assert totals(passes.run(m))["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.nl")))
def test_every_example_trains_a_step(example):
    program = nldsl.check(EXAMPLES / example)
    for m in program.models:
        model = nldsl.compile(EXAMPLES / example, name=m.name, dim=16, heads=2, context=64, depth=1)
        tokens = torch.randint(0, 256, (2, 33))
        loss = model.loss(tokens)
        loss.backward()
        assert math.isfinite(loss.item())
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), m.name
