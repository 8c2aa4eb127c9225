"""Titans' ways of using memory (Behrouz et al. 2024, §3.3, §4): the persistent memory
of an attention memory (`attention(..., persistent: N)`), held to torch's attention over
the learned items put before the keys and values; memory as a context (`items`,
`segment`, `M(q, read: before)`, examples/titans_mac.nl), held to a loop of the
paper's equations; both paths, in a stream and when generating."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl import train as tr
from nldsl.compiler.backends.graphviz import to_dot
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler import passes
from nldsl.runtime.memories.attention.naive import alibi_slopes

from test_semantics import heads as split, level_of, run_level

ROOT = Path(__file__).resolve().parent.parent

def persistent_spec(memory: str, period: int = 1, read: str = "within", n: int = 3) -> str:
    return f"""model p {{
  vocab 256
  dim 16
  heads 2
  depth 1
  context 24

  level attn every {period} token {{
    memory kv : attention(heads: heads, {memory}persistent: {n})
    flow q = proj(x)
    flow k = proj(x)
    flow v = proj(x)
    learn kv : l2(k, v) read {read}
    out proj(kv(q))
  }}

  block repeat depth {{
    x = x + attn(rmsnorm(x))
  }}
  objective next_token
  optimizer adamw(lr: 3e-3)
}}
"""


# (memory options, period, read): a window, the whole context at a period of 4 read
# before (where a period's first query sees nothing but the persistent items), ALiBi
CASES = {"window": ("window: 5, ", 1, "within"), "before": ("", 4, "before"), "alibi": ("window: 7, alibi, ", 1, "within")}


def _mask(n: int, N: int, period: int, read: str, window: int | None, alibi: bool, h: int) -> torch.Tensor:
    """The additive mask [h, n, N + n] of torch's attention over [persistent ‖ keys]: every
    query sees the N persistent items, with no bias; the key at s is seen from t when
    s < bound (t + 1 within, t's period start before) and, with a window c, s ≥ bound − c."""
    t = torch.arange(n)
    bound = t + 1 if read == "within" else t // period * period
    seen = t[None, :] < bound[:, None]
    if window is not None:
        seen &= t[None, :] >= bound[:, None] - window
    bias = torch.zeros(h, n, n, dtype=torch.float64)
    if alibi:
        distance = (t[:, None] - t[None, :]).to(torch.float64)
        bias = -torch.tensor(alibi_slopes(h), dtype=torch.float64)[:, None, None] * distance
    bias = bias.masked_fill(~seen, float("-inf"))
    return torch.cat([torch.zeros(h, n, N, dtype=torch.float64), bias], -1)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_persistent_items_are_keys_and_values_every_query_sees(case, fused):
    """An attention level with 3 persistent items equals torch's scaled_dot_product_attention
    over the items put before the keys and values, with the explicit mask: the items
    always visible (they never leave a window), no position, float64."""
    memory, period, read = CASES[case]
    torch.manual_seed(0)
    model = nldsl.compile(persistent_spec(memory, period, read), fused=fused).double()
    lv = level_of(model, "attn")
    n, h, N = 24, 2, 3
    pk, pv = lv.kv.K, lv.kv.V
    assert pk.shape == pv.shape == (N, 16)
    x = torch.randn(2, n, 16, dtype=torch.float64)
    q, k, v = (x @ getattr(lv, w).proj.T for w in "qkv")
    k, v = (torch.cat([p.expand(2, -1, -1), t], 1) for p, t in ((pk, k), (pv, v)))
    window = int(memory.split("window: ")[1].split(",")[0]) if "window" in memory else None
    mask = _mask(n, N, period, read, window, "alibi" in memory, h)
    o = F.scaled_dot_product_attention(split(q, h), split(k, h), split(v, h), attn_mask=mask)
    want = o.transpose(1, 2).reshape(2, n, -1) @ lv.out.proj.T
    torch.testing.assert_close(run_level(model, "attn", x)[0], want)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_persistent_items_stream_token_by_token_and_generate(fused):
    """A state carried token by token gives the logits of the whole sequence (the items
    are read beside the cache, never evicted with it), and greedy generation, which feeds
    one token at a time, picks what the whole context picks."""
    torch.manual_seed(1)
    model = nldsl.compile(persistent_spec("window: 5, "), fused=fused).double()
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        whole = model(tokens)[0]
        state, parts = None, []
        for i in range(tokens.shape[1]):
            y, state = model(tokens[:, i:i + 1], state)
            parts.append(y)
        torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-10, atol=1e-10)
        out = tr.generate(model, b"ab", 10, temperature=0)
        ids = list(b"ab")
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert out == bytes(ids[2:])


