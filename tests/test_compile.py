"""torch.compile on compiled models (CPU inductor): the same logits and gradients as
eager, and no graph break inside the period loop. The one break dynamo makes is at
the end of the model's call, where the deferred finiteness checks are made
(`ModelState.verify` branches on data; docs/performance.md).

Sizes are tiny: inductor's compile time grows with the periods it unrolls."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.runtime.errors import NonFiniteError

EXAMPLES = Path(__file__).parent.parent / "examples"

# a level learning on the next-token loss every 4 tokens (chunk-wise test-time
# training: a gradient inside the forward, differentiated again by the backward)
TASK = """model m {
  vocab 32
  dim 8
  heads 2
  context 8
  level fast every 4 tokens {
    memory ffn : mlp(dim, hidden: 2 * dim)
    learn ffn : task by gd(lr: 0.1)
  }
  block { x = x + fast(rmsnorm(x)) }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""


# HOPE in small: a self-modifying level, whose memories the fused path holds stacked,
# under a task level
SELF_MODIFYING = """model m {
  vocab 32
  dim 8
  heads 2
  context 8
  level titans every 4 tokens {
    memory k, v, mem : mlp(dim, hidden: dim, residual, heads: heads)
    flow key = l2norm(k(x), heads: heads)
    flow val = v(x)
    flow keep = sigmoid(proj(x, heads))
    learn k, v, mem : l2(key, self(val)) by gd(lr: 0.1, decay: keep)
    out mem(proj(x))
  }
  level cms every 8 tokens {
    memory ffn : mlp(dim, hidden: 2 * dim)
    learn ffn : task by gd(lr: 0.1)
  }
  block {
    x = x + titans(rmsnorm(x))
    x = x + cms(rmsnorm(x))
  }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""


# a task level before a learned MLP memory, for two task periods: the second period's
# outer gradient differentiates the first period's inner one through the memory's
# period nodes, its keys' l2norm and the layout of its periods (all with written
# backwards, which the trace must leave out: ops.written_backward)
TASK_THEN_MEMORY = """model m {
  vocab 32
  dim 8
  heads 2
  context 16
  level cms every 8 tokens {
    memory ffn : mlp(dim, hidden: 2 * dim)
    learn ffn : task by gd(lr: 0.1)
  }
  level mem every 4 tokens {
    memory M : mlp(dim, hidden: dim, residual, heads: heads)
    flow key = l2norm(proj(x), heads: heads)
    learn M : l2(key, proj(x)) by gd(lr: 0.1)
    out M(proj(x))
  }
  block {
    x = x + cms(rmsnorm(x))
    x = x + mem(rmsnorm(x))
  }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""


def _breaks_outside_verify(model, tokens) -> list[str]:
    explained = torch._dynamo.explain(lambda t: model(t)[0])(tokens)
    torch._dynamo.reset()
    return [f"{f.filename}:{f.lineno} {b.reason}" for b in explained.break_reasons for f in b.user_stack[-1:]
            if f.name != "verify" and "state.verify()" not in (f.line or "")]


@pytest.mark.parametrize("source,settings,vocab", [
    (EXAMPLES / "titans.nl", dict(dim=16, heads=2, depth=1, context=32), 256),
    (TASK, {}, 32),
    (SELF_MODIFYING, {}, 32),
    (TASK_THEN_MEMORY, {}, 32),
], ids=["titans", "task", "self-modifying", "task-then-memory"])
def test_compiled_model_equals_eager(source, settings, vocab):
    torch.manual_seed(0)
    model = nldsl.compile(source, **settings)
    if source is SELF_MODIFYING:
        assert next(model.levels()).desc.stacks == (("k", "v", "mem"),)
    tokens = torch.randint(0, vocab, (2, int(model.settings["context"])))
    assert _breaks_outside_verify(model, tokens) == []
    probe = torch.linspace(-1, 1, vocab)
    results = []
    for run in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        logits = run(tokens)[0]
        (logits * probe).sum().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = results
    # float32, summed in another order by inductor's fused loops
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for (name, _), g, w in zip(model.named_parameters(), got_grads, want_grads):
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_model_still_names_a_non_finite_state():
    torch.manual_seed(0)
    model = nldsl.compile(EXAMPLES / "titans.nl", dim=16, heads=2, depth=1, context=32)
    with torch.no_grad():
        next(model.levels()).M.W2.mul_(1e30)  # the memory's start: its first update overflows
    with pytest.raises(NonFiniteError, match="level `titans"):
        torch.compile(model, backend="aot_eager")(torch.randint(0, 256, (1, 32)))
