"""Constant vectors: `[0.9, 0.99]` and `range(n)`, and arithmetic on them. Their values
and sizes, their errors where they are written, their canonical text, their buffer in
the compiled module and in emitted source; and RetNet's retention (examples/retnet.nl),
whose per-head decay is one, against a loop written from the paper's recurrent form."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nldsl
from nldsl.compiler.backends.python import emit
from nldsl.compiler.diagnostics import NLError, Report
from nldsl.compiler.format import format_text
from nldsl.compiler.parse import parse
from test_positions import complex_rope, interleave
from test_semantics import head_rmsnorm, heads, level_of, run_level

ROOT = Path(__file__).resolve().parent.parent
RETNET = ROOT / "examples" / "retnet.nl"


def model(level: str, *, hds: int = 4, block: str = "x = x + L(rmsnorm(x))", extra: str = "") -> str:
    """A model of one level L (dim 16, `hds` heads) and whatever `extra` adds."""
    return f"""model m {{
  vocab 32
  dim 16
  heads {hds}
  context 8
  {extra}
  level L {level}
  block {{ {block} }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


def decayed(decay: str, **kw) -> str:
    """A level of a linear memory with heads, learning every token at `decay`."""
    return model(f"""every 1 token {{
    memory S : linear(dim, heads: heads, init: zeros, fixed)
    flow q = proj(x)
    flow k = proj(x)
    learn S : dot(k, proj(x)) by gd(lr: 1, decay: {decay}) read within
    out proj(S(q))
  }}""", **kw)


def buffers(m) -> dict[str, torch.Tensor]:
    return dict(m.named_buffers())


def errors(text: str) -> list:
    try:
        nldsl.check(text)
    except NLError as e:
        return [d for d in e.diagnostics if d.severity == "error"]
    return []


def located(text: str):
    """The one error of `text`: (code, message, the text its span covers)."""
    (d,) = errors(text)
    line = text.split("\n")[d.span.line - 1]
    return d.code, d.message, line[d.span.col - 1:d.span.end_col - 1]


# ------------------------------------------------------------------ values and sizes
@pytest.mark.parametrize("expr, want", [
    ("[0.9, 0.95, 0.98, 0.99]", [0.9, 0.95, 0.98, 0.99]),
    ("[0.5, 1 / 4, 2 ** -3, sigmoid(0)]", [0.5, 0.25, 0.125, 0.5]),
    ("range(heads)", [0, 1, 2, 3]),
    ("1 - 2 ** (-5 - range(heads))", [1 - 2 ** (-5 - h) for h in range(4)]),
    ("0.5 + range(4) / 8", [0.5, 0.625, 0.75, 0.875]),
    ("-range(4) * [1, 2, 3, 4]", [0, -2, -6, -12]),
    ("exp(-range(4))", [math.exp(-h) for h in range(4)]),
    ("max(range(4), 2) - min([3, 0, 5, 1], 1)", [1, 2, 1, 2]),
    ("select(1, [0.1, 0.2, 0.3, 0.4], 0.5)", [0.1, 0.2, 0.3, 0.4]),
])
def test_a_constant_vector_folds_into_one_buffer_of_its_values(expr, want):
    m = nldsl.compile(decayed(expr))
    assert buffers(m)["L.0.S.decay.const"].tolist() == pytest.approx(want)
    assert "L.0.S.decay.const" not in dict(m.named_parameters())


def test_sizes_are_the_lengths():
    (spec,) = nldsl.check(model("""outer {
    flow a = [1, 2, 3]
    flow b = range(heads) * 2
    flow c = range(dim) / dim + [0.5]
    flow d = [7]
    out proj(x) * c
  }""")).models
    sizes = {f.name: f.size for f in spec.level("L").flows}
    assert sizes == {"a": 3, "b": 4, "c": 16, "d": 1}


def test_a_vector_of_one_number_is_that_number():
    m = nldsl.compile(decayed("[0.5]"))
    assert not any("const" in n for n in buffers(m))
    (learn,) = [n for n in level_of(m, "L").step.graph.nodes if n.target == "learn"]
    assert learn.kwargs["decay"] == 0.5


def test_a_constant_vector_in_a_flow_mixed_with_values_is_one_buffer():
    m = nldsl.compile(model("""outer {
    flow v = proj(x) * (1 + range(dim) / dim) + 2 ** -range(dim)
    out v
  }"""))
    got = buffers(m)
    assert sorted(n for n in got if "const" in n) == ["L.0.v.const", "L.0.v.const_1"]
    torch.testing.assert_close(got["L.0.v.const"], 1 + torch.arange(16.0) / 16)
    x = torch.randn(1, 3, 16)
    y, _ = run_level(m, "L", x)
    torch.testing.assert_close(y, (x @ level_of(m, "L").v.proj.T) * (1 + torch.arange(16.0) / 16)
                               + 2.0 ** -torch.arange(16.0))


def test_a_per_head_constant_rate_is_a_learned_one_that_is_not_trained():
    """`decay: [c_0, c_1]` computes what `learned(c, heads)` holding those values does."""
    torch.manual_seed(0)
    const = nldsl.compile(decayed("[0.9, 0.5]", hds=2), fused=False).double()
    torch.manual_seed(0)
    learned = nldsl.compile(decayed("learned(0.9, heads)", hds=2), fused=False).double()
    with torch.no_grad():
        level_of(learned, "L").S.decay.learned.copy_(torch.tensor([0.9, 0.5]))
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(const(tokens)[0], learned(tokens)[0])
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in const.parameters()) == 2


# ---------------------------------------------------------------------- the buffer
def test_the_buffer_moves_with_the_model_and_is_saved():
    m = nldsl.compile(RETNET, dim=16, heads=2, context=16, depth=1)
    name = "retention.0.gamma.const"
    gamma = torch.tensor([1 - 2 ** -5, 1 - 2 ** -6])
    torch.testing.assert_close(buffers(m)[name], gamma)
    assert name in m.state_dict() and name not in dict(m.named_parameters())
    m.to(torch.float64)
    assert buffers(m)[name].dtype == torch.float64
    other = nldsl.compile(RETNET, dim=16, heads=2, context=16, depth=1)
    with torch.no_grad():
        buffers(other)[name].zero_()
    other.load_state_dict(nldsl.compile(RETNET, dim=16, heads=2, context=16, depth=1).state_dict())
    torch.testing.assert_close(buffers(other)[name], gamma)
    tokens = torch.randint(0, 256, (1, 9))
    assert m(tokens)[0].dtype == torch.float64


def load_emitted(source: str, path: Path):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_constant_vector_in_a_block_is_a_buffer_of_the_model(tmp_path):
    text = model("outer { memory f : mlp(dim) }", block="s = 1 + range(dim) / 16\n    x = x + L(rmsnorm(x) * s)")
    m = nldsl.compile(text)
    torch.testing.assert_close(buffers(m)["block0.0.s.const"], 1 + torch.arange(16.0) / 16)
    emitted = load_emitted(emit(m), tmp_path / "block_emitted.py").build()
    emitted.load_state_dict(m.state_dict())
    assert "block0.0.s.const" in buffers(emitted)
    tokens = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], m(tokens)[0], rtol=0, atol=0)


