"""The fused path against the reference backend (fused=False), and its chunk-parallel
delta rule against a per-token loop written here from design §5-§6."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.runtime.memories.linear.chunk import delta_rule
from nldsl.runtime.errors import NonFiniteError

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loop(S0, q, k, v, eta, log_decay, P, within, l2, decay_first=False, per_token=False):
    """Per token: items of a period take their gradients at S_j (at a_j S_j with
    `decay_first`, a_j the period's decay); the period's decay (the product of its
    items') and summed steps apply at its end. With `per_token` the state steps at
    every token, S_t = α_t S_{t-1} − η_t ∇ℓ_t(S_j): a step decays with the tokens after it."""
    B, n, h, _ = k.shape
    out = torch.zeros(B, n, h, v.shape[-1], dtype=q.dtype)
    S, alpha = S0.clone(), log_decay.exp()
    for j in range(0, n, P):
        G, decay = torch.zeros_like(S), torch.ones(B, h, dtype=q.dtype)
        at = alpha[:, j:j + P].prod(1)[..., None, None] * S if decay_first else S
        for t in range(j, j + P):
            r = torch.einsum("bhoi,bhi->bho", at, k[:, t]) - v[:, t] if l2 else -v[:, t]
            G = (alpha[:, t, :, None, None] * G if per_token else G) + eta[:, t, :, None, None] * torch.einsum(
                "bho,bhi->bhoi", r, k[:, t])
            decay = decay * alpha[:, t]
            seen = decay[..., None, None] * S - G if within else S
            out[:, t] = torch.einsum("bhoi,bhi->bho", seen, q[:, t])
        S = decay[..., None, None] * S - G
    return out, S


def _inputs(B=2, n=24, h=2, i=4, o=3):
    f64 = dict(dtype=torch.float64)
    q = torch.randn(B, n, h, i, **f64)
    k = torch.nn.functional.normalize(torch.randn(B, n, h, i, **f64), dim=-1)
    v, eta = torch.randn(B, n, h, o, **f64), torch.rand(B, n, h, **f64)
    log_decay = (0.5 + 0.5 * torch.rand(B, n, h, **f64)).log()
    return [torch.randn(B, h, o, i, **f64), q, k, v, eta, log_decay]


@pytest.mark.parametrize("P", [1, 3, 4, 24])
@pytest.mark.parametrize("within", [False, True])
@pytest.mark.parametrize("l2", [True, False])
def test_chunked_delta_rule_equals_the_loop_for_every_tile(P, within, l2):
    args = _inputs()
    want, want_S = loop(*args, P, within, l2)
    for tile in (1, 4, 8, 12, 64):  # 5 is not a multiple of 3 or 4: rounded to whole periods
        got, S = delta_rule(*args, period=P, tile=tile, within=within, l2=l2)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(S, want_S)


@pytest.mark.parametrize("P,within", [(1, True), (2, False)])
def test_chunked_delta_rule_gradients_equal_the_loops(P, within):
    args = [a.requires_grad_() for a in _inputs(n=12)]
    probe = torch.randn(2, 12, 2, 3, dtype=torch.float64)
    got = torch.autograd.grad((delta_rule(*args, period=P, tile=4, within=within)[0] * probe).sum(), args)
    want = torch.autograd.grad((loop(*args, P, within, True)[0] * probe).sum(), args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("P,within", [(1, True), (1, False), (3, False)])
def test_chunked_decay_first_equals_the_loop(P, within):
    """The gradient at the decayed state (Gated DeltaNet's order): reads, end state and
    gradients, for every tile."""
    args = [a.requires_grad_() for a in _inputs(n=12)]
    want, want_S = loop(*args, P, within, True, decay_first=True)
    for tile in (1, 4, 12):
        got, S = delta_rule(*args, period=P, tile=tile, within=within, decay_first=True)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(S, want_S)
    probe = torch.randn_like(want)
    got = torch.autograd.grad((delta_rule(*args, period=P, tile=4, within=within, decay_first=True)[0] * probe).sum(),
                              args)
    for a, b in zip(got, torch.autograd.grad((want * probe).sum(), args)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("P,within", [(3, False), (3, True), (4, True), (24, False)])
def test_chunked_per_token_equals_the_loop(P, within):
    """`per_token` (Titans' mini-batch rule, gd): reads, end state and gradients, every tile."""
    args = [a.requires_grad_() for a in _inputs()]
    want, want_S = loop(*args, P, within, True, per_token=True)
    for tile in (1, 4, 12, 64):
        got, S = delta_rule(*args, period=P, tile=tile, within=within, per_token=True)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(S, want_S)
    probe, probe_S = torch.randn_like(want), torch.randn_like(want_S)
    got, S = delta_rule(*args, period=P, tile=4, within=within, per_token=True)
    got = torch.autograd.grad((got * probe).sum() + (S * probe_S).sum(), args)
    for a, b in zip(got, torch.autograd.grad((want * probe).sum() + (want_S * probe_S).sum(), args)):
        torch.testing.assert_close(a, b)


def _pair(source, **kw):
    ref = nldsl.compile(source, fused=False, **kw).double()
    fused = nldsl.compile(source, **kw).double()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.nl")))
def test_every_example_fused_equals_the_reference(example):
    """Logits and every parameter's gradient, over a stream cut mid-period (a call of
    37 tokens, then 33: the fused path runs whole periods, the reference the rest)."""
    kw = {"name": "cms_nested"} if example == "cms.nl" else {}
    ref, fused = _pair(EXAMPLES / example, dim=16, heads=2, context=64, depth=1, **kw)
    _same_stream(ref, fused, torch.randint(0, 256, (2, 70)), cut=37)


def _stream(model, tokens, cut: int):
    """Two calls cut at `cut`, then the backward of a fixed weighting of the logits:
    (logits, every parameter's gradient, the state left)."""
    a, st = model(tokens[:, :cut])
    b, st = model(tokens[:, cut:], st)
    logits = torch.cat([a, b], 1)
    (logits * torch.linspace(-1, 1, logits.shape[-1], dtype=logits.dtype)).sum().backward()
    return logits, [p.grad for p in model.parameters()], st


def _same_stream(ref, fused, tokens, cut: int):
    """The two models agree on a stream cut mid-period, forward and backward; returns
    the states they leave."""
    (want, want_grads, ref_st), (got, got_grads, fused_st) = (_stream(m, tokens, cut) for m in (ref, fused))
    torch.testing.assert_close(got, want)
    for (name, _), g, w in zip(ref.named_parameters(), got_grads, want_grads):
        assert (g is None) == (w is None), name
        if g is not None:
            torch.testing.assert_close(g, w, msg=name)
    return ref_st, fused_st


def test_which_levels_run_whole_periods_at_once():
    model = nldsl.compile(EXAMPLES / "hope.nl", dim=16, heads=2, context=64, depth=1)
    parallel = {lv.desc.name: lv.desc.parallel for lv in model.levels()}
    # self-modifying: keys and values come from the level's own memories
    assert parallel == {"titans": False, "cms1": True, "cms2": False, "cms3": False}
    for example in ("gated_deltanet.nl", "linear_attention.nl", "titans.nl", "transformer.nl"):
        model = nldsl.compile(EXAMPLES / example, dim=16, heads=2, context=64, depth=1)
        assert next(model.levels()).desc.parallel, example


def test_a_parallel_level_steps_once_per_run_of_whole_periods():
    calls = []
    for fused in (False, True):
        model = nldsl.compile(EXAMPLES / "gated_deltanet.nl", dim=16, heads=2, context=64, depth=1, fused=fused)
        lv = next(model.levels())
        step = lv.step
        lv.__dict__["step"] = lambda x, st: calls.append(x.shape[1]) or step(x, st)
        model(torch.randint(0, 256, (1, 40)))
    assert calls == [1] * 40 + [40]


LEVEL = """model m {{
  vocab 32
  dim 8
  heads 2
  context 32
  level L every {P} tokens {{
    memory M : linear(dim, heads: heads, init: normal)
    flow q = proj(x)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    learn M : {learn}
    out {out}
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
  {schedule}
}}"""


@pytest.mark.parametrize("P,learn,out,parallel", [
    (1, "l2(k, v) by implicit(lr: eta)", "M(q)", True),
    (4, "l2(k, v) by momentum(lr: eta, beta: 0.9, decay: keep)", "M(q)", True),
    (4, "l2(k, v) by gd(lr: eta, decay: keep) read within", "M(q)", True),
    (2, "dot(k, v) by gd(lr: eta)", "M(q) + M(k)", False),  # read twice
    (4, "l2(M(k), v) by gd(lr: eta)", "M(q)", False),  # learns from its own read
])
def test_other_rules_and_reads_fused_equal_the_reference(P, learn, out, parallel):
    ref, fused = _pair(LEVEL.format(P=P, learn=learn, out=out, schedule=""))
    assert next(fused.levels()).desc.parallel == parallel
    tokens = torch.randint(0, 32, (2, 30))
    torch.testing.assert_close(fused(tokens)[0], ref(tokens)[0])


DECAY_FIRST = """model m {{
  vocab 32
  dim 8
  heads 2
  context 32
  level L every 1 token {{
    memory A, B : mlp(dim, hidden: 8, heads: heads)
    memory C : linear(dim, heads: heads)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = 0.5 * sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    learn A, B : l2(k, {value}) by gd(lr: eta, decay: keep, decay_first)
    learn C : l2(k, v) by gd(lr: eta, decay: keep, decay_first) read within
    out A(v) + B(v) + C(v)
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


@pytest.mark.parametrize("value,parallel", [("v", True), ("self(v)", False)])
def test_decay_first_fused_equals_the_reference(value, parallel):
    """`decay_first` on the fused path: mlp memories by the loop over periods (whole spans,
    or stacked into one batched gradient when self-modifying), the linear memory in
    chunk-parallel form; forward and backward over a stream cut in two."""
    ref, fused = _pair(DECAY_FIRST.format(value=value))
    desc = next(fused.levels()).desc
    assert (desc.parallel, desc.stacks) == (parallel, () if parallel else (("A", "B"),))
    _same_stream(ref, fused, torch.randint(0, 32, (2, 20)), cut=9)


PER_TOKEN = """model m {{
  vocab 32
  dim 8
  heads 2
  context 32
  level L every 4 tokens {{
    memory A : mlp(dim, hidden: 8, heads: heads)
    memory B : mlp(dim, hidden: 8, heads: heads)
    memory C : linear(dim, heads: heads)
    memory D : mlp(dim, hidden: 8, heads: heads, bias)
    flow k = l2norm(proj(x), heads: heads)
    flow v = proj(x)
    flow eta = 0.5 * sigmoid(proj(x, heads))
    flow beta = sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    learn A : l2(k, {value}) by momentum(lr: eta, beta: beta, decay: keep, per_token) read {read}
    learn B : l2(k, {value}) by gd(lr: eta, decay: keep, per_token) read {read}
    learn C : l2(k, v) by gd(lr: eta, decay: keep, per_token) read {read}
    learn D : l2(k, v) by gd(lr: eta, decay: keep, per_token) read {read}
    out A(v) + B(v) + C(v) + D(v)
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}"""


@pytest.mark.parametrize("value,read", [("v", "before"), ("v", "within"), ("self(v)", "before")])
def test_per_token_fused_equals_the_reference(value, read):
    """`per_token` on the fused path: gd read before by the mlp's one node per period on
    rates times the later decays (B), the linear memory in chunk-parallel form (C),
    momentum (A), an mlp with biases (D) and reads within by the loop over periods;
    forward and backward over a stream cut mid-period."""
    ref, fused = _pair(PER_TOKEN.format(value=value, read=read))
    assert next(fused.levels()).desc.parallel == (value == "v")
    _same_stream(ref, fused, torch.randint(0, 32, (2, 22)), cut=9)


def test_the_tile_hint_does_not_change_results():
    text = LEVEL.format(P=1, learn="l2(k, v) by gd(lr: eta, decay: keep) read within", out="M(q)", schedule="{}")
    tokens = torch.randint(0, 32, (2, 31))
    outs = []
    for tile in (1, 5, 16, 64):
        torch.manual_seed(0)
        model = nldsl.compile(text.replace("{}", f"schedule {{ L.tile = {tile} }}"))
        assert next(model.levels()).desc.tile == tile
        outs.append(model(tokens)[0])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-4)


def test_a_non_finite_state_names_the_same_token_as_the_reference():
    text = LEVEL.format(P=2, learn="l2(k, v) by gd(lr: 1e15)", out="M(q)", schedule="")
    ref, fused = (nldsl.compile(text, fused=f) for f in (False, True))
    fused.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for model in (ref, fused):
            next(model.levels()).v.proj.mul_(1e30)
    tokens = torch.randint(0, 32, (1, 16))
    errors = []
    for model in (ref, fused):
        with pytest.raises(NonFiniteError) as e:
            model(tokens)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("entries,bad_sequence", [
    ([3e38, 3e38], None),  # finite entries whose sum overflows: no error
    ([1.0, float("nan")], 1), ([float("inf"), float("-inf")], 0),  # an Inf and a -Inf sum to NaN
])
def test_the_finiteness_check_looks_entry_by_entry_when_the_sum_is_not_finite(entries, bad_sequence):
    from types import SimpleNamespace

    from nldsl.runtime.level import LevelState

    W = torch.zeros(2, 1, 2, 2)
    W[bad_sequence or 0, 0, 0, :] = torch.tensor(entries)
    ls = SimpleNamespace(pos=8, name="L.0", pending=[])
    if bad_sequence is None:
        LevelState.check(ls, SimpleNamespace(theta={"W": W}, names=("M",)))
        return
    with pytest.raises(NonFiniteError) as e:
        LevelState.check(ls, SimpleNamespace(theta={"W": W}, names=("M",)))
    assert f"sequence {bad_sequence}" in str(e.value)


def test_inner_clip_fused_equals_the_reference():
    text = LEVEL.format(P=1, learn="l2(k, v) by gd(lr: eta, decay: keep)", out="M(q)", schedule="")
    ref = nldsl.compile(text, fused=False, inner_clip=0.01)
    fused = nldsl.compile(text, inner_clip=0.01)
    fused.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 32, (2, 20))
    torch.testing.assert_close(fused(tokens)[0], ref(tokens)[0])


GROUPED = """model m {
  vocab 32
  dim 8
  heads 2
  context 32
  level L every 4 tokens {
    memory A, B : mlp(dim, hidden: dim, residual, heads: heads)
    memory C, D : linear(dim, heads: heads, init: normal)
    flow k = l2norm(A(x), heads: heads)
    flow v = B(x)
    flow eta = sigmoid(proj(x, heads))
    flow keep = sigmoid(proj(x, heads))
    flow beta = learned(0.9)
    learn A, B : l2(k, self(v)) by momentum(lr: 0.1 * eta, beta: beta, decay: keep)
    learn C, D : l2(k, v) by gd(lr: eta) read within
    out A(proj(x)) + C(v) + D(v)
  }
  block { x = x + L(rmsnorm(x)) }
  objective next_token
  optimizer adam(lr: 1e-3)
  schedule { L.group = on }
}"""


@pytest.mark.parametrize("clip", [None, 0.05])
def test_grouped_memories_equal_one_at_a_time(clip):
    """Alike memories of a self-modifying level read and learn in one batched call on the
    fused path (`read_many`, `learn_many`): momentum with a learned β and per-item rates,
    `read within` sums, clipping, and a stream cut mid-period, forward and backward,
    equal the reference's memory-by-memory calls."""
    ref, fused = _pair(GROUPED, inner_clip=clip)
    assert [ls.desc.group for ls in (next(ref.levels()), next(fused.levels()))] == [True, True]
    code = next(fused.levels()).step.code
    assert "read_many(('A', 'B'), x)" in code and "learn_many(('A', 'B')" in code and "learn_many(('C', 'D')" in code
    states = _same_stream(ref, fused, torch.randint(0, 32, (2, 22)), cut=9)
    # only the fused path stacks: A and B (read before) for good, C and D (read within) each period
    (ref_state,), (fused_state,) = (list(st.levels.values()) for st in states)
    assert list(ref_state.fast) == ["A", "B", "C", "D"] and not hasattr(ref_state, "members")
    assert list(fused_state.fast) == ["C", "D", "A+B"] and fused_state.members == {"A": ("A+B", 0), "B": ("A+B", 1)}
    assert list(fused_state.cats) == [("C", "D")]


def test_a_stack_names_the_memory_and_sequence_of_a_non_finite_state():
    """Memories held stacked (G memories of B sequences as G·B rows) are checked at once,
    and a bad row is reported as its memory and sequence."""
    from types import SimpleNamespace

    from nldsl.runtime.level import LevelState

    W = torch.zeros(3 * 2, 1, 2, 2)
    W[2 * 2 + 1, 0, 1, 0] = float("nan")  # the third memory's second sequence
    ls = SimpleNamespace(pos=8, name="L.0", pending=[])
    with pytest.raises(NonFiniteError) as e:
        LevelState.check(ls, SimpleNamespace(theta={"W": W}, names=("A", "B", "C")))
    assert "`C`" in str(e.value) and "sequence 1" in str(e.value)


NESTED_IN_A_STACK = """model m {
  vocab 32
  dim 8
  heads 2
  context 16
  level S every 4 tokens {
    memory A, B : mlp(dim, hidden: dim, residual, heads: heads)
    flow k = l2norm(A(x), heads: heads)
    flow v = B(x)
    learn A, B : l2(k, self(v)) by gd(lr: 0.1)
    out A(proj(x))
  }
  level L every 2 tokens {
    memory ffn : mlp(dim, hidden: dim, residual, heads: heads, init: S.B)
    learn ffn : task by gd(lr: 0.1)
  }
  block {
    x = x + S(rmsnorm(x))
    x = x + L(rmsnorm(x))
  }
  objective next_token
  optimizer adam(lr: 1e-3)
}"""


def test_a_nested_memory_restarts_from_a_memory_held_in_a_stack():
    """`init: S.B`, where S holds B stacked with A: every period of S restarts the nested
    memory from B's rows of the stack, as the reference restarts it from B."""
    ref, fused = _pair(NESTED_IN_A_STACK)
    states = _same_stream(ref, fused, torch.randint(0, 32, (2, 14)), cut=6)
    assert "A+B" in states[1].levels["S.0"].fast
