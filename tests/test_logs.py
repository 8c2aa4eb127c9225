"""What a run reports (nldsl/logs.py): the start-of-run summary, TensorBoard event files
whose scalars are History's losses, the learning rates, the speed, the gradient norm and
the levels' fast-state updates, `--wandb`, and ModelState.update_norms."""
import contextlib
import errno
import io
import math
import os
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import cli, logs, sources
from nldsl import train as tr

ROOT = Path(__file__).resolve().parent.parent
TRANSFORMER, HOPE = ROOT / "examples" / "transformer.nl", ROOT / "examples" / "hope.nl"
TINY = {"dim": 16, "context": 64, "batch": 2, "depth": 1}


def train(spec, out, steps=3, **kw):
    kw = {"overrides": TINY, "eval_batches": 1, "eval_every": 0, "ckpt_every": 0, "sample": 0, "quiet": True,
          "device": "cpu", **kw}
    return tr.train(spec, steps=steps, out_dir=out, **kw)


def scalars(out) -> dict[str, dict[int, float]]:
    """Every scalar of the event files in `out`: tag -> {step: value}."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(out))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


class FakeWandb:
    """The part of the wandb package a run uses: init, log, finish."""

    def __init__(self):
        self.runs = []

    def init(self, **kw):
        run = types.SimpleNamespace(kw=kw, logged=[], finished=False)
        run.log = lambda values, step: run.logged.append((step, dict(values)))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """Three steps of a tiny transformer, logged to a stand-in wandb too: the run's History,
    folder, printed lines, model, the gradient norm of each step (from the gradients the
    step left), and the wandb run."""
    out = tmp_path_factory.mktemp("logs") / "transformer"
    models, grad_norms, wandb = [], {}, FakeWandb()

    def build(*args, **kw):
        models.append(real_build(*args, **kw))
        return models[-1]

    def on_step(step, loss):
        grads = [p.grad for p in models[0].parameters() if p.grad is not None]
        grad_norms[step] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()

    real_build, printed = tr.build_model, io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(tr, "build_model", build)
        mp.setitem(sys.modules, "wandb", wandb)
        history = train(TRANSFORMER, out, on_step=on_step, wandb=True)
    return types.SimpleNamespace(history=history, out=out, printed=printed.getvalue().splitlines(),
                                 model=models[0], grad_norms=grad_norms, wandb=wandb.runs[0])


def test_the_event_files_hold_historys_losses(transformer):
    found, history = scalars(transformer.out), transformer.history
    assert found["loss/train"] == {s: pytest.approx(v, rel=1e-6) for s, v in enumerate(history.train, 1)}
    assert found["loss/heldout"] == {s: pytest.approx(v, rel=1e-6) for s, v in history.heldout.items()}
    assert sorted(found["loss/heldout"]) == [0, 3]
    for part in ("train", "heldout"):
        assert found[f"bits_per_byte/{part}"] == {s: pytest.approx(v / math.log(2), rel=1e-6)
                                                 for s, v in found[f"loss/{part}"].items()}


def test_the_event_files_hold_the_rate_the_speed_and_the_gradient_norm(transformer):
    found = scalars(transformer.out)
    assert found["lr/adamw[all]"] == {s: pytest.approx(3e-3) for s in (1, 2, 3)}  # the spec's optimizer line
    assert sorted(found["tokens_per_s"]) == [1, 2, 3] and min(found["tokens_per_s"].values()) > 0
    assert found["grad_norm"] == {s: pytest.approx(v, rel=1e-5) for s, v in transformer.grad_norms.items()}
    assert not [t for t in found if t.startswith("update_norm/")]  # attention and outer weights: no fast state


def test_the_run_starts_with_a_summary(transformer):
    model, lines = transformer.model, transformer.printed
    corpus = sources.load("pydoc")
    params = sum(p.numel() for p in model.parameters())
    assert lines[:5] == [
        f"model transformer: {params:,} parameters ({params:,} trainable), 128 tokens per step (batch 2 × context 64)",
        f"optimizer adamw[all]: {params:,} parameters in {len(list(model.parameters()))} tensors, lr 0.003",
        "device cpu, precision fp32, world size 1",
        f"data pydoc: {len(corpus.train):,} bytes to train on, {len(corpus.heldout):,} held out; "
        f"tokenizer bytes (256 tokens)",
        f"held-out at step 0: {tr.describe(transformer.history.heldout[0])}"]


def test_wandb_gets_the_same_scalars(transformer):
    run, history = transformer.wandb, transformer.history
    assert run.kw["name"] == "transformer" and run.kw["dir"] == str(transformer.out) and run.finished
    assert run.kw["config"]["settings"]["dim"] == 16 and run.kw["config"]["seed"] == 0
    train = {step: v["loss/train"] for step, v in run.logged if "loss/train" in v}
    heldout = {step: v["loss/heldout"] for step, v in run.logged if "loss/heldout" in v}
    assert train == dict(enumerate(history.train, 1)) and heldout == history.heldout
    assert [step for step, _ in run.logged] == sorted(step for step, _ in run.logged)  # wandb's steps only grow


def test_hope_logs_the_update_of_each_level_that_learns_in_the_sequence(tmp_path):
    train(HOPE, tmp_path, overrides={"dim": 16, "context": 64, "batch": 2}, warmup=2)
    found = scalars(tmp_path)
    updates = {t.removeprefix("update_norm/"): v for t, v in found.items() if t.startswith("update_norm/")}
    # titans learns every 16 tokens and cms1 every 64, two copies each; cms2 and cms3 learn across sequences
    assert sorted(updates) == ["cms1.0", "cms1.1", "titans.0", "titans.1"]
    for level, by_step in updates.items():
        assert sorted(by_step) == [1, 2, 3] and min(by_step.values()) > 0, level
    # the cross-sequence levels' parameters step every ⌈P / (batch × context)⌉ steps: parts of their own;
    # each logs the rate its step used, half the peak in the first step of the warmup
    assert {t for t in found if t.startswith("lr/")} == {"lr/adamw[all]", "lr/adamw[all].every7813",
                                                         "lr/adamw[all].every125000"}
    assert found["lr/adamw[all]"] == {1: pytest.approx(1.5e-3), 2: pytest.approx(3e-3), 3: pytest.approx(3e-3)}


def test_update_norms_of_a_streamed_state():
    torch.manual_seed(0)
    model = nldsl.compile(HOPE, dim=16, depth=1)
    tokens = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        _, state = model(tokens[:, :8])
        assert state.update_norms() == {"titans.0": 0.0, "cms1.0": 0.0}  # no period has ended yet
        _, state = model(tokens[:, 8:16], state)
        titans = state.update_norms()["titans.0"]
        assert titans > 0 and state.update_norms()["cms1.0"] == 0.0
        _, state = model(tokens[:, 16:], state)
        _, whole = model(tokens)
    streamed = state.update_norms()
    assert streamed == pytest.approx(whole.update_norms(), rel=1e-5) and min(streamed.values()) > 0
    # by hand: each sequence's distance from θ₀ over all the level's memories, averaged
    level = model.get_submodule(model.slots["titans"])[0]
    ls = state.levels["titans.0"]
    by_hand = torch.stack([(ls.theta(m)[k] - level.theta0(m)[k]).flatten(1).square().sum(1)
                           for m in ls.initial for k in ls.initial[m]]).sum(0).sqrt().mean()
    assert streamed["titans.0"] == pytest.approx(by_hand.item(), rel=1e-5)


TWO_GROUPS = """
model two_groups {
  vocab 256
  dim 16
  context 64
  batch 2
  level ffn outer { memory f : mlp(dim) }
  block { x = x + learned(1) * ffn(rmsnorm(x)) }
  objective next_token
  optimizer adamw(lr: 2e-2) for matrices
  optimizer adamw(lr: 3e-4, weight_decay: 0) for rest
}
"""


def test_the_summary_names_each_optimizer_line_and_its_group():
    model = nldsl.compile(TWO_GROUPS)
    params = list(model.parameters())
    matrices = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    lines = logs.summary(model, model.configure_optimizer(), sources.load("pydoc"), "bf16")
    assert lines[1:3] == [
        f"optimizer adamw[matrices]: {sum(p.numel() for p in matrices):,} parameters in {len(matrices)} tensors, "
        f"lr 0.02",
        f"optimizer adamw[rest]: {sum(p.numel() for p in rest):,} parameters in {len(rest)} tensors, lr 0.0003"]
    assert lines[3] == "device cpu, precision bf16, world size 1"


def test_the_gradient_norm_of_fp16_is_unscaled(tmp_path):
    for precision in ("fp32", "fp16"):
        train(TRANSFORMER, tmp_path / precision, steps=1, precision=precision)
    fp32, fp16 = (scalars(tmp_path / precision)["grad_norm"][1] for precision in ("fp32", "fp16"))
    assert fp16 == pytest.approx(fp32, rel=0.05)  # not 65536 times it, the scaler's first scale


def test_without_tensorboard_a_run_writes_its_csv_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    train(TRANSFORMER, tmp_path, steps=1)
    err = capsys.readouterr().err
    assert "note: no TensorBoard event files without the tensorboard package (pip install 'nldsl[logs]')" in err
    assert not list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "losses.csv").is_file()


def test_only_rank_0_prints_and_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(logs, "world", lambda: (1, 2))
    train(TRANSFORMER, tmp_path, steps=1)
    assert "parameters" not in capsys.readouterr().out
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_wandb_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    rc = cli.main(["train", str(TRANSFORMER), "--wandb", "--steps", "1", "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert rc == 1 and captured.err == ("error: --wandb needs the wandb package, which is not installed: "
                                        "pip install wandb\n")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_full_disk_under_the_event_files_is_one_error_line(tmp_path, monkeypatch, capsys):
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(record_writer.RecordWriter, "write", full)  # TensorBoard's thread meets it, the run is told
    excepthook = threading.excepthook  # hushed for TensorBoard's thread during the run only
    sets = [a for key, value in TINY.items() for a in ("--set", f"{key}={value}")]
    rc = cli.main(["train", str(TRANSFORMER), "--steps", "1", "--out", str(tmp_path), "--quiet", "--sample", "0",
                   "--eval-batches", "1", "--device", "cpu", *sets])
    assert rc == 1 and capsys.readouterr().err == (f"error: cannot write the TensorBoard event files in {tmp_path}: "
                                                   f"No space left on device\n")
    assert threading.excepthook is excepthook

