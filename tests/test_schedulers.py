"""Learning-rate schedules, clipping and accumulation (docs/optimizers.md, docs/training.md).

A spec's optimizer reads its hyperparameters from its parameter groups at every step,
so `torch.optim.lr_scheduler` drives it exactly as it drives torch's own optimizers;
the outer optimizer of a model is one too. `nldsl train` builds its schedule, clipping
and accumulation from its flags (nldsl/training.py), and a resumed run goes on with the
same schedule.
"""
import copy
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

import nldsl
from nldsl import cli
from nldsl import train as tr
from nldsl.run import RunError
from nldsl.training import Training

from conftest import ROOT
from test_optim import CROSS

OPTIM = ROOT / "examples" / "optim"
EXAMPLES = ROOT / "examples"
STEPS = 20
TINY = {"dim": 16, "context": 16, "batch": 4, "depth": 1}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SCHEDULES = {
    "warmup+cosine": lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=5),
                                                  S.CosineAnnealingLR(o, T_max=STEPS - 5)], milestones=[5]),
    "onecycle": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, cycle_momentum=False),
    "lambda": lambda o: S.LambdaLR(o, lambda s: 0.9 ** s),
}


def regression(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 5, generator=gen, dtype=dtype), torch.randn(16, 3, generator=gen, dtype=dtype)


def steps(model, X, Y, opt, sched, n=STEPS) -> list[float]:
    """`n` steps of `opt` and `sched` on the regression; the lr of each."""
    lrs = []
    for _ in range(n):
        opt.zero_grad()
        ((model(X) - Y) ** 2).mean().backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def scheduled(make_optimizer, schedule):
    """The parameters of a small MLP trained under `schedule`, and the lr of every step."""
    model, X, Y = regression()
    opt = make_optimizer(model.parameters())
    lrs = steps(model, X, Y, opt, SCHEDULES[schedule](opt))
    return torch.cat([p.detach().flatten() for p in model.parameters()]), lrs


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("file, reference", [("adam.nl", torch.optim.Adam), ("adamw.nl", torch.optim.AdamW)])
def test_a_scheduler_drives_the_compiled_optimizer_as_torchs(file, reference, schedule):
    ours, our_lrs = scheduled(lambda p: nldsl.compile_optimizer(OPTIM / file, p, lr=1e-2), schedule)
    theirs, their_lrs = scheduled(lambda p: reference(p, lr=1e-2), schedule)
    assert our_lrs == their_lrs and len(set(our_lrs)) > STEPS // 2  # the schedule moved the lr
    assert (ours - theirs).abs().max() < 1e-13  # float64: the same arithmetic, to rounding