def test_emitted_source_holds_the_buffer_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    m = nldsl.compile(RETNET, dim=16, heads=2, context=16, depth=1)
    source = emit(m)
    assert "register(self, 'gamma.const', init('constant', (2,), (0.96875, 0.984375)), buffer=True)" in source
    emitted = load_emitted(source, tmp_path / "retnet_emitted.py").build()
    assert list(emitted.state_dict()) == list(m.state_dict())
    assert "retention.0.gamma.const" not in dict(emitted.named_parameters())
    emitted.load_state_dict(m.state_dict())
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], m(tokens)[0], rtol=0, atol=0)


def test_an_untaken_branch_of_select_makes_no_buffer():
    m = nldsl.compile(model("""outer {
    flow v = select(0, proj(x) * range(dim), proj(x) + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    out v
  }"""))
    assert sorted(n for n in buffers(m) if "const" in n) == ["L.0.v.const"]
    assert buffers(m)["L.0.v.const"].tolist() == list(range(1, 17))


# ------------------------------------------------------------------------ errors
RATE = "decay: [0.9, 0.95, 0.98, 0.99]"


@pytest.mark.parametrize("old, new, code, message, where", [
    (RATE, "decay: [0.9, 0.95, 0.98, k]", "NL115", "an element of a constant vector must be a constant, but `k`", "k"),
    (RATE, "decay: []", "NL115", "a constant vector `[]` must hold at least one number", "[]"),
    (RATE, "decay: [[0.9, 0.95], 0.98, 0.99, 0.9]", "NL130", "an element of a constant vector must be one number, "
     "not a vector of size 2", "[0.9, 0.95]"),
    (RATE, "decay: [0.9, 0.95]", "NL130", "rate `decay` has size 2; a rate is one number or one per head (4)",
     "[0.9, 0.95]"),
    (RATE, "decay: [0.9, 0.95] + range(heads)", "NL130", "sizes 2 and 4 do not match in `+`",
     "[0.9, 0.95] + range(heads)"),
    (RATE, "decay: range(0)", "NL115", "the count of `range` must be a positive integer, not 0", "0"),
    (RATE, "decay: range(1.5)", "NL115", "the count of `range` must be a positive integer, not 1.5", "1.5"),
    (RATE, "decay: range(k)", "NL115", "the count of `range` must be a constant, but `k` changes", "k"),
    (RATE, "decay: range(1M)", "NL160", "the count of `range` 1000000 is out of range (at most 65,536)",
     "range(1M)"),
    (RATE, "decay: range(heads, 2)", "NL117", "`range` takes 1 argument, got 2", "range(heads, 2)"),
    (RATE, "decay: exp([0, 1, 1000, 2])", "NL160", "out of range (at element 2, counting from 0)",
     "exp([0, 1, 1000, 2])"),
    (RATE, "decay: [0.9, 0.95, exp(1000), 0.99]", "NL160", "an element of a constant vector is out of range",
     "exp(1000)"),
    (RATE, "decay: [0.9, 0.95, 1e19, 0.99]", "NL160", "number `1e19` is out of range", "1e19"),
    (RATE, "decay: select([1, 0], 0.9, 0.5)", "NL130", "the condition of `select` must be one number", "[1, 0]"),
    ("flow k = proj(x)", "flow k = proj(x) / (range(dim) - 3)", "NL160", "this divides by zero",
     "proj(x) / (range(dim) - 3)"),
    ("dim 16", "dim [16, 16]", "NL130", "setting `dim` must be one number, not a vector of size 2", "[16, 16]"),
    ("linear(dim,", "linear(dim * range(2),", "NL130", "a memory's size must be one number", "dim * range(2)"),
    ("adam(lr: 1e-3)", "adam(lr: [1e-3, 1e-4])", "NL130", "option `lr` must be one number", "[1e-3, 1e-4]"),
])
def test_mistakes_are_located_where_they_are_written(old, new, code, message, where):
    text = decayed("[0.9, 0.95, 0.98, 0.99]")
    assert old in text
    got = located(text.replace(old, new, 1))
    assert got[0] == code and message in got[1] and got[2] == where, got


