"""Everyday objects (issue 15): a compiled model and its optimizer pickle (torch.save),
deep-copy, change dtype and device, and load state dicts across dtypes, for every
example and for a model built from emitted source."""
from __future__ import annotations

import copy
import importlib
import io
import pickle
import sys
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.compiler.backends.python import emit
from nldsl.runtime import ops
from nldsl.runtime.level import Fast

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors

EXAMPLES = Path(__file__).parent.parent / "examples"
# small, with a context that holds hope's 64-token CMS level; sequences that cross the
# periods of titans (16 tokens) and cms (8 and 32), and hope's 64 where its task level is trained
SIZES = dict(dim=16, heads=2, depth=1, context=64)
LENGTH, HOPE_LENGTH = 34, 66
CASES = [(f, m.name) for f in sorted(EXAMPLES.glob("*.nl")) for m in nldsl.check(f).models]
IDS = [name for _, name in CASES]
# how far a 16-bit model's logits may be from float32's on `tokens()`, ‖Δ‖ / ‖logits‖: the
# largest measured were 1.23% in bfloat16 (the gated DeltaNets; 0.84% under bfloat16
# autocast) and 0.17% in float16
TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.005}


def compiled(spec, name, dtype=torch.float32, **sizes):
    """The model, its weights drawn in `dtype` (the default dtype while it is built)."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return nldsl.compile(spec, name=name, **{**SIZES, **sizes})
    finally:
        torch.set_default_dtype(default)


def tokens(batch=2, length=LENGTH):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def logits(model, x=None):
    with torch.no_grad():
        return model(tokens() if x is None else x)[0]


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "torch.save": saved}


def codes(model) -> list[str]:
    """The code of every graph the model runs."""
    return [model.segment.code] + [level.step.code for level in model.levels()]


def dtypes(state) -> tuple[set, set]:
    """The dtypes of the memories' states: of those that learn in the sequence, and of the
    others (θ₀ read as it is, attention caches)."""
    learning, other = set(), set()
    for ls in state.levels.values():
        for f in ls.fast.values():
            if isinstance(f, Fast):
                (learning if f.rule else other).update(t.dtype for t in f.theta.values())
            else:
                other.update(t.dtype for t in (f.K, f.V) if t is not None)
    return learning, other


def test_every_flow_function_pickles_by_its_name():
    """The graphs call these: pickle writes a function as its module and name, and one made
    by a helper (`_either`) once pickled as `_either.<locals>.f`, which cannot be found."""
    functions = [f for f in vars(ops).values() if callable(f) and getattr(f, "__module__", None) == ops.__name__]
    assert ops.silu in functions and ops.maximum in functions
    for f in functions:
        assert pickle.loads(pickle.dumps(f)) is f, f.__qualname__


@pytest.mark.parametrize("spec,name", CASES, ids=IDS)
def test_copies_compute_the_same_logits_from_their_own_parameters(spec, name):
    model = compiled(spec, name).double()
    want = logits(model)
    for how, make in COPIES.items():
        twin = make(model)
        assert codes(twin) == codes(model), how  # the same graphs, built again
        ours, theirs = model.state_dict(), twin.state_dict()
        assert list(ours) == list(theirs), how
        for key, value in ours.items():
            assert torch.equal(theirs[key], value) and theirs[key].data_ptr() != value.data_ptr(), (how, key)
        assert torch.equal(logits(twin), want), how
    # the copy's graphs read the copy's parameters: change them, and the copy computes what a
    # model given those weights computes, while the original does not change
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    fresh = compiled(spec, name).double()
    fresh.load_state_dict(twin.state_dict())
    changed = logits(twin)
    assert torch.equal(changed, logits(fresh)) and not torch.equal(changed, want)
    assert torch.equal(logits(model), want)
    # its optimizer, copied with it, steps the copy as the original steps the model
    optimizer = model.configure_optimizer()
    twin, opt = copy.deepcopy((model, optimizer))
    assert _steps(twin, opt) == _steps(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters()))


@pytest.mark.parametrize("spec,name", CASES, ids=IDS)
def test_double_is_the_model_compiled_in_float64(spec, name):
    """`.double()` converts the fast state with the parameters, a float32 state dict loads
    into a model built in float64, and a float64 one replaces a float32 model's parameters
    (`assign=True`)."""
    model = compiled(spec, name)
    wide = compiled(spec, name, torch.float64)
    assert {p.dtype for p in wide.state_dict().values()} == {torch.float64}
    wide.load_state_dict(model.state_dict())
    assert model.double() is model
    with torch.no_grad():
        got, state = model(tokens())
    assert torch.equal(got, logits(wide))
    assert set.union(*dtypes(state)) == {torch.float64}
    # the graphs read the parameters a model holds when it runs: assigned ones too
    assigned = compiled(spec, name)
    assigned.load_state_dict(wide.state_dict(), assign=True)
    assert torch.equal(logits(assigned), got)


# bfloat16 for every example; float16 for the memories' three fast forms (mlp periods with a
# task level, Titans' per-token rule, the chunk-parallel delta rule)
LOW = [(spec, name, torch.bfloat16) for spec, name in CASES]
LOW += [(spec, name, torch.float16) for spec, name in CASES if name in ("hope", "gated_deltanet")]


@pytest.mark.parametrize("spec,name,dtype", LOW, ids=[f"{name}-{str(dtype)[6:]}" for _, name, dtype in LOW])
def test_a_16_bit_model_trains_near_float32_with_float32_fast_state(spec, name, dtype):
    """`.bfloat16()` and `.half()`: flows in 16 bits, fast states and their updates in float32
    (docs/semantics.md, "Precision"), logits within TOLERANCE of float32's, and a backward
    that reaches the parameters float32's reaches."""
    model = compiled(spec, name)
    model.loss(tokens()).backward()
    want = logits(model)
    low = copy.deepcopy(model).to(dtype)
    low.zero_grad()
    with torch.no_grad():
        got, state = low(tokens())
    assert got.dtype == dtype
    learning, other = dtypes(state)
    assert learning <= {torch.float32} and other <= {dtype} and learning | other
    assert ((got.float() - want).norm() / want.norm()).item() < TOLERANCE[dtype]
    low.loss(tokens()).backward()
    for (key, p), q in zip(model.named_parameters(), low.parameters()):
        assert (q.grad is None) == (p.grad is None), key
        assert q.grad is None or (q.grad.dtype == dtype and torch.isfinite(q.grad).all()), key


