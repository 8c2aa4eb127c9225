"""Regional compilation (nldsl/runtime/regions.py, what `nldsl train --compile` does): the
period steps compiled once, with the period's shapes, and reused for every period and every
length. The training step equals eager (the loss, every parameter's gradient), for a level
whose periods run as one span (titans.nl: the MLP period's algebra) and for HOPE, whose
self-modifying level runs period by period under a task level (the levels after the task
level run eagerly, since its inner gradient is differentiated again). Compilations are
counted by dynamo's counters, not timed.

The backend is `aot_eager`: dynamo and AOTAutograd (the part that cannot differentiate a
region twice) without inductor's code generation, which costs seconds per graph; inductor
itself is checked against eager by benchmarks/compiled.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import nldsl
from nldsl.runtime.regions import regional

EXAMPLES = Path(__file__).parent.parent / "examples"


def _step(model, tokens):
    model.zero_grad(set_to_none=True)
    logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("spec,settings", [
    ("titans", dict(dim=16, heads=2, depth=1)),
    # two blocks: the second block's Titans level lies under the first task level's gradient
    ("hope", dict(dim=32, heads=2, depth=2)),
])
def test_regional_step_equals_eager_and_compiles_once(spec, settings, fresh_dynamo):
    torch.manual_seed(0)
    eager = nldsl.compile(EXAMPLES / f"{spec}.nl", context=64, **settings)
    model = nldsl.compile(EXAMPLES / f"{spec}.nl", context=64, **settings)
    model.load_state_dict(eager.state_dict())
    regional(model, backend="aot_eager")
    graphs = []
    for context in (64, 128):  # the second length compiles nothing new
        tokens = torch.randint(0, 256, (2, context + 1))
        want_loss, want = _step(eager, tokens)
        got_loss, got = _step(model, tokens)
        graphs.append(counters["stats"]["unique_graphs"])
        torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
        for name, w in want.items():
            assert (got[name] is None) == (w is None), name
            if w is not None:  # relative to the gradient's largest entry
                torch.testing.assert_close(got[name], w, atol=1e-6 * w.abs().max().item(), rtol=1e-5, msg=name)
    assert graphs[0] > 0, "no region was compiled"
    assert graphs[1] == graphs[0], f"compiled again for a longer context: {graphs}"


def test_regional_switches_off_and_skips_models_with_given_state():
    model = nldsl.compile(EXAMPLES / "titans.nl", dim=16, heads=2, depth=1, context=32)
    assert regional(model, backend="aot_eager").options["regional"] == "aot_eager"
    assert regional(model, enabled=False).options["regional"] is None
    nested = """model m {
      vocab 32
      dim 8
      context 8
      level fast every 2 tokens {
        memory ffn : mlp(dim, hidden: dim)
        learn ffn : task by gd(lr: 0.1)
      }
      level slow every 4 tokens {
        memory ffn : mlp(dim, hidden: dim)
        learn ffn : task by gd(lr: 0.1)
      }
      block { x = x + fast(rmsnorm(x)) + slow(rmsnorm(x)) }
      objective next_token
      optimizer adam(lr: 1e-3)
    }"""
    model = nldsl.compile(nested)
    assert model.holds_given()
    assert regional(model).options["regional"] is None  # runs eagerly, as under torch.compile


def test_train_names_an_unknown_compile_mode(tmp_path):
    from nldsl import train as tr
    with pytest.raises(tr.TrainError, match="compile='fast'"):
        tr.train(EXAMPLES / "titans.nl", steps=1, out_dir=tmp_path / "run", compile="fast", quiet=True)
    assert not (tmp_path / "run").exists()


def test_steps_that_read_positions_stay_eager():
    """Compiled with fixed shapes, a step reading its tokens' positions would be a graph per period."""
    from nldsl.runtime.regions import _reads_position
    attention = next(nldsl.compile(EXAMPLES / "transformer.nl", dim=16, depth=1).levels())
    titans = next(nldsl.compile(EXAMPLES / "hope.nl", dim=32, heads=2, depth=1, context=64).levels())
    assert _reads_position(attention) and not _reads_position(titans)


# titans.nl with a task level before its Titans level: the Titans level's MLP periods run
# under the task level's inner gradient, which evaluation takes with autograd on
_UNDER_TASK = (EXAMPLES / "titans.nl").read_text().replace(
    "  level ffn outer { memory f : mlp(dim, hidden: 4 * dim, act: gelu) }",
    "  level ffn every 64 tokens {\n    memory f : mlp(dim, hidden: 2 * dim)\n    learn f : task by gd(lr: 0.01)\n  }"
).replace("    x = x + titans(rmsnorm(x))\n    x = x + ffn(rmsnorm(x))",
          "    x = x + ffn(rmsnorm(x))\n    x = x + titans(rmsnorm(x))")


@pytest.mark.parametrize("source", [EXAMPLES / "titans.nl", _UNDER_TASK], ids=["titans", "task_then_titans"])
def test_evaluation_after_regional_training_runs_eagerly(source, fresh_dynamo):
    """A regional model evaluates as the eager one, to the last bit, under no_grad and
    inference_mode alike: no compiled region runs, though a task level's inner gradient
    turns autograd on inside the evaluation."""
    assert "learn f : task" in _UNDER_TASK and "ffn(rmsnorm(x))\n    x = x + titans" in _UNDER_TASK
    runs = []

    def counting(gm, inputs):  # a backend that runs the traced graph as it is, counting its calls
        def run(*args):
            runs.append(1)
            return gm.forward(*args)
        return run

    torch.manual_seed(0)
    eager = nldsl.compile(source, dim=16, heads=2, depth=1, context=64)
    model = nldsl.compile(source, dim=16, heads=2, depth=1, context=64)
    model.load_state_dict(eager.state_dict())
    regional(model, backend=counting)
    tokens = torch.randint(0, 256, (2, 129))
    _step(model, tokens)
    assert runs, "no region ran compiled in training"
    runs.clear()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            want, got = eager(tokens)[0], model(tokens)[0]
        assert torch.equal(got, want), mode.__name__
    assert not runs, f"{len(runs)} compiled region calls in evaluation"


def test_regions_compile_scalar_loops_with_inductor_only(monkeypatch):
    """Inductor gets regions.INDUCTOR_OPTIONS (C++ loops that compile in two thirds of the
    time, docs/benchmarks.md); other backends take no inductor options."""
    from nldsl.runtime import regions
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    regions._compile(abs, "inductor")
    regions._compile(abs, "aot_eager")
    assert seen[0]["options"] == {"cpp.simdlen": 1} and seen[0]["dynamic"] is False
    assert seen[1]["options"] is None
