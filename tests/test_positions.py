"""Positions: `rope` against the rotary embedding's complex form (Su et al. 2021;
Meta's Llama code takes it so), transformer.nl against a Llama-style Transformer++
written here from its definition (Touvron et al. 2023), and `next_token(tied)`."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.runtime import ops
from nldsl import train as tr
from nldsl.runtime.errors import PositionError
from nldsl.runtime.memories.attention.naive import alibi_slopes

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMER = ROOT / "examples" / "transformer.nl"
SMALL = dict(dim=32, heads=4, depth=2, context=24)


def complex_rope(x: torch.Tensor, positions: torch.Tensor, heads: int, base: float = 10000.0) -> torch.Tensor:
    """RoFormer's rotation as Llama writes it: coordinates (2i, 2i+1) of a head are one
    complex number, multiplied by exp(i · p · base^(-2i/d))."""
    B, n, d = x.shape
    hd = d // heads
    theta = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    turn = torch.polar(torch.ones(n, hd // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    z = torch.view_as_complex(x.double().reshape(B, n, heads, hd // 2, 2))
    return torch.view_as_real(z * turn[:, None]).reshape(B, n, d)


def interleave(x: torch.Tensor, heads: int) -> torch.Tensor:
    """nldsl's pairing (coordinate i with i + half, per head) in Llama's order (2i, 2i+1)."""
    B, n, d = x.shape
    return x.reshape(B, n, heads, 2, d // heads // 2).transpose(-1, -2).reshape(B, n, d)


@pytest.mark.parametrize("heads, base, start", [(1, 10000.0, 0), (4, 10000.0, 0), (2, 500.0, 37)])
def test_rope_is_the_complex_rotation(heads, base, start):
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    positions = torch.arange(start, start + 7)
    got = ops.rope(x, positions, heads, base)
    want = complex_rope(interleave(x, heads), positions, heads, base)
    torch.testing.assert_close(interleave(got, heads), want, rtol=1e-12, atol=1e-12)


def test_rope_scores_depend_on_the_offset_alone():
    """⟨R_m q, R_n k⟩ = ⟨q, R_{n-m} k⟩: shifting both positions leaves every score."""
    q, k = torch.randn(1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 8, dtype=torch.float64)
    scores = [(ops.rope(q, torch.tensor([m]), 2) * ops.rope(k, torch.tensor([m + 3]), 2)).sum()
              for m in (0, 5, 1000)]
    torch.testing.assert_close(torch.stack(scores), scores[0].expand(3), rtol=1e-10, atol=1e-10)


def test_rope_in_bf16_takes_its_angles_in_float32():
    x = torch.randn(1, 300, 8)
    positions = torch.arange(2000, 2300)
    got = ops.rope(x.bfloat16(), positions, 1).float()
    torch.testing.assert_close(got, ops.rope(x, positions, 1), rtol=2e-2, atol=2e-2)


class Llama(torch.nn.Module):
    """Transformer++ as Llama defines it: pre-norm RMSNorm blocks, attention with rotary
    queries and keys (the complex form above, over the interleaved pairs), SwiGLU
    w2(silu(w1 x) · w3 x), a final RMSNorm and an output head. torch's own rms_norm and
    scaled_dot_product_attention."""

    def __init__(self, vocab: int, dim: int, heads: int, depth: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict(dict(
            attn_norm=torch.nn.RMSNorm(dim, eps=1e-6), wq=lin(dim, dim), wk=lin(dim, dim), wv=lin(dim, dim),
            wo=lin(dim, dim), ffn_norm=torch.nn.RMSNorm(dim, eps=1e-6), w1=lin(dim, hidden), w3=lin(dim, hidden),
            w2=lin(hidden, dim))) for _ in range(depth))
        self.norm = torch.nn.RMSNorm(dim, eps=1e-6)
        self.head = lin(dim, vocab)

    def forward(self, tokens):
        B, n = tokens.shape
        h = self.embed(tokens)
        positions = torch.arange(n)
        for L in self.layers:
            x = L["attn_norm"](h)
            q, k = (complex_rope(L[w](x), positions, self.heads).to(x.dtype) for w in ("wq", "wk"))
            q, k, v = (t.reshape(B, n, self.heads, -1).transpose(1, 2) for t in (q, k, L["wv"](x)))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, n, -1)
            h = h + L["wo"](a)
            x = L["ffn_norm"](h)
            h = h + L["w2"](F.silu(L["w1"](x)) * L["w3"](x))
        return self.head(self.norm(h))


def llama_from(model, heads: int) -> Llama:
    """The Llama module holding `model`'s weights, its query and key rows interleaved."""
    s = model.settings
    dim, vocab, depth = int(s["dim"]), int(s["vocab"]), int(s["depth"])
    p = dict(model.named_parameters())
    ref = Llama(vocab, dim, heads, depth, p["ffn.0.h.proj"].shape[0]).double()

    def rows(w):  # interleave the output rows of a query or key projection per head
        return interleave(w.T[None], heads)[0].T

    with torch.no_grad():
        ref.embed.weight.copy_(p["embed"])
        ref.norm.weight.copy_(p["norm"])
        ref.head.weight.copy_(p.get("head", p["embed"]))  # tied: the embedding
        for i, L in enumerate(ref.layers):
            L["attn_norm"].weight.copy_(p[f"block0.{i}.x.rmsnorm"])
            L["ffn_norm"].weight.copy_(p[f"block0.{i}.x.rmsnorm_1"])
            L["wq"].weight.copy_(rows(p[f"attn.{i}.q.proj"]))
            L["wk"].weight.copy_(rows(p[f"attn.{i}.k.proj"]))
            L["wv"].weight.copy_(p[f"attn.{i}.v.proj"])
            L["wo"].weight.copy_(p[f"attn.{i}.out.proj"])
            L["w1"].weight.copy_(p[f"ffn.{i}.h.proj"])
            L["w3"].weight.copy_(p[f"ffn.{i}.h.proj_1"])
            L["w2"].weight.copy_(p[f"ffn.{i}.out.proj"])
    return ref


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_transformer_is_llamas_transformer_plus_plus(fused):
    torch.manual_seed(0)
    model = nldsl.compile(TRANSFORMER, fused=fused, **SMALL).double()
    ref = llama_from(model, SMALL["heads"])
    tokens = torch.randint(0, 256, (2, SMALL["context"]))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], ref(tokens), rtol=1e-10, atol=1e-10)