def test_m3_takes_each_step_at_the_lambda_lr():
    """M3's step is lr times a term of the gradients alone: under LambdaLR each step is the
    unscheduled step (lr 1) times that step's lr, over two periods of its slow level."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(8)]
    factor = lambda s: 0.5 + 0.25 * (s % 3)  # noqa: E731

    def moves(schedule: bool) -> list[torch.Tensor]:
        W = nn.Parameter(torch.zeros(4, 6, dtype=torch.float64))
        opt = nldsl.compile_optimizer(OPTIM / "m3.nl", [W], lr=1.0)
        sched = S.LambdaLR(opt, factor) if schedule else None
        out = []
        for g in grads:
            before, W.grad = W.detach().clone(), g.clone()
            opt.step()
            if sched is not None:
                sched.step()
            out.append(W.detach() - before)
        return out

    for s, (ours, plain) in enumerate(zip(moves(True), moves(False))):
        torch.testing.assert_close(ours, factor(s) * plain, rtol=1e-12, atol=0)


def test_hyperparameters_are_in_the_groups_and_read_at_each_step():
    W = nn.Parameter(torch.ones(3, 3, dtype=torch.float64))
    opt = nldsl.compile_optimizer(OPTIM / "m3.nl", [W], slow_every=2)
    group = opt.param_groups[0]
    assert {k: group[k] for k in ("lr", "beta1", "beta3", "slow_every")} == {
        "lr": 1e-3, "beta1": 0.9, "beta3": 0.9, "slow_every": 2.0}
    assert opt.spec.fixed == ("ns_steps", "slow_every")  # they shape the step: periods, iterations
    group["slow_every"] = 4.0
    W.grad = torch.ones_like(W)
    with pytest.raises(ValueError, match="`slow_every` of optimizer `m3` shapes its compiled step"):
        opt.step()
    with pytest.raises(ValueError, match="`nesterov` of optimizer `muon` shapes"):
        nldsl.compile_optimizer(OPTIM / "muon.nl", [{"params": [W], "nesterov": 0.0}])
    # a group's own values: the same as compiling with them
    a, b = (nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(2))
    per_group = nldsl.compile_optimizer(OPTIM / "adam.nl", [{"params": [a], "beta1": 0.5, "lr": 0.1}])
    compiled = nldsl.compile_optimizer(OPTIM / "adam.nl", [b], beta1=0.5, lr=0.1)
    for _ in range(3):
        a.grad, b.grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, -2.0, 3.0],
                                                                                           dtype=torch.float64)
        per_group.step()
        compiled.step()
    assert torch.equal(a, b)


def test_a_resumed_optimizer_and_scheduler_continue_the_schedule_exactly():
    model, X, Y = regression()

    def make(m):
        opt = nldsl.compile_optimizer(OPTIM / "adamw.nl", m.parameters(), lr=1e-2)
        return opt, SCHEDULES["warmup+cosine"](opt)

    opt, sched = make(model)
    steps(model, X, Y, opt, sched, 7)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    twin = copy.deepcopy(model)
    twin.load_state_dict(saved[0])
    opt2, sched2 = make(twin)  # fresh, then loaded: the optimizer first, as torch asks
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert steps(twin, X, Y, opt2, sched2, 8) == steps(model, X, Y, opt, sched, 8)
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters()))


# --- the outer optimizer of a model: CROSS's level `slow` steps every 3 calls ----------


def test_the_outer_optimizer_is_scheduled_with_its_slow_part_and_resumes():
    """A scheduler of the outer optimizer sets every part's lr (its groups are theirs); the
    slow level's part (every 3 calls) steps with the lr of its third call; the optimizer's
    and the scheduler's states resume it exactly, mid-period."""
    torch.manual_seed(0)
    model = nldsl.compile(CROSS).double()
    opt = model.configure_optimizer()
    assert isinstance(opt, torch.optim.Optimizer) and [k for _, k in opt.parts] == [1, 3]
    assert [id(g) for g in opt.param_groups] == [id(g) for o, _ in opt.parts for g in o.param_groups]
    sched = S.LambdaLR(opt, lambda s: 1 / (s + 1))
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 16, (2, 5), generator=gen) for _ in range(9)]

    def train(m, o, s, todo):
        seen = []
        for tokens in todo:
            o.zero_grad()
            m.loss(tokens).backward()
            seen.append([g["lr"] for g in o.param_groups])
            o.step()
            s.step()
        return seen

    slow = [p for g in opt.parts[1][0].param_groups for p in g["params"]]
    before = [p.detach().clone() for p in slow]
    seen = train(model, opt, sched, batches[:4])
    assert seen == [[1e-2 * (1 / (s + 1))] * 2 for s in range(4)]
    moved = max(p.detach().sub(b).abs().max().item() for p, b in zip(slow, before))
    assert 0.95 * 1e-2 / 3 < moved < 1.05 * 1e-2 / 3  # one step, at call 3, by Adam's first step: that call's lr
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    twin = nldsl.compile(CROSS).double()
    twin.load_state_dict(saved[0])
    opt2 = twin.configure_optimizer()
    sched2 = S.LambdaLR(opt2, lambda s: 1 / (s + 1))
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert train(twin, opt2, sched2, batches[4:]) == train(model, opt, sched, batches[4:])
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters()))


def test_configure_optimizer_trains_a_model_under_a_schedule():
    torch.manual_seed(0)
    model = nldsl.compile(EXAMPLES / "transformer.nl", **TINY)
    opt = model.configure_optimizer()
    t = Training(lr_schedule="cosine", warmup=3, steps=8)
    sched = S.LambdaLR(opt, t.factor)
    tokens = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    losses, first = [], [p.detach().clone() for p in model.parameters()]
    for step in range(8):
        assert {g["lr"] for g in opt.param_groups} == {3e-3 * t.factor(step)}
        opt.zero_grad()
        loss = model.loss(tokens)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step == 0:  # Adam's first step moves a weight by about lr: the warmup's lr/3, not lr
            moved = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), first))
            assert 0.9e-3 < moved < 1.2e-3  # lr (1 + weight_decay·|W|) at most
    assert losses[-1] < losses[0]
    assert [t.factor(s) for s in range(3)] == [1 / 3, 2 / 3, 1.0] and t.factor(7) > 0 and t.factor(8) == 0


