"""nldsl's memories against the reference recurrences of other implementations, fed
the same inputs: flash-linear-attention's naive (plain PyTorch, per-token) gated
delta rule and delta rule, and titans-pytorch's NeuralMemory. For fla the inputs are
what nldsl's own level computed (its q, k, v, β, α, recorded where the level hands
them to its memory), so the test holds the compiled example, not a copy of its
equations.

fla's naive functions compute in float32 whatever they are given; nldsl runs in
float64 here, so the two agree to float32 rounding (below 1e-7 on these inputs), and
1e-5 separates that from a wrong term (the other order of decay and step is off by
~4e-2 on these inputs). fla comes from PyPI as `fla-core` (the `test` extra; `make setup`)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.runtime.fused import Span
from nldsl.runtime.level import LevelState, scan
from nldsl.runtime.model import ModelState

EXAMPLES = Path(__file__).parent.parent / "examples"
TOL = 1e-5
B, T, DIM, H = 2, 24, 16, 2

PLAIN_DELTA = f"""model delta {{
  vocab 32
  dim {DIM}
  heads {H}
  context {T}
  level delta every 1 token {{
    memory S : linear(dim, heads: heads, init: zeros, fixed)
    flow q = l2norm(proj(x), heads: heads)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow beta = sigmoid(proj(x, heads))
    learn S : l2(k, v) by gd(lr: beta) read within
    out S(q)
  }}
  block {{ x = x + delta(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def recorded_run(source, fused: bool, monkeypatch, spread_decay: bool = False):
    """Run the `delta` level of `source` (float64) on a random stream, recording what it
    gives its memory: (q, k, v, β, α or None, o = S(q)), per head: [B, T, H, d] and [B, T, H]."""
    model = nldsl.compile(source, fused=fused, dim=DIM, heads=H, context=T, depth=1).double()
    level = getattr(model, model.slots["delta"])[0]
    if spread_decay:  # α near 0.4 rather than 0.99, so that a decay in the wrong place shows
        with torch.no_grad():
            level.alpha.learned_1.fill_(0.5)
    items, reads = [], []
    where = Span if fused else LevelState  # the state the level's step talks to on that path
    learn, read = where.learn, where.read

    def learn_and_record(self, memory, key, value, lr=1.0, decay=None, beta=None):
        items.append((key, value, lr, decay))
        return learn(self, memory, key, value, lr, decay, beta)

    def read_and_record(self, memory, e, start=False):
        out = read(self, memory, e, start)
        reads.append((e, out))
        return out

    monkeypatch.setattr(where, "learn", learn_and_record)
    monkeypatch.setattr(where, "read", read_and_record)
    with torch.no_grad():
        scan(level, torch.randn(B, T, DIM, dtype=torch.float64), ModelState(model, B))
    monkeypatch.undo()

    def per_head(t):
        return t.reshape(B, T, H, -1)

    k, v, beta, alpha = (None if parts[0] is None else torch.cat(parts, 1) for parts in zip(*items))
    q, o = (torch.cat(parts, 1) for parts in zip(*reads))
    return (per_head(q), per_head(k), per_head(v), beta, alpha, per_head(o))


def fla_references():
    """fla's naive_recurrent_gated_delta_rule and delta_rule_recurrence, or a skip saying
    why they cannot be imported."""
    try:
        with warnings.catch_warnings():  # fla warns that Triton has no GPU here, then runs on the CPU
            warnings.simplefilter("ignore")
            from fla.ops.delta_rule.naive import delta_rule_recurrence
            from fla.ops.gated_delta_rule import naive_recurrent_gated_delta_rule
    except Exception as e:  # not installed, or broken on this platform
        pytest.skip(f"flash-linear-attention's references cannot be imported ({type(e).__name__}: {e}); "
                    "`make setup` installs fla-core")
    return naive_recurrent_gated_delta_rule, delta_rule_recurrence


def max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_gated_deltanet_equals_fla_naive_recurrent_gated_delta_rule(fused, monkeypatch):
    """examples/gated_deltanet.nl's memory against fla's naive_recurrent_gated_delta_rule:
    S_t = α_t S_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t (scale 1: nldsl's
    layer does not scale q; the RMSNorm after it would cancel a scale)."""
    naive_recurrent_gated_delta_rule, _ = fla_references()
    q, k, v, beta, alpha, o = recorded_run(EXAMPLES / "gated_deltanet.nl", fused, monkeypatch, spread_decay=True)
    assert alpha.min() < 0.6  # the decay matters in these inputs
    theirs, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, alpha.log(), scale=1.0)
    assert max_diff(o, theirs) <= TOL


def test_the_nl88_order_is_not_fla_gated_delta_rule(monkeypatch):
    """The same layer with the gradient taken before the decay (gated_deltanet_nl88.nl)
    is another rule: the comparison above would catch the other order."""
    naive_recurrent_gated_delta_rule, _ = fla_references()
    q, k, v, beta, alpha, o = recorded_run(EXAMPLES / "gated_deltanet_nl88.nl", True, monkeypatch, spread_decay=True)
    theirs, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, alpha.log(), scale=1.0)
    assert max_diff(o, theirs) > 1e-2


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_delta_rule_equals_fla_delta_rule_recurrence(fused, monkeypatch):
    """`l2(k, v) by gd(lr: beta) read within` against fla's delta_rule_recurrence:
    S_t = S_{t-1} − β_t (S_{t-1} k_t − v_t) k_tᵀ, o_t = S_t q_t. fla scales q by d_k^-1/2
    and lays heads out first."""
    _, delta_rule_recurrence = fla_references()
    q, k, v, beta, alpha, o = recorded_run(PLAIN_DELTA, fused, monkeypatch)
    assert alpha is None
    first = [t.transpose(1, 2) for t in (q, k, v, beta)]  # [B, H, T, ...]
    theirs, _ = delta_rule_recurrence(*first)
    assert max_diff(o * q.shape[-1] ** -0.5, theirs.transpose(1, 2)) <= TOL


def test_titans_memory_rule_equals_titans_pytorch_neural_memory():
    """The one-update-per-chunk rule of titans.nl (`momentum(lr, beta, decay)`, period C)
    against titans-pytorch's NeuralMemory with `batch_size` = `chunk_size` = C, which
    takes each chunk's gradients at the weights the previous chunk left:
        M_n = β_n M_{n-1} − Σ_{t∈n} η_t ∇ℓ_t(W_{n-1}),   W_n = (1 − d_n) W_{n-1} + M_n,
    on a 2-layer gelu MLP per head (its MemoryMLP without the residual LayerNorm). The
    items are what NeuralMemory's own modules make of a random stream; nldsl's memory
    is driven with them directly, and the weights after every chunk are compared.
    Its loss is the mean of (M(k) − v)² over a head's dimension d, so nldsl's rate is
    2η/d; its β_n and d_n are one per chunk, given to nldsl on the chunk's first item
    (a period's rate is the product of its items'). float64 on both sides.

    titans-pytorch is in the test extra (pyproject.toml); the test skips, saying so, only
    where it cannot be imported."""
    tp = pytest.importorskip("titans_pytorch", reason="titans-pytorch cannot be imported here "
                             "(`make setup` installs it with the test extra)")
    from nldsl.runtime.desc import MemoryDesc
    from nldsl.runtime.level import Fast

    T, C = 16, 4
    d, N = DIM // H, T // C
    mem = tp.NeuralMemory(dim=DIM, chunk_size=C, batch_size=C, heads=H, dim_head=d, mem_model_norm_add_residual=False,
                          default_model_kwargs=dict(depth=2, expansion_factor=2.0)).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    with torch.no_grad():
        _, state = mem(x)
        seq = mem.store_norm(x)
        keys = mem.k_norm(mem.split_kv_heads(mem.to_keys(seq)))  # [B, H, T, d]
        values = mem.split_kv_heads(mem.to_values(seq))
        lr = mem.adaptive_step_transform(mem.to_adaptive_step(seq)).reshape(B, H, T).transpose(1, 2)
        chunks = mem.reduce_to_chunk_rep(seq, chunk_size=C)
        decay = mem.to_decay_factor(chunks).sigmoid().reshape(B, H, N).transpose(1, 2)
        beta = mem.to_momentum(chunks).sigmoid().reshape(B, H, N).transpose(1, 2)

    def tokens(t):  # [B, H, T, d] -> [B, T, H·d]
        return t.transpose(1, 2).reshape(B, T, -1)

    def on_first_item(r):  # [B, N, H] -> [B, T, H]: r on a chunk's first item, 1 on the others
        out = torch.ones(B, T, H, dtype=r.dtype)
        out[:, ::C] = r
        return out

    # NeuralMemory's MLP is gelu(k W0) W1 with W0 [d, hidden]; nldsl's is W1 σ(W2 k): transposes
    W0, W1 = (p.detach() for p in mem.memory_model_parameters)
    theta = {"W2": W0.transpose(-1, -2).expand(B, -1, -1, -1), "W1": W1.transpose(-1, -2).expand(B, -1, -1, -1)}
    f = Fast(MemoryDesc(name="M", kind="mlp", heads=H, act="gelu", objective="l2", rule="momentum"), theta, learns=True)
    theirs = {name: state.updates[f"weights.{i}"].reshape(B, H, N + 1, *W.shape[1:])  # W_0 .. W_N
              for i, (name, W) in enumerate((("W2", W0), ("W1", W1)))}
    k, v, eta, alpha, momentum = tokens(keys), tokens(values), 2 * lr / d, on_first_item(1 - decay), on_first_item(beta)
    for n in range(N):
        s = slice(n * C, (n + 1) * C)
        f.record(k[:, s], v[:, s], eta[:, s], alpha[:, s], momentum[:, s])
        f.end_chunk()
        f.update()
        for name in ("W2", "W1"):
            assert max_diff(theirs[name][:, :, n + 1], theirs[name][:, :, n]) > 1e-3  # the chunk moved it
            assert max_diff(f.theta[name].transpose(-1, -2), theirs[name][:, :, n + 1]) <= 1e-12
