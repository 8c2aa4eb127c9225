"""What the checker computes (sizes, defaults, parameters), beyond its diagnostics."""
import pytest

from nldsl.compiler.diagnostics import NLError
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