def test_emitted_source_reads_its_hyperparameters_from_the_groups(tmp_path):
    from nldsl.compiler.backends.python import emit
    from test_emit import load_emitted
    torch.manual_seed(0)
    model = nldsl.compile(CROSS)
    module = load_emitted(emit(model), tmp_path)
    assert "hp['lr']" in emit(model) and "'lr': 0.01" in emit(model)
    emitted = module.build()
    emitted.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    for m in (model, emitted):
        opt = m.configure_optimizer()
        S.LambdaLR(opt, lambda s: 0.1)
        m.loss(tokens).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), emitted.parameters()))


# --- nldsl train: accumulation, clipping, schedules ----------------------------------

def _double(spec, **sizes):
    torch.manual_seed(0)
    return nldsl.compile(spec, **sizes).double()


@pytest.mark.parametrize("spec, sizes", [
    (EXAMPLES / "transformer.nl", TINY),
    (f"{EXAMPLES / 'cms.nl'}", dict(name="cms_nested", dim=8, context=32, batch=4)),
], ids=["transformer", "cms_nested (task levels)"])
def test_accumulated_micro_batches_are_the_whole_batch(spec, sizes):
    """4 micro-batches of 1 sequence give the summed gradient of the batch of 4, to 1e-10 in
    float64 (measured: 3e-17), and its loss; so does a model whose task levels take inner
    gradients inside the forward (1e-17), since each sequence learns in its own fast state."""
    whole = _double(spec, **sizes)
    if "name" in sizes:
        assert whole.task_levels()
    parts = copy.deepcopy(whole)
    fed = []
    parts.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[0]))
    tokens = torch.randint(0, 256, (4, int(whole.settings["context"]) + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses = [tr._train_step(m, torch.optim.SGD(m.parameters(), lr=0.1), x, y, accumulate=n)[0]
              for m, n in ((whole, 1), (parts, 4))]
    assert fed == [1, 1, 1, 1]
    assert abs(losses[0] - losses[1]) < 1e-6  # runs.loss takes the cross-entropy in float32
    for (name, a), b in zip(whole.named_parameters(), parts.parameters()):
        assert (a.grad - b.grad).abs().max() < 1e-10, name
        assert (a - b).abs().max() < 1e-10, name


def test_grad_clip_clips_the_unscaled_gradient():
    model = _double(EXAMPLES / "transformer.nl", **TINY)
    tokens = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1], tokens[:, 1:]
    free = copy.deepcopy(model)
    _, told = tr._train_step(free, torch.optim.SGD(free.parameters(), lr=0.0), x, y)
    norm = torch.nn.utils.get_total_norm([p.grad for p in free.parameters()]).item()
    assert told == norm  # the step's gradient norm, as the logs take it
    _, told = tr._train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, grad_clip=norm / 4)
    assert told == pytest.approx(norm, rel=1e-12)  # before clipping
    for a, b in zip(model.parameters(), free.parameters()):
        torch.testing.assert_close(a.grad, b.grad / 4, rtol=1e-5, atol=0)  # clip_grad_norm_ adds 1e-6 to the norm
    # fp16 scales the loss: the clip applies to the gradient unscaled, not to the scaled one
    half = nldsl.compile(EXAMPLES / "transformer.nl", **TINY)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    _, told = tr._train_step(half, torch.optim.SGD(half.parameters(), lr=0.0), x, y, "fp16", scaler, grad_clip=1e-3)
    total = torch.nn.utils.get_total_norm([p.grad for p in half.parameters()]).item()
    assert math.isclose(total, 1e-3, rel_tol=1e-3)
    assert 1e-2 < told < 1e3  # the unscaled norm before clipping, not 2 ** 10 times it


def run(out, steps, **kw):
    kw = {"overrides": TINY, "eval_batches": 1, "eval_every": 0, "ckpt_every": 0, "sample": 0, "quiet": True, **kw}
    if kw.get("resume"):
        kw.pop("overrides")
    return tr.train(EXAMPLES / "transformer.nl", steps=steps, out_dir=out, **kw)


@pytest.fixture
def lrs(monkeypatch):
    """The lr of every training step, as the optimizer reads it."""
    seen = []
    step = tr._train_step

    def recording(model, optimizer, *args, **kwargs):
        seen.append(max(g["lr"] for g in optimizer.param_groups))
        return step(model, optimizer, *args, **kwargs)
    monkeypatch.setattr(tr, "_train_step", recording)
    return seen


