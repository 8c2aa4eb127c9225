"""What the checker computes (sizes, defaults, parameters), beyond its diagnostics."""
import contextlib

import pytest

from nldsl.compiler.diagnostics import NLError, Report
from nldsl.compiler.driver import check

HEAD = "vocab 10\ndim 8\nheads 2\ncontext 32\n"
TAIL = "objective next_token\noptimizer adamw(lr: 1e-3)\n"


def model(body: str, **overrides):
    return check(f"model m {{\n{HEAD}{body}\n{TAIL}}}\n", **overrides).models[0]


def test_parameters_created_inside_a_learn_statement_are_outer_parameters():
    m = model("level a every 4 tokens { memory M : linear(dim, heads: heads)\n"
              "  learn M : l2(proj(x), x) by gd(lr: sigmoid(proj(x, heads))) }\n"
              "block { x = x + a(x) }")
    shapes = {p.name: p.shape for p in m.level("a").params}
    assert shapes == {"a.M.key.proj": (8, 8), "a.M.lr.proj": (2, 8), "a.M.W": (2, 4, 4)}


def test_frozen_memories_have_no_trained_initial_state():
    m = model("level f frozen { memory ffn : mlp(dim) }\nblock { x = x + f(x) }")
    assert m.level("f").params == ()


def test_optimizer_defaults_follow_the_values_given_at_the_use_site():
    text = ("optimizer o(a = 1, b = 2 * a) { update W -= b * g }\n"
            f"model m {{\n{HEAD}level f outer {{ memory f : mlp(dim) }}\nblock {{ x = x + f(x) }}\n"
            "objective next_token\noptimizer o(a: 5)\n}\n")
    (use,) = check(text).models[0].optimizers
    assert use.optimizer.hparams == {"a": 5, "b": 10}


@pytest.mark.parametrize("override, message", [({"dim": 0}, "positive integer"), ({"batch": 2.5}, "positive integer"),
                                               ({"dim": "x"}, "must be a number")])
def test_overrides_are_checked_like_settings(override, message):
    with pytest.raises(NLError, match=message):
        model("level f outer { memory f : mlp(dim) }\nblock { x = x + f(x) }", **override)


def test_memory_defaults():
    m = model("level f outer { memory a : mlp(dim)\nmemory b : linear(dim -> heads)\nout a(x) }\n"
              "block { x = x + f(x) }")
    a, b = m.level("f").memories
    assert (a.hidden, a.act, a.residual, a.init, a.heads) == (8, "silu", False, "normal", 1)
    assert (b.d_in, b.d_out, b.init) == (8, 2, "zeros")


def test_per_head_functions_and_the_decay_first_flag():
    """`learned(c, n)` is a vector of n, `rmsnorm(e, heads: h)` has one scale of a head's
    size, and `decay_first` (bare or as `decay_first: true`) is recorded on the learn."""
    m = model("level a every 1 token { memory M : linear(dim, heads: heads)\n"
              "  flow k = l2norm(proj(x), heads: heads)\n"
              "  flow keep = exp(-softplus(proj(x, heads) + learned(-4, heads)))\n"
              "  learn M : l2(k, x) by gd(lr: 0.5, decay: keep, decay_first) read within\n"
              "  out rmsnorm(M(k), heads: heads) }\n"
              "level b every 1 token { memory M : linear(dim)\n"
              "  learn M : l2(x, x) by gd(lr: 0.5, decay: 0.9, decay_first: false) }\n"
              "block { x = x + a(x) + b(x) }")
    shapes = {p.name: p.shape for p in m.level("a").params}
    assert shapes["a.keep.learned"] == (2,) and shapes["a.out.rmsnorm"] == (4,)
    assert m.level("a").flows[1].size == 2
    assert [m.level(n).learns[0].decay_first for n in "ab"] == [True, False]


def test_task_rates_are_one_number_not_one_per_head():
    with pytest.raises(NLError, match="one number, not one per head"):
        model("level t every 4 tokens { memory F : mlp(dim, heads: heads)\n"
              "  learn F : task by gd(lr: learned(0.1, heads)) }\nblock { x = x + t(x) }")



def test_the_per_token_flag_of_gd_and_momentum():
    """`per_token` (bare, `: true` or `: false`) is recorded on the learn, on `gd` and
    `momentum`; not an option of `implicit` (NL113), not for `task` (NL112); where it
    changes nothing, a warning (NL118)."""
    m = model("level a every 4 tokens { memory A, B, C : mlp(dim)\n"
              "  learn A : l2(x, x) by momentum(lr: 0.1, beta: 0.9, per_token) read within\n"
              "  learn B : l2(x, x) by gd(lr: 0.1, decay: 0.9, per_token: true)\n"
              "  learn C : l2(x, x) by gd(lr: 0.1, decay: 0.9, per_token: false)\n"
              "  out A(x) + B(x) + C(x) }\n"
              "block { x = x + a(x) }")
    assert [l.per_token for l in m.level("a").learns] == [True, True, False]
    cases = {("every 4 tokens", "linear", "l2(x, x) by implicit(lr: 0.1, per_token)"): "NL113",
             ("every 4 tokens", "mlp", "task by gd(lr: 0.1, decay: 0.9, per_token)"): "NL112",
             ("every 1 token", "linear", "l2(x, x) by momentum(lr: 0.1, beta: 0.9, per_token)"): "NL118",
             ("every 4 tokens", "linear", "l2(x, x) by gd(lr: 0.1, per_token)"): "NL118"}
    for (period, kind, learn), code in cases.items():
        report = Report()
        with contextlib.suppress(NLError):
            check(f"model m {{\n{HEAD}level a {period} {{ memory M : {kind}(dim)\n  learn M : {learn} }}\n"
                  f"block {{ x = x + a(x) }}\n{TAIL}}}\n", report)
        assert [(d.code, d.severity) for d in report.diagnostics] == [(code, "warning" if code == "NL118" else "error")]
