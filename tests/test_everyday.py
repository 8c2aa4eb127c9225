"""Everyday pieces of a layer: `concat` and `split` along the features, and `dropout`
while the model trains, against torch's own cat, chunk and dropout."""
import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler.driver import check
from nldsl.runtime import ops
from test_semantics import level_of, run_level


def spec(out: str, flows: str = "") -> str:
    return f"""model m {{
  vocab 64
  dim 16
  heads 2
  context 12

  level L every 4 tokens {{
    memory S : linear(dim, heads: heads)
    flow both = proj(x, 2 * dim)
    flow k = l2norm(split(both, 2, 0), heads: heads)
    flow v = split(both, 2, 1){flows}
    learn S : l2(k, v) by gd(lr: 0.1)
    out {out}
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}
"""


def test_split_and_concat_are_chunk_and_cat():
    """out concat(v, x, split(both, 4, 3)): the value half of one projection, the input and
    the last quarter of the projection, side by side, then projected."""
    torch.manual_seed(0)
    model = nldsl.compile(spec("proj(concat(v, x, split(both, 4, 3)), dim)")).double()
    lv = level_of(model, "L")
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    both = x @ lv.both.proj.T
    want = torch.cat([both.chunk(2, -1)[1], x, both.chunk(4, -1)[3]], -1) @ lv.out.proj.T
    torch.testing.assert_close(run_level(model, "L", x)[0], want)


@pytest.mark.parametrize("out, code, message", [
    ("proj(concat(v, 1), dim)", "NL115", "`concat` joins values that change with the input, not a constant"),
    ("proj(split(v, 3, 0), dim)", "NL130", "`split` cuts the size 16 into 3 equal parts, which 3 does not divide"),
    ("proj(split(v, 2, 2), dim)", "NL115", "`split` takes part 2 of 2: the parts count from 0 to 1"),
    ("dropout(proj(v), 1)", "NL160", "the probability of `dropout` is out of range: 1"),
    ("dropout(proj(v), k)", "NL115", "the probability of `dropout` must be a constant"),
])
def test_mistakes_are_located(out, code, message):
    text = spec(out)
    with pytest.raises(NLError) as e:
        check(text)
    errors = [d for d in e.value.diagnostics if d.severity == "error"]
    assert [d.code for d in errors] == [code] and message in errors[0].message, errors
    assert errors[0].span.line == text.splitlines().index(f"    out {out}") + 1


def test_dropout_is_torchs_while_training_and_nothing_in_eval():
    torch.manual_seed(0)
    plain = nldsl.compile(spec("proj(S(k))"))
    torch.manual_seed(0)
    dropped = nldsl.compile(spec("dropout(proj(S(k)), 0.25)"))
    tokens = torch.randint(0, 64, (4, 12))
    dropped.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0], rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0], rtol=0, atol=0)
    dropped.train()
    a, b = dropped(tokens)[0], dropped(tokens)[0]
    assert not torch.equal(a, b)  # a new mask each call
    x = torch.ones(200, 50, 8)
    torch.manual_seed(1)
    got = ops.dropout(x, 0.25, True)
    torch.manual_seed(1)
    torch.testing.assert_close(got, F.dropout(x, 0.25, True))
    assert abs((got == 0).float().mean().item() - 0.25) < 0.01
    assert got.unique().tolist() == pytest.approx([0.0, 1 / 0.75])


def test_dropout_zero_changes_nothing_while_training():
    torch.manual_seed(0)
    plain = nldsl.compile(spec("proj(S(k))"))
    torch.manual_seed(0)
    dropped = nldsl.compile(spec("dropout(proj(S(k)), 0)"))
    tokens = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(dropped(tokens)[0], plain(tokens)[0], rtol=0, atol=0)