def test_a_resumed_run_continues_its_schedule_exactly(tmp_path, lrs):
    """A cosine run planned for 4 steps and stopped after its checkpoint at step 2, then
    resumed, is the run of 4 steps straight: losses, weights and every step's lr."""
    options = dict(lr=1e-2, lr_schedule="cosine", warmup=1, grad_clip=1.0, accumulate=2)
    straight = run(tmp_path / "straight", 4, **options)
    straight_lrs = list(lrs)
    assert straight_lrs == [1e-2 * Training(lr_schedule="cosine", warmup=1, steps=4).factor(s) for s in range(4)]

    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt
    lrs.clear()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", 4, ckpt_every=2, on_step=stop, **options)
    assert tr.load_checkpoint(tmp_path / "split").scheduler["last_epoch"] == 2
    resumed = run(tmp_path / "split", 4, resume=True)
    assert lrs == straight_lrs and resumed.train == straight.train
    a, b = (tr.load_checkpoint(tmp_path / d) for d in ("straight", "split"))
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert b.training == Training(1e-2, "cosine", 1, 1.0, 2, 4)
    # warmup then constant does not depend on the end: 2 steps, then resumed to 4
    lrs.clear()
    run(tmp_path / "w4", 4, warmup=3)
    run(tmp_path / "w2", 2, warmup=3)
    run(tmp_path / "w2", 4, resume=True)
    assert lrs[4:] == lrs[:4] == [3e-3 / 3, 3e-3 * 2 / 3, 3e-3, 3e-3]
    assert tr.load_checkpoint(tmp_path / "w2").history.train == tr.load_checkpoint(tmp_path / "w4").history.train


def test_the_spec_sets_training_options_and_the_flags_override_them(tmp_path, lrs):
    spec = tmp_path / "t.nl"
    spec.write_text((EXAMPLES / "transformer.nl").read_text().replace(
        "  objective next_token", "  warmup 2\n  grad_clip 0.5\n  accumulate 2\n  objective next_token"))
    tr.train(spec, steps=2, out_dir=tmp_path / "a", overrides=TINY, eval_batches=1, sample=0, quiet=True)
    assert tr.load_checkpoint(tmp_path / "a").training == Training(None, "constant", 2, 0.5, 2, 2)
    assert lrs == [3e-3 / 2, 3e-3]
    tr.train(spec, steps=1, out_dir=tmp_path / "b", overrides=TINY, eval_batches=1, sample=0, quiet=True,
             warmup=0, accumulate=4, grad_clip=2.0)
    assert tr.load_checkpoint(tmp_path / "b").training == Training(None, "constant", 0, 2.0, 4, 1)


@pytest.mark.parametrize("flags, message", [
    (["--warmup", "-1"], "--warmup -1: give a whole number of at least 0"),
    (["--grad-clip", "0"], "--grad-clip 0.0: give a number above 0"),
    (["--accumulate", "0"], "--accumulate 0: give a whole number of at least 1"),
    (["--lr", "nan"], "--lr nan: give a positive number"),
    (["--accumulate", "3"], "accumulate 3 does not divide the batch of 4 sequences"),
])
def test_bad_training_flags_are_one_line(tmp_path, capsys, flags, message):
    sizes = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    rc = cli.main(["train", str(EXAMPLES / "transformer.nl"), "--out", str(tmp_path / "r"), "--quiet", *sizes,
                   *flags])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_keeps_its_schedule(tmp_path, capsys):
    run(tmp_path, 1, lr_schedule="linear")
    with pytest.raises(RunError, match="trained with --lr-schedule linear, not cosine: --resume keeps it"):
        run(tmp_path, 2, resume=True, lr_schedule="cosine")
    run(tmp_path, 2, resume=True, grad_clip=0.5)  # clipping may change
    assert "the linear schedule now ends at step 2, not 1" in capsys.readouterr().err
    assert tr.load_checkpoint(tmp_path).training == Training(None, "linear", 0, 0.5, 1, 2)


@pytest.mark.parametrize("meta, message", [
    ({"scheduler": '{"last_epoch": 1}'}, "does not fit this run: its scheduler state is not that of a learning-rate "
                                         "schedule at step 1"),
    ({"training": '{"warmup": -2}'}, "is malformed: `training`: --warmup -2: give a whole number of at least 0"),
    ({"training": '{"lr_schedule": "cosine", "shell": 1}'}, "is malformed: `training`: it is not an object of"),
])
def test_a_forged_schedule_is_one_error_line(tmp_path, capsys, meta, message):
    from test_runs import rewrite
    run(tmp_path, 1, warmup=2)
    rewrite(tmp_path, meta)
    rc = cli.main(["train", str(EXAMPLES / "transformer.nl"), "--out", str(tmp_path), "--resume", "--steps", "2",
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1