@pytest.mark.parametrize("spec,name", CASES, ids=IDS)
def test_under_autocast_the_fast_state_stays_float32(spec, name):
    """A float32 model under bfloat16 autocast: its memories compute outside autocast, whose
    matmuls would hand back (the chunk-parallel form's, mlp periods') states in bfloat16."""
    model = compiled(spec, name)
    want = logits(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, state = model(tokens())
    assert dtypes(state)[0] <= {torch.float32}
    assert ((got.float() - want).norm() / want.norm()).item() < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("spec,name", CASES, ids=IDS)
def test_the_forward_makes_its_tensors_on_its_inputs_device(spec, name):
    """What the fast state needs to follow `model.to(device)`: no tensor of the forward or the
    backward is made on the default device. Here the default is `meta` and the model is on
    the CPU: a tensor made without its inputs' device would be on `meta`, and fail."""
    model = compiled(spec, name)
    x = tokens()
    with torch.device("meta"):
        model.loss(x).backward()
    assert all(p.grad.device.type == "cpu" for p in model.parameters() if p.grad is not None)


def _steps(model, optimizer, count=1, length=LENGTH):
    losses = []
    for _ in range(count):
        optimizer.zero_grad()
        loss = model.loss(tokens(length=length + 1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_copies_of_a_model_and_its_optimizer_train_as_it_does():
    """hope: adamw written as levels, CMS levels stepped every few calls, and a task level
    whose inner update runs in the forward. Copied together (deepcopy, pickle, torch.save)
    after a step, each copy's optimizer steps the copy's own parameters, as the original."""
    model = compiled(EXAMPLES / "hope.nl", None, torch.float64, batch=2)
    optimizer = model.configure_optimizer()
    assert any(every > 1 for _, every in optimizer.parts)
    _steps(model, optimizer)
    twins = {how: make((model, optimizer)) for how, make in COPIES.items()}
    alone = copy.deepcopy(optimizer)  # copied apart: it steps copies of the parameters
    want = _steps(model, optimizer, length=HOPE_LENGTH)
    for how, (twin, opt) in twins.items():
        own = {id(p) for p in twin.parameters()}
        assert all(id(p) in own for g in opt.param_groups for p in g["params"]), how
        assert _steps(twin, opt, length=HOPE_LENGTH) == want, how
        assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters())), how
    # the task level learned in the copy's forward: cms1's state moved from its θ₀
    twin = twins["deepcopy"][0]
    level = twin.cms1[0]
    with torch.no_grad():
        moved = twin(tokens(length=HOPE_LENGTH))[1].levels[level.key].theta("ffn")
    assert all(not torch.equal(moved[k], t.expand_as(moved[k])) for k, t in level.theta0("ffn").items())
    # and each optimizer of the copy made alone steps its own parameters
    for part, _ in alone.parts:
        params = [p for g in part.param_groups for p in g["params"]]
        before = [p.clone() for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        part.step()
        assert all(not torch.equal(a, p) for a, p in zip(before, params))


def test_a_model_from_emitted_source_pickles_and_copies(tmp_path, monkeypatch):
    """Emitted source writes its steps as methods and functions: pickle finds them by
    their module, which must be importable, as for any class."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hope_emitted.py").write_text(emit(compiled(EXAMPLES / "hope.nl", None)))
    monkeypatch.delitem(sys.modules, "hope_emitted", raising=False)
    module = importlib.import_module("hope_emitted")
    torch.manual_seed(0)
    model = module.build().double()
    optimizer = model.configure_optimizer()
    twins = {how: make((model, optimizer)) for how, make in COPIES.items()}
    want = logits(model)
    losses = _steps(model, optimizer)
    for how, (twin, opt) in twins.items():
        assert type(twin) is type(model), how
        assert torch.equal(logits(twin), want), how
        assert _steps(twin, opt) == losses, how


def test_a_loaded_model_configures_torch_compile_for_its_task_levels(monkeypatch):
    """What `finish` sets for torch.compile of a task level is set again by loading the
    model (in a fresh process, nothing else would)."""
    import torch._dynamo

    import torch._functorch.config

    model = compiled(EXAMPLES / "hope.nl", None)
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", True)
    saved(model)
    assert torch._dynamo.config.trace_autograd_ops and not torch._functorch.config.enable_autograd_cache


def test_a_state_dict_saved_in_one_dtype_loads_in_another():
    """Weights only (`weights_only=True`, `map_location`), float64 into bfloat16 and back."""
    spec = EXAMPLES / "titans.nl"
    model = compiled(spec, None).double()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    weights = torch.load(buffer, map_location="cpu", weights_only=True)
    low = compiled(spec, None).bfloat16()
    low.load_state_dict(weights)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    back = compiled(spec, None).double()
    back.load_state_dict(low.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value.bfloat16().double(), rtol=0, atol=0)