def test_a_stream_goes_on_counting_positions():
    """Fed in three calls, the rotary angles continue where the last call stopped: the
    logits are those of one call (and differ from restarting the positions)."""
    torch.manual_seed(0)
    model = nldsl.compile(TRANSFORMER, **SMALL).double()
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        whole = model(tokens)[0]
        a, state = model(tokens[:, :5])
        b, state = model(tokens[:, 5:16], state)
        c, _ = model(tokens[:, 16:], state)
        torch.testing.assert_close(torch.cat([a, b, c], 1), whole, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(model(tokens[:, 5:])[0][:, 0], whole[:, 5])  # position 0 is not position 5


TIED = TRANSFORMER.read_text().replace("objective next_token", "objective next_token(tied)")


def test_a_tied_model_scores_with_its_embedding():
    torch.manual_seed(0)
    model = nldsl.compile(TIED, **SMALL).double()
    assert "head" not in dict(model.named_parameters())
    ref = llama_from(model, SMALL["heads"])
    tokens = torch.randint(0, 256, (2, SMALL["context"]))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], ref(tokens), rtol=1e-10, atol=1e-10)
    untied = nldsl.compile(TRANSFORMER, **SMALL)
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == 256 * 32


# --- ALiBi ----------------------------------------------------------------------------

def test_alibi_slopes_are_the_papers():
    """Press et al. 2022, §3: for 8 heads 1/2, 1/4, ..., 1/256; for 16, 1/√2, 1/2, ...;
    for a count not a power of 2, the slopes of the power below, then every other slope
    of twice it."""
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-i / 2) for i in range(1, 17)])
    assert alibi_slopes(6) == pytest.approx([2.0 ** -(2 * i) for i in range(1, 5)] + [2.0 ** -1, 2.0 ** -3])


ALIBI = TRANSFORMER.read_text().replace("attention(heads: heads)", "attention(heads: heads, alibi)").replace(
    "rope(proj(x), heads: heads)", "proj(x)")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_alibi_attention_is_softmax_with_the_linear_bias(fused):
    """The attention level of an `alibi` model: torch's attention with the bias
    −m_h · (t − s) as its mask, and a stream that goes on counting."""
    from test_semantics import heads as split, level_of, run_level
    torch.manual_seed(0)
    model = nldsl.compile(ALIBI, fused=fused, **SMALL).double()
    lv = level_of(model, "attn")
    n, h = SMALL["context"], SMALL["heads"]
    x = torch.randn(2, n, SMALL["dim"], dtype=torch.float64)
    q, k, v = (split(x @ getattr(lv, w).proj.T, h) for w in "qkv")
    t = torch.arange(n, dtype=torch.float64)
    distance = t[:, None] - t[None, :]
    bias = -torch.tensor(alibi_slopes(h), dtype=torch.float64)[:, None, None] * distance
    bias = bias.masked_fill(distance < 0, float("-inf"))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(2, n, -1)
    torch.testing.assert_close(run_level(model, "attn", x)[0], o @ lv.out.proj.T)
    tokens = torch.randint(0, 256, (2, n))
    with torch.no_grad():
        whole = model(tokens)[0]
        a, state = model(tokens[:, :7])
        b, _ = model(tokens[:, 7:], state)
        torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-10, atol=1e-10)


# --- learned absolute positions ---------------------------------------------------------

ABSOLUTE = ALIBI.replace("attention(heads: heads, alibi)", "attention(heads: heads)").replace(
    "  block repeat depth {", "  block {\n    x = positional(x)\n  }\n  block repeat depth {")


def test_learned_positions_add_the_row_of_each_tokens_position():
    """`positional(x)`: GPT-2's learned position embedding, a table of `context` rows; a
    stream reads the rows where it is, and a token past the table is a clear error."""
    torch.manual_seed(0)
    model = nldsl.compile(ABSOLUTE, **SMALL).double()
    table = dict(model.named_parameters())["block0.0.x.positional"]
    assert table.shape == (SMALL["context"], SMALL["dim"])
    tokens = torch.randint(0, 256, (2, SMALL["context"]))
    with torch.no_grad():
        whole = model(tokens)[0]
        a, state = model(tokens[:, :9])
        b, state = model(tokens[:, 9:], state)
        torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-10, atol=1e-10)
        table[5:].add_(1.0)  # later rows cannot move earlier positions
        moved = model(tokens)[0]
        torch.testing.assert_close(moved[:, :5], whole[:, :5], rtol=0, atol=0)
        assert not torch.allclose(moved[:, 5:], whole[:, 5:])
        with pytest.raises(PositionError, match=f"token position {SMALL['context']} is beyond the "
                                                f"{SMALL['context']} positions"):
            model(tokens[:, :1], state)
    with pytest.raises(tr.TrainError, match="cannot generate 30 bytes after a prompt of 2"):
        tr.generate(model.float(), b"ab", 30)
