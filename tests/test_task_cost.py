"""The cost of `task` levels' inner gradients (compiler/costs.py): the estimate follows
its derivation as task levels are stacked, `detach` takes it back to first order, its
first order is the matrix products a step counts, and `check` warns (NL158) where the
exact step is far above its first order."""
import importlib.util
from pathlib import Path

import pytest

from nldsl.compiler import passes
from nldsl.compiler.costs import RATIO, step_costs, task_costs
from nldsl.compiler.diagnostics import Report
from nldsl.compiler.driver import check

ROOT = Path(__file__).resolve().parent.parent
_bench = importlib.util.spec_from_file_location("task_levels", ROOT / "benchmarks" / "task_levels.py")
task_levels = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(task_levels)


def stack(k, detach=False, dim=16, context=32):
    return task_levels.spec(k, detach, dim, context, 2)


def costs(text):
    ir = passes.run(check(text).models[0])
    return task_costs(ir), step_costs(ir)


def test_two_stacked_levels_by_hand():
    dim, vocab = 16, 256
    r = 2 * (2 * dim * dim) * 2  # a read of mlp(dim, hidden: 2·dim): 2·|θ|
    head = 2 * dim * vocab
    own = 1.5 * r  # the weights' gradients (a read) and back through the second layer (half a read)
    (t0, t1), step = costs(stack(2))
    # t0 (every 4 tokens, one 4-token segment a period): back through the head, t1 and itself
    assert t0["first"] == pytest.approx(head + r + own)
    assert t0["exact"] == pytest.approx(3 * t0["first"])  # and the outer backward through that pass
    # t1 (every 8: two segments, the second's pass also runs through the first): 1.5 passes a token
    assert t1["passes"] == pytest.approx(1.5)
    assert t1["first"] == pytest.approx(1.5 * (head + own))
    # in its second segment t0's update is given to it: the pass runs on back through its own
    # input (half a read) to t0's state (t0's own gradient), once for that segment's 4 tokens of 8
    assert t1["given"] == pytest.approx((r / 2 + own) / 2)
    assert t1["exact"] == pytest.approx(3 * t1["first"] + t1["given"])
    base = 3 * (2 * r + head)  # forward and outer backward (≈ 2× forward): two reads and the head
    assert step["first"] == pytest.approx(base + t0["first"] + t1["first"])
    assert step["exact"] == pytest.approx(base + t0["exact"] + t1["exact"])


def test_exact_cost_grows_with_stacked_levels_and_detach_is_first_order():
    ratios, firsts = [], []
    for k in range(1, 5):
        rows, step = costs(stack(k))
        ratios.append(step["ratio"])
        # each level's pass: 3× its first order, more where faster levels' updates are given to it
        assert [r["ratio"] > 3 for r in rows] == [False] + [True] * (k - 1)
        assert all(b["ratio"] < c["ratio"] for b, c in zip(rows, rows[1:]))
        rows_d, step_d = costs(stack(k, detach=True))
        assert step_d["ratio"] == 1 and all(r["exact"] == r["first"] and r["detach"] for r in rows_d)
        assert step_d["first"] == pytest.approx(step["first"])
        firsts.append(step["first"])
    assert ratios == sorted(ratios) and len(set(ratios)) == 4
    # the second-order part grows faster than the first-order step: about quadratically
    second = [f * (q - 1) for f, q in zip(firsts, ratios)]
    assert all(b / a > (k + 1) / k for k, (a, b) in enumerate(zip(second, second[1:]), 1))


def test_first_order_estimate_is_the_counted_products():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    import nldsl
    text = stack(3, detach=True)
    (_, step) = costs(text)
    torch.manual_seed(0)
    model = nldsl.compile(text)
    tokens = torch.randint(0, 256, (2, 33))
    with FlopCounterMode(display=False) as fc:
        model.loss(tokens).backward()
    assert fc.get_total_flops() / 64 == pytest.approx(step["first"], rel=0.02)


def test_four_stacked_levels_warn_at_their_learn_statements():
    text = stack(4)
    report = Report()
    check(text, report)
    warned = [d for d in report.diagnostics if d.code == "NL158"]
    learns = [i + 1 for i, line in enumerate(text.splitlines()) if "learn ffn : task" in line]
    assert [(d.severity, d.span.line) for d in warned] == [("warning", n) for n in learns]
    assert all("detach" in d.help for d in warned)
    assert costs(text)[1]["ratio"] > RATIO


@pytest.mark.parametrize("text", [stack(4, detach=True), stack(1)], ids=["detach", "one level"])
def test_no_warning_at_first_order_or_for_one_level(text):
    report = Report()
    check(text, report)
    assert not report.diagnostics


def test_hope_does_not_warn():
    report = Report()
    check(ROOT / "examples" / "hope.nl", report)
    assert not report.diagnostics
    (cms1,), step = costs(ROOT / "examples" / "hope.nl")
    assert cms1["copies"] == 2 and step["ratio"] < RATIO