def test_a_list_of_more_than_65536_numbers_is_out_of_range():
    (d,) = errors(decayed("[" + "1, " * 65537 + "]"))
    assert d.code == "NL160" and "a constant vector of 65,537 numbers is out of range" in d.message


def test_a_task_rate_is_one_number_not_a_vector():
    text = model("""every 4 tokens {
    memory f : mlp(dim, heads: heads)
    learn f : task by gd(lr: [0.1, 0.2, 0.3, 0.4])
    out f(x)
  }""")
    code, message, where = located(text)
    assert code == "NL130" and "one number, not one per head" in message and where == "[0.1, 0.2, 0.3, 0.4]"


@pytest.mark.parametrize("update, code, message", [
    ("update W -= lr * [1, 2] * g", "NL130", "a constant vector of size 2 has no place in an optimizer"),
    ("update W -= lr * range(2) * g", "NL116", "unknown function `range`"),
])
def test_an_optimizer_takes_no_vector(update, code, message):
    text = decayed("0.9").replace("adam(lr: 1e-3)", "mine(lr: 1e-3)") + f"\noptimizer mine(lr = 1) {{ {update} }}\n"
    (d,) = errors(text)
    assert d.code == code and message in d.message


def test_a_vector_of_one_number_runs_in_an_optimizer():
    text = decayed("0.9").replace("adam(lr: 1e-3)", "mine(lr: 1e-3)") + "\noptimizer mine(lr = 1) { update W -= lr * [0.5] * g }\n"
    m = nldsl.compile(text)
    opt = m.configure_optimizer()
    m.loss(torch.randint(0, 32, (2, 9))).backward()
    opt.step()


