"""Titans' memory rules against loops written here from their equations, in plain torch
(the inner gradients by torch.autograd of the written loss), float64:

- one update per chunk (design §5; titans-pytorch's NeuralMemory with batch_size = chunk):
      Z_{j+1} = (Π β_t) Z_j − Σ_t η_t ∇ℓ_t(S_j),   S_{j+1} = (Π α_t) S_j + Z_{j+1};
- the paper's mini-batch rule (`per_token`; Titans Eqs. 13-14 with every gradient of a
  chunk at the state M_{t'} it started with, §3.2):
      Z_t = β_t Z_{t−1} − η_t ∇ℓ_t(S_{t'}),   S_t = α_t S_{t−1} + Z_t,
  and gd likewise without Z (the Nested Learning paper's Eq. 90, HOPE's chunk-wise rule).

η, β and α are data-dependent, one per token and head (Titans' θ_t, η_t and 1 − α_t).
A read before sees the chunk's start state; a read within sees the state after token t
(one update per chunk: the period's steps up to t at its start state; per token: S_t).
The stream is fed in two calls cut mid-period, on the reference and the fused path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.runtime.level import scan
from nldsl.runtime.model import ModelState

SPEC = """model m {{
  vocab 32
  dim 8
  heads 2
  context 32
  level L every {P} token{s} {{
    memory M : {memory}
    flow q = proj(x)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = 0.5 * sigmoid(proj(x, heads))
    flow beta = sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    learn M : l2(k, v) by {rule} read {read}
    out M(q)
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""
MEMORIES = {"linear": "linear(dim, heads: heads, init: normal)", "mlp": "mlp(dim, hidden: 8, heads: heads)"}
RULES = {"momentum": "momentum(lr: eta, beta: beta, decay: keep{flag})", "gd": "gd(lr: eta, decay: keep{flag})"}
B, T, D, H, CUT = 2, 20, 8, 2, 6  # 20 tokens: the last period of 16 is cut short; 6: mid-period


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def per_head(t: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, T, h, d/h]
    return t.reshape(*t.shape[:-1], H, -1)


def read(S: dict, e: torch.Tensor) -> torch.Tensor:
    """M(e) per head, e [B, h, i]: W e, or W1 silu(W2 e)."""
    if "W" in S:
        return torch.einsum("bhoi,bhi->bho", S["W"], e)
    return torch.einsum("bhok,bhk->bho", S["W1"], F.silu(torch.einsum("bhki,bhi->bhk", S["W2"], e)))


def step(S: dict, k, v, eta) -> dict:
    """η_t ∇ℓ_t(S) with ℓ = ½‖M(k_t) − v_t‖², per sequence and head, by autograd."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in S.items()}
    loss = (eta[..., None] * 0.5 * (read(leaves, k) - v).pow(2)).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def loop(theta0: dict, q, k, v, eta, beta, alpha, P: int, per_token: bool, momentum: bool, within: bool):
    """The level's outputs [B, T, h, o] and the state the last period started with."""
    head = lambda r: r[..., None, None]  # noqa: E731  [B, h] onto [B, h, o, i]
    S = {n: t.expand(B, *t.shape).clone() for n, t in theta0.items()}
    Z = {n: torch.zeros_like(t) for n, t in S.items()}
    out = torch.zeros(B, T, H, D // H, dtype=q.dtype)
    for j in range(0, T, P):
        start, Z_start = dict(S), dict(Z)  # the gradients' point, S_j, and Z_j
        G = {n: torch.zeros_like(t) for n, t in S.items()}
        a = b = torch.ones(B, H, dtype=q.dtype)
        for t in range(j, min(j + P, T)):
            g = step(start, k[:, t], v[:, t], eta[:, t])
            if per_token:
                if momentum:
                    Z = {n: head(beta[:, t]) * Z[n] - g[n] for n in S}
                    S = {n: head(alpha[:, t]) * S[n] + Z[n] for n in S}
                else:
                    S = {n: head(alpha[:, t]) * S[n] - g[n] for n in S}
                now = S
            else:
                G = {n: G[n] + g[n] for n in S}
                a, b = a * alpha[:, t], b * beta[:, t]
                moved = {n: head(b) * Z_start[n] - G[n] for n in S} if momentum else {n: -G[n] for n in S}
                now = {n: head(a) * start[n] + moved[n] for n in S}
                if t == j + P - 1:  # the boundary: a period cut short by the stream's end waits for it
                    S, Z = now, (moved if momentum else Z)
            out[:, t] = read(now if within else start, q[:, t])
    last = {n: t for n, t in (S if T % P == 0 else start).items()}
    return out, last


def streamed(model, x):
    """The level over x [B, T, d] in two calls cut mid-period: (outputs, memory M's S_j)."""
    lv = getattr(model, model.slots["L"])[0]
    state = ModelState(model, B)
    y = torch.cat([scan(lv, x[:, :CUT], state), scan(lv, x[:, CUT:], state)], 1)
    return y, state.levels[lv.key].theta("M")


@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("read_mode", ["before", "within"])
@pytest.mark.parametrize("P", [1, 4, 16])
@pytest.mark.parametrize("per_token", [False, True], ids=["per_chunk", "per_token"])
@pytest.mark.parametrize("rule", ["momentum", "gd"])
def test_titans_rules_equal_their_loops(rule, per_token, P, read_mode, memory):
    flag = ", per_token" if per_token else ""
    text = SPEC.format(P=P, s="" if P == 1 else "s", memory=MEMORIES[memory], rule=RULES[rule].format(flag=flag),
                       read=read_mode)
    ref = nldsl.compile(text, fused=False).double()
    fused = nldsl.compile(text).double()
    fused.load_state_dict(ref.state_dict())
    lv = getattr(ref, ref.slots["L"])[0]
    x = torch.randn(B, T, D, dtype=torch.float64)
    with torch.no_grad():
        proj = {n: x @ getattr(lv, n).proj.T for n in ("q", "k", "v", "eta", "beta", "keep")}
        q, v = per_head(proj["q"]), per_head(proj["v"])
        k = per_head(proj["k"])
        k = k / (k.norm(dim=-1, keepdim=True) + 1e-6)
        eta, beta, alpha = 0.5 * torch.sigmoid(proj["eta"]), torch.sigmoid(proj["beta"]), torch.sigmoid(proj["keep"])
        theta0 = {n: t.detach() for n, t in lv.M.named_parameters()}
    want, want_S = loop(theta0, q, k, v, eta, beta, alpha, P, per_token, rule == "momentum", read_mode == "within")
    for model in (ref, fused):
        with torch.no_grad():
            y, S = streamed(model, x)
        assert (y - want.flatten(-2)).abs().max() <= 1e-10
        for n in want_S:
            assert (S[n] - want_S[n]).abs().max() <= 1e-10, n


def test_per_token_differs_from_one_update_per_chunk():
    """The two rules are two models: at period 4 with data-dependent rates they part."""
    outs = []
    for flag in ("", ", per_token"):
        torch.manual_seed(0)
        text = SPEC.format(P=4, s="s", memory=MEMORIES["mlp"], rule=RULES["momentum"].format(flag=flag), read="before")
        model = nldsl.compile(text).double()
        torch.manual_seed(1)
        outs.append(model(torch.randint(0, 32, (B, T)))[0])
    assert (outs[0] - outs[1]).abs().max() > 1e-3