def test_persistent_items_are_outer_parameters_that_learn():
    """The items are trained by the outer optimizer: they get gradients, and without them
    (`persistent: 0`, the paper's ablation) the level has no such parameters."""
    torch.manual_seed(2)
    model = nldsl.compile(persistent_spec("window: 5, "))
    model(torch.randint(0, 256, (2, 12)))[0].square().mean().backward()
    lv = level_of(model, "attn")
    assert lv.kv.K.grad.abs().sum() > 0 and lv.kv.V.grad.abs().sum() > 0
    assert not torch.equal(lv.kv.K[0], lv.kv.K[1])  # drawn apart: equal items would stay equal
    spec = nldsl.check(persistent_spec("window: 5, ")).models[0]
    params = {p.name: p.shape for p in spec.level("attn").params}
    assert params["attn.kv.K"] == params["attn.kv.V"] == (3, 16)
    none = nldsl.check(persistent_spec("window: 5, ", n=0)).models[0]
    assert not [p for p in none.level("attn").params if p.role == "init"]
    assert "3 persistent" in to_dot(passes.run(spec))


@pytest.mark.parametrize("option, code", [("persistent: 2.5", "NL115"), ("persistent: -1", "NL115"),
                                          ("persistent: 1e17", "NL160"), ("persistent: depth", None)])
def test_persistent_counts_items(option, code):
    """A count of items: a constant integer, 0 or more (NL115), in range (NL160)."""
    source = persistent_spec("window: 5, ").replace("persistent: 3", option)
    if code is None:
        assert nldsl.check(source).models[0].level("attn").memories[0].persistent == 1
        return
    with pytest.raises(NLError) as e:
        nldsl.check(source)
    d = e.value.diagnostics[0]
    assert d.code == code and "`persistent`" in d.message and d.span.line == 9


def test_persistent_is_an_option_of_attention_memories():
    source = persistent_spec("window: 5, ").replace("    flow q", "    memory M : linear(dim, persistent: 2)\n    flow q")
    with pytest.raises(NLError) as e:
        nldsl.check(source)
    assert [d.code for d in e.value.diagnostics if "persistent" in d.message] == ["NL113"]


def test_the_language_reference_examples_check():
    """docs/language.md's examples of `persistent`, `items`, `segment` and `read: before`,
    each inside a model, check clean."""
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    levels = [b.split("```")[0] for b in text.split("```nl\n")[1:] if "persistent:" in b.split("```")[0]]
    assert len(levels) == 2
    for level in levels:
        name = level.split()[1]
        source = (f"model m {{\n  vocab 32\n  dim 32\n  heads 4\n{level}  block {{ x = x + {name}(x) }}\n"
                  "  objective next_token\n  optimizer adamw(lr: 1e-3)\n}\n")
        assert nldsl.check(source).models[0].level(name).memories


# --- memory as a context (MAC) -------------------------------------------------------

def mac_spec(period: int = 4) -> str:
    return f"""model mac {{
  vocab 256
  dim 16
  heads 2
  depth 1
  context 24

  level mac every {period} tokens {{
    memory M : linear(dim, heads: heads)
    memory core : attention(heads: heads, items: 2, segment, persistent: 2)
    flow mq = proj(x)
    flow h = M(mq, read: before)
    flow q = proj(x)
    flow hk = proj(h)
    flow hv = proj(h)
    flow xk = proj(x)
    flow xv = proj(x)
    learn core : l2(concat(hk, xk), concat(hv, xv)) read within
    flow y = proj(core(q))
    flow mk = proj(y)
    flow mv = proj(y)
    flow yq = proj(y)
    learn M : l2(mk, mv) by gd(lr: 0.5) read within
    out proj(y * M(yq))
  }}

  block repeat depth {{
    x = x + mac(rmsnorm(x))
  }}
  objective next_token
  optimizer adamw(lr: 3e-3)
}}
"""