NUMBERS = ["0", "1", "0.5", "1e-3", "709", "1e18", "heads", "[0.9, 0.95, 0.98, 0.99]", "[1, 2]", "[0]",
           "range(heads)", "range(2)", "[]", "[x]"]


@st.composite
def vector_constant(draw, depth: int = 3) -> str:
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NUMBERS))
    a, b = draw(vector_constant(depth - 1)), draw(vector_constant(depth - 1))
    kind = draw(st.sampled_from(["op", "op", "call", "neg", "pair"]))
    if kind == "op":
        return f"({a} {draw(st.sampled_from(['+', '-', '*', '/', '**']))} {b})"
    if kind == "call":
        return f"{draw(st.sampled_from(['exp', 'sqrt', 'sigmoid', 'tanh', 'abs']))}({a})"
    return f"-{a}" if kind == "neg" else f"{draw(st.sampled_from(['max', 'min']))}({a}, {b})"


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(vector_constant(), st.sampled_from(["rate", "flow"]))
def test_a_clean_check_of_constant_vectors_means_it_runs(expr, where):
    """Anywhere a constant vector may stand, it checks with located errors or runs finite."""
    text = decayed(f"sigmoid({expr})") if where == "rate" else decayed("0.9").replace(
        "flow k = proj(x)", f"flow k = l2norm(proj(x) * tanh({expr}), heads: heads)")
    try:
        nldsl.check(text)
    except NLError as e:
        assert all(d.span is not None for d in e.diagnostics), e.diagnostics
        return
    m = nldsl.compile(text)
    with torch.no_grad():
        y, _ = m(torch.randint(0, 32, (1, 8)))
    assert torch.isfinite(y).all()


# -------------------------------------------------------------------- the syntax
@pytest.mark.parametrize("written, canonical", [
    ("[0.9,0.95]", "[0.9, 0.95]"),
    ("[ 0.9 , 0.95 , ]", "[0.9, 0.95]"),
    ("[\n  1,\n  2 * heads\n]", "[1, 2 * heads]"),
    ("1 - 2 ** (-5 - range(heads))", "1 - 2 ** (-5 - range(heads))"),
    ("-[1, 2] ** 2", "-[1, 2] ** 2"),
    ("([1, 2]) * 3", "[1, 2] * 3"),
    ("[(1 + 2), -3]", "[1 + 2, -3]"),
    ("[]", "[]"),
])
def test_a_vector_formats_canonically_and_round_trips(written, canonical):
    text = format_text(f"model m {{ c {written} }}")
    assert text == f"model m {{\n  c {canonical}\n}}\n"
    assert format_text(text) == text
    report = Report()
    assert parse(text, "t", report).items == parse(f"model m {{ c {written} }}", "t", report).items
    assert not report.errors


