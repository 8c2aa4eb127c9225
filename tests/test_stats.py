"""`nldsl stats`: costs counted two ways agree, and match counts by hand."""
from pathlib import Path

import pytest

from nldsl.compiler import passes
from nldsl.compiler.driver import check
from nldsl.compiler.stats import level_rows, stats_table, totals

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["hope", "hope_attention", "titans", "transformer", "gated_deltanet"])
def test_parameter_totals_agree_between_the_graph_and_the_spec(name):
    ir = passes.run(check(ROOT / "examples" / f"{name}.nl").models[0])
    assert totals(ir)["params"] == ir.graph.nodes["weights"]["params"]


def test_adam_holds_two_numbers_per_parameter():
    ir = passes.run(check(ROOT / "examples" / "transformer.nl").models[0])  # adamw: m and s
    t = totals(ir)
    assert t["optimizer_state"] == 2 * t["params"]


def test_parameter_groups_split_the_optimizer_state():
    text = """model m {
      vocab 10
      dim 8
      level f outer { memory f : mlp(dim, hidden: 16) }
      block { x = x + f(rmsnorm(x)) }
      objective next_token
      optimizer muon(lr: 0.02) for matrices
      optimizer adamw(lr: 1e-3) for rest
    }"""
    ir = passes.run(check(text).models[0])
    matrices = 10 * 8 + 10 * 8 + 16 * 8 + 8 * 16  # embed, head, the MLP's two weights (one head)
    vectors = 8 + 8  # final norm, the block's rmsnorm
    assert totals(ir)["params"] == matrices + vectors
    assert totals(ir)["optimizer_state"] == 1 * matrices + 2 * vectors  # muon: one buffer; adamw: two


def test_linear_attention_state_and_flops_by_hand():
    spec = check(ROOT / "examples" / "linear_attention.nl").models[0]
    ir = passes.run(spec)
    (attn,) = [r for r in level_rows(ir) if r["level"] == "attn"]
    heads, dim, depth = 2, 64, 2
    state = heads * (dim // heads) ** 2  # one S per head, fixed zero start: no θ₀ parameter
    assert attn["state"] == depth * state
    # per token: read S (2·|S|), gradient of the dot objective (2× read), apply the update every token
    # (2·|S|), plus the four projections q, k, v, out
    assert attn["flops"] == depth * (2 * state + 2 * 2 * state + 2 * state + 4 * 2 * dim * dim)
    assert attn["params"] == depth * 4 * dim * dim


def test_table_lists_every_level():
    ir = passes.run(check(ROOT / "examples" / "hope.nl").models[0])
    table = stats_table(ir)
    for level in ("titans", "cms1", "cms2", "cms3", "adamw/moments"):
        assert level in table