def mac_loop(lv, x: torch.Tensor, C: int, eta: float = 0.5) -> torch.Tensor:
    """Titans MAC (§4.1) token by token, from the equations, for a linear memory M
    (per head, M(k) = W k) on ½‖M(k) − v‖² with one gradient step per segment, every
    gradient at the segment's start state (the mini-batch rule, §3.2):
        h_i = M_{t−1}(q_i)                                  (Eq. 21)
        y_i = Attn over [P ‖ (h_j, x_j) for j ≤ i in S(t)]  (Eqs. 22-23, causal)
        M_{t,i} = M_{t−1} − η Σ_{j≤i} ∇ℓ_j(M_{t−1}), ℓ_j on (k(y_j), v(y_j))   (Eq. 24)
        o_i = out(y_i ⊙ M_{t,i}(yq(y_i)))                   (Eq. 25, at token i's state)"""
    B, T, d = x.shape
    h = lv.M.W.shape[0]
    P = {n: getattr(lv, n).proj for n in ("mq", "q", "hk", "hv", "xk", "xv", "y", "mk", "mv", "yq", "out")}
    heads = lambda t: t.reshape(B, h, -1)  # [B, d] -> [B, h, d/h]
    read = lambda W, k: torch.einsum("bhoi,bhi->bho", W, heads(k)).reshape(B, d)
    pk = lv.core.K.reshape(2, h, -1)
    pv = lv.core.V.reshape(2, h, -1)
    W = lv.M.W.expand(B, *lv.M.W.shape)
    outs = []
    for s0 in range(0, T, C):
        keys, values, acc = [], [], torch.zeros_like(W)
        for i in range(s0, min(s0 + C, T)):
            xi = x[:, i]
            hi = read(W, xi @ P["mq"].T)  # at the segment's start state
            keys += [heads(hi @ P["hk"].T), heads(xi @ P["xk"].T)]
            values += [heads(hi @ P["hv"].T), heads(xi @ P["xv"].T)]
            K = torch.cat([pk.expand(B, -1, -1, -1), torch.stack(keys, 1)], 1)  # [B, 2 + items, h, dh]
            V = torch.cat([pv.expand(B, -1, -1, -1), torch.stack(values, 1)], 1)
            qi = heads(xi @ P["q"].T)
            a = torch.softmax(torch.einsum("bhd,bnhd->bhn", qi, K) / qi.shape[-1] ** 0.5, -1)
            yi = torch.einsum("bhn,bnhd->bhd", a, V).reshape(B, d) @ P["y"].T
            k, v = heads(yi @ P["mk"].T), heads(yi @ P["mv"].T)
            err = torch.einsum("bhoi,bhi->bho", W, k) - v
            acc = acc + torch.einsum("bho,bhi->bhoi", err, k)
            outs.append((yi * read(W - eta * acc, yi @ P["yq"].T)) @ P["out"].T)
        W = W - eta * acc
    return torch.stack(outs, 1)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_mac_equals_the_papers_equations_token_by_token(fused):
    """The MAC level equals the loop of Eqs. 21-25 over 5 segments of 4 tokens and a
    part, float64; its stream cut mid-segment gives the same, and no token's output
    moves when a later token changes (the answers h_j and tokens x_j of the segment
    are seen for j ≤ i only)."""
    torch.manual_seed(3)
    model = nldsl.compile(mac_spec(), fused=fused).double()
    lv = level_of(model, "mac")
    x = torch.randn(2, 22, 16, dtype=torch.float64)
    got = run_level(model, "mac", x)[0]
    torch.testing.assert_close(got, mac_loop(lv, x, 4))
    a, state = run_level(model, "mac", x[:, :7])
    b, _ = run_level(model, "mac", x[:, 7:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), got)
    moved = x.clone()
    moved[:, 13] += 1.0
    after = run_level(model, "mac", moved)[0]
    torch.testing.assert_close(after[:, :13], got[:, :13], rtol=0, atol=0)
    assert not torch.allclose(after[:, 13:16], got[:, 13:16])


def test_titans_mac_streams_generates_and_matches_on_both_paths():
    """examples/titans_mac.nl, small: the fused path equals the reference, logits and
    gradients, over a stream cut mid-segment; greedy generation, one token at a time,
    picks what the whole context picks."""
    from test_fused import _pair, _same_stream
    ref, fused = _pair(ROOT / "examples" / "titans_mac.nl", dim=16, heads=2, context=64, depth=1)
    _same_stream(ref, fused, torch.randint(0, 256, (2, 40)), cut=21)
    with torch.no_grad():
        out = tr.generate(ref, b"abc", 8, temperature=0)
        ids = list(b"abc")
        for _ in range(8):
            ids.append(int(ref(torch.tensor([ids]))[0][0, -1].argmax()))
    assert out == bytes(ids[3:])


def test_titans_mac_draws_the_memories_feeding_each_other():
    """`nldsl graph`: the long-term memory's answers feed the attention's items, and the
    attention's output the memory's."""
    dot = to_dot(passes.run(nldsl.check(ROOT / "examples" / "titans_mac.nl").models[0]))
    edge = next(line for line in dot.splitlines() if '"memory:mac.M" -> "memory:mac.core"' in line)
    assert "M → core: h" in edge and "core → M:" in edge and "y" in edge


@pytest.mark.parametrize("read, code", [("M(mq)", "NL141"), ("M(mq, read: within)", "NL115"),
                                        ("M(mq, at: before)", "NL117")])
def test_mac_needs_the_answer_at_the_segments_start(read, code):
    """Read within, h_i would need the memory's update from token i, which needs y_i,
    which needs h_i: a cycle within one token (NL141), broken by reading at the start."""
    source = mac_spec().replace("M(mq, read: before)", read)
    with pytest.raises(NLError) as e:
        nldsl.check(source)
    assert code in [d.code for d in e.value.diagnostics]
