"""Training, resuming, evaluating and sampling byte-level models (nldsl.train, nldsl.data).

Most tests train `ByteGRU`, a test double with the interface of what `nldsl.compile`
returns, so that they test the training machinery alone, quickly; one smoke test runs
the real backend where it exists.
"""
import csv
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nldsl
from nldsl import cli
from nldsl import train as tr
from nldsl.data import Corpus, DataError, read_bytes

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "transformer.nl"
TINY = {"dim": 16, "context": 16, "batch": 4, "depth": 1}


class ByteGRU(nn.Module):
    """Test double for `nldsl.compile(source, **overrides)`: a GRU over bytes with the same
    interface (settings from the spec, `model(tokens, state) -> (logits, state)` that
    streams, `configure_optimizer()`), so the training code can be tested on its own."""

    def __init__(self, source, inner_clip=None, name=None, **overrides):
        super().__init__()
        self.settings = dict(next(m for m in nldsl.check(source, **overrides).models if name in (None, m.name)).settings)
        self.options = {"inner_clip": inner_clip}
        vocab, dim = int(self.settings["vocab"]), int(self.settings["dim"])
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, num_layers=int(self.settings.get("depth", 1)), batch_first=True)
        self.head = nn.Linear(dim, vocab)
        self.calls = []  # the shapes fed, to see how generation feeds the model

    def forward(self, tokens, state=None):
        self.calls.append(tuple(tokens.shape))
        h, state = self.rnn(self.embed(tokens), state)
        return self.head(h), state

    def configure_optimizer(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


@pytest.fixture
def double(monkeypatch):
    monkeypatch.setattr(nldsl, "compile", ByteGRU, raising=False)


def run(out, steps, **kw):
    kw = {"overrides": TINY, "eval_batches": 2, "eval_every": 0, "ckpt_every": 0, "sample": 0, "quiet": True, **kw}
    if kw.get("resume"):
        kw.pop("overrides")  # a resumed run keeps its own
    return tr.train(SPEC, steps=steps, out_dir=out, **kw)


def tensors(out):
    from safetensors.torch import load_file
    return load_file(out / tr.CHECKPOINT)


def main(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- data --------------------------------------------------------------------------

def test_pydoc_split_and_batches_are_a_function_of_seed_and_step():
    raw = read_bytes("pydoc")
    assert len(raw) > 100_000 and b"The " in raw
    c = Corpus(raw, "pydoc")
    assert len(c.train) == len(raw) - len(raw) // 10 and bytes(c.heldout.numpy()) == raw[len(c.train):]
    x, y = c.batch(seed=1, step=5, batch=3, context=8)
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one byte
    assert torch.equal(c.batch(1, 5, 3, 8)[0], x)
    assert not torch.equal(c.batch(1, 6, 3, 8)[0], x) and not torch.equal(c.batch(2, 5, 3, 8)[0], x)
    hx, hy = c.heldout_windows(4, 8)
    assert torch.equal(hx, c.heldout_windows(4, 8)[0])
    assert bytes(hx[0].tolist()) == raw[len(c.train):][:8]
    assert bytes(hy[-1].tolist()) == raw[-8:]  # evenly spaced, the last one ends at the end


def test_data_too_small_or_missing(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        read_bytes(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="held-out part has 2 bytes, it needs at least 17"):
        Corpus(b"x" * 20, "small").require(16)


# --- checkpoints -------------------------------------------------------------------

def test_optimizer_state_survives_the_checkpoint(double, tmp_path):
    history = run(tmp_path, 3)
    ckpt = tr.load_checkpoint(tmp_path)
    model = ByteGRU(SPEC, **TINY)
    model.load_state_dict(ckpt.model)
    opt = model.configure_optimizer()
    opt.load_state_dict(ckpt.optimizer)
    state = opt.state_dict()
    assert sorted(state["state"]) == list(range(len(list(model.parameters()))))  # int keys, not "0"
    assert isinstance(state["param_groups"][0]["betas"], tuple)
    assert float(state["state"][0]["step"]) == 3.0 and state["state"][0]["exp_avg"].abs().sum() > 0
    assert ckpt.step == 3 and ckpt.seed == 0 and ckpt.overrides == TINY and ckpt.data == "pydoc"
    assert ckpt.spec_text == SPEC.read_text() and ckpt.history == history
    assert sorted(history.heldout) == [0, 3] and len(history.train) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resume_reproduces_the_uninterrupted_run_exactly(double, tmp_path):
    straight = run(tmp_path / "straight", 12, eval_every=4)
    run(tmp_path / "split", 5, eval_every=4)
    resumed = run(tmp_path / "split", 12, eval_every=4, resume=True)
    assert resumed.train == straight.train  # float equality, step by step
    assert all(resumed.heldout[s] == v for s, v in straight.heldout.items())
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import nldsl
from test_train import ByteGRU, SPEC, TINY
nldsl.compile = ByteGRU
from nldsl.train import train

def kill_at_7(step, loss):
    if step == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint

train(SPEC, steps=10, out_dir={out!r}, overrides=TINY, eval_batches=2, eval_every=0, ckpt_every=3,
      sample=0, quiet=True, on_step=kill_at_7)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_run_resumes_from_its_last_checkpoint(double, tmp_path):
    out = tmp_path / "killed"
    script = KILLED.format(tests=str(ROOT / "tests"), out=str(out))
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert tr.load_checkpoint(out).step == 6
    resumed = run(out, 10, resume=True)
    straight = run(tmp_path / "straight", 10)
    assert resumed.train == straight.train
    a, b = tensors(out), tensors(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_of_a_run(double, tmp_path, capsys):
    run(tmp_path, 4, eval_every=2, sample=30)
    printed = capsys.readouterr().out
    assert "held-out at step 0: loss " in printed and "held-out at step 2: loss " in printed
    assert "held-out, step 0 -> 4: loss " in printed and "bits/byte" in printed
    with open(tmp_path / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["train_loss"] == "" and rows[0]["heldout_loss"] and rows[2]["heldout_loss"]
    assert rows[1]["heldout_loss"] == "" and float(rows[4]["train_loss"]) > 0
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    sample = (tmp_path / "sample.txt").read_text()
    assert len(sample.encode()) >= 30 and sample in printed


# --- generation --------------------------------------------------------------------

def test_generate_feeds_the_prompt_once_then_one_byte_carrying_state():
    torch.manual_seed(0)
    model = ByteGRU(SPEC, **TINY).eval()
    out = tr.generate(model, b"Hello", 6, temperature=0)
    assert model.calls == [(1, 5)] + [(1, 1)] * 5
    seq = list(b"Hello")  # greedy by feeding everything each time must agree
    for _ in range(6):
        seq.append(int(model(torch.tensor([seq]))[0][0, -1, :256].argmax()))
    assert out == bytes(seq[5:])
    assert tr.generate(model, b"Hi", 20, seed=3) == tr.generate(model, b"Hi", 20, seed=3)
    assert tr.generate(model, b"Hi", 20, seed=3) != tr.generate(model, b"Hi", 20, seed=4)
    assert len(set(tr.generate(model, b"Hi", 40, top_k=1, seed=5))) <= len(set(tr.generate(model, b"Hi", 40, seed=5)))


# --- the command line --------------------------------------------------------------

def test_train_eval_generate_from_the_command_line(double, tmp_path, capsys):
    spec = tmp_path / "tiny.nl"
    spec.write_text(SPEC.read_text())
    out = tmp_path / "run"
    common = ("--steps", 3, "--out", out, "--eval-batches", 2, "--sample", 10, "--quiet",
              "--set", "dim=16", "--set", "context=16", "--set", "batch=4", "--set", "depth=1")
    rc, printed, err = main(capsys, "train", spec, *common)
    assert rc == 0, err
    assert "held-out, step 0 -> 3:" in printed and "sample:" in printed
    rc, printed, err = main(capsys, "train", spec, *common)
    assert rc == 1 and "already holds a run: --resume" in err
    rc, printed, err = main(capsys, "train", spec, *common[:-8], "--steps", 5, "--resume")
    assert rc == 0, err
    assert tr.load_checkpoint(out).step == 5
    spec.unlink()  # the checkpoint carries its spec
    rc, printed, err = main(capsys, "eval", "--ckpt", out)
    assert rc == 0, err
    end = tr.load_checkpoint(out).history.heldout[5]  # the same windows as the run's own evaluation
    assert printed == f"{out} (step 5), held-out pydoc: {tr.describe(end)}\n"
    rc, printed, err = main(capsys, "generate", "--ckpt", out, "--prompt", "The ", "-n", 12, "--seed", 1)
    assert rc == 0, err
    assert printed.startswith("The ") and len(printed.rstrip("\n").encode()) >= 4
    rc, again, err = main(capsys, "generate", "--ckpt", out, "--prompt", "The ", "-n", 12, "--seed", 1)
    assert again == printed
    other = tmp_path / "other.nl"
    other.write_text(SPEC.read_text().replace("vocab 256", "vocab 300"))
    rc, _, err = main(capsys, "eval", other, "--ckpt", out)
    assert rc == 1 and "Traceback" not in err and f"note: {other} has changed" in err
    assert "error: the checkpoint in" in err and "does not fit this model: size mismatch for" in err


def one_error_line(rc, err, *expected):
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0]


def test_bad_input_is_one_error_line(double, tmp_path, capsys):
    one_error_line(*main(capsys, "train", SPEC, "--data", tmp_path / "nope.txt", "--out", tmp_path / "a")[::2],
                   "cannot read data", "nope.txt")
    one_error_line(*main(capsys, "train", SPEC, "--resume", "--out", tmp_path / "empty")[::2],
                   "no checkpoint in", "empty")
    one_error_line(*main(capsys, "eval", SPEC, "--ckpt", tmp_path / "empty")[::2], "no checkpoint in")
    one_error_line(*main(capsys, "generate", "--ckpt", tmp_path / "empty")[::2], "no checkpoint in")
    one_error_line(*main(capsys, "generate")[::2], "--ckpt DIR")
    one_error_line(*main(capsys, "train", ROOT / "examples" / "optim" / "adam.nl", "--out", tmp_path / "b")[::2],
                   "only the optimizer `adam`", "no model")
    one_error_line(*main(capsys, "train", SPEC, "--set", "dim", "--out", tmp_path / "c")[::2], "key=value")
    one_error_line(*main(capsys, "train", SPEC, "--set", "dim=big", "--out", tmp_path / "c")[::2], "not a number")
    small = tmp_path / "small.txt"
    small.write_bytes(b"abc" * 10)
    one_error_line(*main(capsys, "train", SPEC, "--data", small, "--out", tmp_path / "d", "--set", "context=16")[::2],
                   "too small for context 16")


def test_spec_with_errors_prints_its_diagnostics(double, tmp_path, capsys):
    bad = tmp_path / "bad.nl"
    bad.write_text(SPEC.read_text().replace("silu(", "sulu("))
    rc, _, err = main(capsys, "train", bad, "--out", tmp_path / "run")
    assert rc == 1 and "Traceback" not in err and f"{bad}:" in err and "error[NL" in err
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_runs_settings(double, tmp_path, capsys):
    run(tmp_path, 2)
    one_error_line(*main(capsys, "train", SPEC, "--resume", "--out", tmp_path, "--seed", 7)[::2],
                   "--seed 0, not 7")
    one_error_line(*main(capsys, "train", SPEC, "--resume", "--out", tmp_path, "--steps", 1)[::2],
                   "already at step 2")


# --- divergence --------------------------------------------------------------------

class Diverging(ByteGRU):
    """Test double whose loss turns NaN from its third training step on."""

    steps = 0

    def forward(self, tokens, state=None):
        logits, state = super().forward(tokens, state)
        self.steps += self.training
        return (logits * float("nan") if self.training and self.steps >= 3 else logits), state


class InnerNaN(RuntimeError):
    """Stands in for nldsl.runtime.errors.NonFiniteError."""


class RaisingInner(ByteGRU):
    """Test double whose inner update fails, as the backend reports it, at its second training step."""

    steps = 0

    def forward(self, tokens, state=None):
        self.steps += self.training
        if self.training and self.steps >= 2:
            raise InnerNaN("level attn: the inner update made NaN")
        return super().forward(tokens, state)


def test_nan_loss_stops_naming_the_step(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nldsl, "compile", Diverging, raising=False)
    rc, _, err = main(capsys, "train", SPEC, "--out", tmp_path, "--quiet", "--steps", 5, "--ckpt-every", 1,
                      "--eval-batches", 1, *[a for kv in TINY.items() for a in ("--set", f"{kv[0]}={kv[1]}")])
    one_error_line(rc, err, "diverged at step 3", "loss is nan", "last checkpoint (step 2)")
    assert tr.load_checkpoint(tmp_path).step == 2


def test_the_backends_nonfinite_error_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nldsl, "compile", RaisingInner, raising=False)
    monkeypatch.setattr(tr, "_nonfinite_errors", lambda: (InnerNaN,))
    rc, _, err = main(capsys, "train", SPEC, "--out", tmp_path, "--quiet", "--steps", 5,
                      "--eval-batches", 1, *[a for kv in TINY.items() for a in ("--set", f"{kv[0]}={kv[1]}")])
    one_error_line(rc, err, "diverged at step 2:", "level attn: the inner update made NaN")


# --- the real backend --------------------------------------------------------------

@pytest.mark.skipif(not hasattr(nldsl, "compile"), reason="the model backend (nldsl.compile) is missing")
def test_real_backend_smoke(tmp_path):
    overrides = {"dim": 32, "context": 32, "batch": 2, "depth": 1}
    model = nldsl.compile(SPEC, **overrides)
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        whole, _ = model(tokens)
        first, state = model(tokens[:, :16])
        second, _ = model(tokens[:, 16:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)  # streaming, which generate relies on
    if not hasattr(model, "configure_optimizer"):
        pytest.skip("the model backend has no configure_optimizer yet")
    straight = tr.train(SPEC, steps=4, out_dir=tmp_path / "a", overrides=overrides, eval_batches=1,
                        eval_every=0, ckpt_every=0, sample=0, quiet=True)
    assert all(torch.isfinite(torch.tensor(straight.train)))
    tr.train(SPEC, steps=2, out_dir=tmp_path / "b", overrides=overrides, eval_batches=1, eval_every=0,
             ckpt_every=0, sample=0, quiet=True)
    resumed = tr.train(SPEC, steps=4, out_dir=tmp_path / "b", resume=True, eval_batches=1, eval_every=0,
                       ckpt_every=0, sample=0, quiet=True)
    assert resumed.train == straight.train
    model, _ = tr.load_run(tmp_path / "b")
    assert len(tr.generate(model, b"The ", 20)) == 20


def test_compiled_training_steps_equal_eager(tmp_path):
    """--compile runs the steps through torch.compile: the same losses as eager (float32,
    summed in another order by inductor), and a checkpoint that eval reads as usual."""
    eager = run(tmp_path / "eager", 3)
    compiled = run(tmp_path / "compiled", 3, compile=True)
    assert compiled.train == pytest.approx(eager.train, rel=1e-4, abs=1e-5)
    assert compiled.heldout[3] == pytest.approx(eager.heldout[3], rel=1e-4, abs=1e-5)
    assert tr.load_checkpoint(tmp_path / "compiled").step == 3