def test_an_unclosed_bracket_is_named():
    report = Report()
    assert parse("model m {\n  c [1, 2\n", "t.nl", report) is None
    (d,) = report.errors
    assert d.code == "NL012" and "`[` on line 2 is never closed; add `]`" in d.help


def test_a_comma_alone_is_a_syntax_error():
    report = Report()
    assert parse("model m { c [,] }", "t.nl", report) is None
    assert report.errors[0].code == "NL011"


# ------------------------------------------------------------------ RetNet's retention
@pytest.mark.parametrize("fused", [False, True])
def test_retnet_is_its_papers_recurrent_retention(fused):
    """Sun et al. 2023, Eq. 1-2 per head h: S_t = γ_h S_{t-1} + k_tᵀ v_t and o_t = q_t S_t,
    γ_h = 1 − 2^(−5−h) (§2.2); q and k turned by their position; then the gated per-head norm
    and the output projection: (swish(x W_G) ⊙ norm_h(o)) W_O."""
    torch.manual_seed(0)
    h, d, T = 2, 16, 10
    m = nldsl.compile(RETNET, dim=d, heads=h, context=T, depth=1, fused=fused).double()
    lv = level_of(m, "retention")
    x = torch.randn(2, T, d, dtype=torch.float64)
    y, _ = run_level(m, "retention", x)
    # rotary q and k in the complex form over Llama's pairs: the same permutation of each
    # head's coordinates for both, which q kᵀ and so o_t do not see (tests/test_positions.py)
    q, k = (heads(complex_rope(interleave(x @ getattr(lv, n).proj.T, h), torch.arange(T), h), h) for n in "qk")
    v = heads(x @ lv.v.proj.T, h)  # [B, h, T, 2d/h]
    gamma = 1 - 2.0 ** (-5 - torch.arange(h, dtype=torch.float64))
    o = torch.zeros(2, h, T, 2 * d // h, dtype=torch.float64)
    for b in range(2):
        for i in range(h):
            S = torch.zeros(d // h, 2 * d // h, dtype=torch.float64)
            for t in range(T):
                S = gamma[i] * S + torch.outer(k[b, i, t], v[b, i, t])
                o[b, i, t] = q[b, i, t] @ S
    o = o.transpose(1, 2).reshape(2, T, 2 * d)
    gate = torch.nn.functional.silu(x @ lv.out.proj.T)
    torch.testing.assert_close(y, (gate * head_rmsnorm(o, lv.out.rmsnorm, h, eps=1e-6)) @ lv.out.proj_1.T)


def test_retnet_streams_as_one_call_and_trains():
    torch.manual_seed(0)
    m = nldsl.compile(RETNET, dim=16, heads=4, context=32, depth=2)
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        whole, _ = m(tokens)
        first, state = m(tokens[:, :13])
        second, _ = m(tokens[:, 13:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-4)
    loss = m.loss(tokens[:, :33])
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in m.parameters())
    assert all(b.grad is None and not b.requires_grad for n, b in m.named_buffers() if "const" in n)


# ------------------------------------------------- a constant under a flow's name
@pytest.mark.parametrize("flows, out", [
    ("flow a = 1000", "proj(x) * exp(a)"),
    ("flow a = 500\n    flow b = a * 2", "proj(x) * exp(b)"),
])
def test_a_constant_flow_is_checked_where_a_constant_reads_it(flows, out):
    """The backend folds a flow that is a constant into what reads it; so does the
    checker, and a value out of range is located there, not an internal error later."""
    text = model(f"outer {{\n    {flows}\n    out {out}\n  }}")
    assert located(text) == ("NL160", "a constant expression is out of range", out.split(" * ")[1])
    fine = text.replace("1000", "2").replace("500", "1")
    logits = nldsl.compile(fine)(torch.randint(0, 32, (1, 8)))[0]
    assert torch.isfinite(logits).all()
