"""One model whatever the autograd mode: the logits of every example are the same with
gradients on, under no_grad, under inference_mode and fed in pieces. A task level's
inner gradient is its own gradient flow (docs/semantics.md §10): logits and outer
gradients are held to a loop written here from the equations, and the outer gradient
to central differences of the model that inference runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nldsl

EXAMPLES = Path(__file__).parent.parent / "examples"
SIZES = dict(dim=16, heads=2, context=64, depth=1)
CUTS = (23, 1, 26)  # pieces of 23, 1, 26 tokens and the rest: periods cut across calls, one token alone
TASK = "learn ffn : task by gd(lr: 1e-2)"


def _raised(path: Path) -> str:
    """An example's text with its task levels' rate raised from 1e-2 to 0.3, where what
    one level's inner gradient takes from another's update shows."""
    text = path.read_text()
    assert TASK in text
    return text.replace(TASK, TASK.replace("1e-2", "0.3"))


# (id, file, model, text to compile, or None for the file itself): every model of every
# example, and those with task levels again at the raised rate
CASES = [(f"{path.stem}:{m.name}", path, m.name, None) for path in sorted(EXAMPLES.glob("*.nl"))
         for m in nldsl.check(path).models]
CASES += [(f"{path.stem}:{m.name}@0.3", path, m.name, _raised(path))
          for path in (EXAMPLES / "cms.nl", EXAMPLES / "hope.nl", EXAMPLES / "hope_attention.nl")
          for m in nldsl.check(path).models]


def _logits(model, tokens, cuts=()):
    """The logits of one call, or of calls on pieces of `cuts` tokens (then the rest)
    carrying the state."""
    out, state, i = [], None, 0
    for n in (*cuts, tokens.shape[1] - sum(cuts)):
        logits, state = model(tokens[:, i:i + n], state)
        out.append(logits.detach())
        i += n
    return torch.cat(out, 1)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("path,name,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_mode_runs_one_model(path, name, text, fused):
    settings = next(m for m in nldsl.check(path).models if m.name == name).settings
    torch.manual_seed(0)
    model = nldsl.compile(text or path, name=name, fused=fused,
                          **{k: v for k, v in SIZES.items() if k in settings}).double()
    tokens = torch.randint(0, int(settings["vocab"]), (2, 80))
    want = _logits(model, tokens)  # gradients on: the model as trained
    for cuts in ((), CUTS):
        with torch.no_grad():
            got = {"no_grad": _logits(model, tokens, cuts)}
        with torch.inference_mode():  # tokens made there are inference tensors, as a server's are
            got["inference_mode"] = _logits(model, tokens.clone(), cuts)
        if cuts:
            got["grad"] = _logits(model, tokens, cuts)
        for mode, logits in got.items():
            torch.testing.assert_close(logits, want, atol=1e-9, rtol=0, msg=f"{mode}, pieces {cuts}")


# ------------------------------------------------------------ two task levels, from the equations
LR = 0.5
TWO_LEVELS = """model m {{
  vocab 32
  dim 8
  context 10
  level fast every 2 tokens {{
    memory ffn : mlp(dim, hidden: 8{init})
    learn ffn : task by gd(lr: {lr})
  }}
  level mid every 4 tokens {{
    memory ffn : mlp(dim, hidden: 8)
    learn ffn : task by gd(lr: {lr})
  }}
  block {{
    x = x + fast(rmsnorm(x))
    x = x + mid(rmsnorm(x))
  }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


def _two_levels_loop(P: dict, tokens: torch.Tensor, nested: bool) -> torch.Tensor:
    """The sequential (or nested) CMS of two task levels, from the equations: token t
    reads each level's state S_j of its period; at the end of a period of P tokens the
    level takes S' = S − η ∂L/∂S, L the summed cross-entropy of the P − 1 pairs (t, t+1)
    inside the period, ∂ its own gradient flow: L as a function of its own state, every
    other state as it was at each token. Nested: the fast level starts every period of
    `mid` (the first included) from a copy of mid's state. Differentiable throughout, so
    the outer gradient goes through every inner update."""
    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def mlp(theta, x):
        return F.silu(x @ theta["W2"].T) @ theta["W1"].T

    def predict(token, states):
        x = P["embed"][token]
        x = x + mlp(states["fast"], norm(x, P["block0.0.x.rmsnorm"]))
        x = x + mlp(states["mid"], norm(x, P["block0.0.x.rmsnorm_1"]))
        return norm(x, P["norm"]) @ P["head"].T

    def own_gradient(level, S, pairs, seen, tokens):
        """∂L/∂S holding the other level given: S enters as a new node that only this L reads."""
        mine = {k: v.view_as(v) for k, v in S.items()}
        loss = sum(F.cross_entropy(predict(tokens[t], {**seen[t], level: mine}), tokens[t + 1]) for t in pairs)
        return dict(zip(mine, torch.autograd.grad(loss, list(mine.values()), create_graph=True)))

    mid0 = {k: P[f"mid.0.ffn.{k}"][0] for k in ("W1", "W2")}
    fast0 = mid0 if nested else {k: P[f"fast.0.ffn.{k}"][0] for k in ("W1", "W2")}  # nested: no θ₀ of its own
    out = []
    for seq in tokens:
        states = {"fast": dict(fast0), "mid": dict(mid0)}
        seen = []
        for t in range(len(seq)):
            seen.append(dict(states))
            out.append(predict(seq[t], states))
            new = {}
            for level, period in (("fast", 2), ("mid", 4)):
                if (t + 1) % period == 0:
                    g = own_gradient(level, states[level], range(t + 1 - period, t), seen, seq)
                    new[level] = {k: v - LR * g[k] for k, v in states[level].items()}
            states.update(new)
            if nested and (t + 1) % 4 == 0:
                states["fast"] = dict(states["mid"])
    return torch.stack(out).reshape(*tokens.shape, -1)


@pytest.mark.parametrize("nested", [False, True], ids=["sequential", "nested"])
def test_two_task_levels_equal_the_loop_in_every_mode(nested):
    """Logits in every mode and the outer gradient equal the loop's; the outer gradient is
    the derivative of the no_grad model (central differences along a random direction)."""
    torch.manual_seed(0)
    model = nldsl.compile(TWO_LEVELS.format(init=", init: mid.ffn" if nested else "", lr=LR)).double()
    P = dict(model.named_parameters())
    tokens = torch.randint(0, 32, (2, 10))  # 10: the last period of `mid` is cut short
    want = _two_levels_loop(P, tokens, nested)
    got, _ = model(tokens)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], want, atol=1e-9, rtol=0)
        torch.testing.assert_close(_logits(model, tokens, (3, 2, 1)), want, atol=1e-9, rtol=0)
    probe = torch.randn_like(want)
    names = list(P)
    g_got = torch.autograd.grad((got * probe).sum(), [P[n] for n in names])
    g_want = torch.autograd.grad((want * probe).sum(), [P[n] for n in names])
    for n, a, b in zip(names, g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7, msg=n)

    direction = {n: torch.randn_like(p) for n, p in P.items()}
    eps, ends = 1e-6, []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in P.items():
                p.add_(sign * eps * direction[n])
            ends.append((model(tokens)[0] * probe).sum())
            for n, p in P.items():
                p.sub_(sign * eps * direction[n])
    numeric = (ends[0] - ends[1]) / (2 * eps)
    analytic = sum((g * direction[n]).sum() for n, g in zip(names, g_got))
    torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-6)


def test_torch_compile_runs_a_model_holding_states_given_eagerly():
    """What `Given` passes back depends on which gradient is being taken, which a traced
    graph cannot follow: under torch.compile such a model leaves the graph, and its
    logits and gradients are eager's."""
    torch.manual_seed(0)
    model = nldsl.compile(TWO_LEVELS.format(init=", init: mid.ffn", lr=LR))
    tokens = torch.randint(0, 32, (2, 8))
    probe = torch.randn(2, 8, 32)
    results = []
    for run in (model, torch.compile(model, backend="aot_eager")):
        model.zero_grad(set_to_none=True)
        logits, _ = run(tokens)
        (logits * probe).sum().backward()
        results.append([logits.detach()] + [p.grad for p in model.parameters()])
    torch._dynamo.reset()
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
