"""Run folders under stress: corrupt and forged checkpoints, paths that lead out of the
folder, files that are not files, unwritable, full and shared folders, bad sampling
arguments, and divergence named by its cause. Every user mistake is one `error:` line
and exit code 1.

Most tests train `ByteGRU`, tests/test_train.py's double of `nldsl.compile`; a few run
the real backend on a tiny linear-attention or gated-delta model.
"""
import errno
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import cli
from nldsl import data as nldata
from nldsl import files
from nldsl import train as tr
from nldsl.compiler.diagnostics import NLError
from nldsl.runtime.errors import NonFiniteError
from test_train import ROOT, SPEC, TINY, ByteGRU, double, main, one_error_line, run  # noqa: F401 (fixture)

SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
REAL = ["--set", "dim=16", "--set", "context=16", "--set", "batch=2", "--quiet", "--eval-batches", "1",
        "--sample", "0"]


def rewrite(out: Path, meta: dict | None = None, tensors: dict | None = None) -> None:
    """Change a checkpoint as a forger would: metadata (None removes a key) and tensors,
    then a sha256 that matches again."""
    from safetensors import safe_open
    from safetensors.torch import save
    path = out / tr.CHECKPOINT
    with safe_open(path, framework="pt") as f:
        m, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in (meta or {}).items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    t.update(tensors or {})
    m.pop("sha256", None)
    if m.get("format") == tr.FORMAT:
        m["sha256"] = tr._digest(m, t)
    path.write_bytes(save(t, metadata=m))


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a 2-step run of the double, trained once for the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nldsl, "compile", ByteGRU, raising=False)
        out = tmp_path_factory.mktemp("run")
        run(out, 2)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture
def trained(double, tmp_path, run_files) -> Path:
    """A fresh copy of that run's folder."""
    out = tmp_path / "run"
    out.mkdir()
    for name, data in run_files.items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture
def deadline():
    """A read that blocks fails the test instead of hanging the suite."""
    def ring(*_):
        raise TimeoutError("blocked for 60 s")
    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# --- reading files: regular, bounded ----------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_limited_reads_regular_files_only_and_at_most_the_limit(tmp_path, deadline):
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    assert files.read_limited(small, 100, "data") == b"x" * 100
    with pytest.raises(files.FileError, match=r"data .*small is larger than 99 bytes"):
        files.read_limited(small, 99, "data")
    for path, kind in ((fifo(tmp_path), "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a folder")):
        with pytest.raises(files.FileError, match=f"is not a regular file \\({kind}\\)"):
            files.read_limited(path, 1 << 20, "data")
    with pytest.raises(files.FileError, match="cannot read data .*nope: No such file"):
        files.read_limited(tmp_path / "nope", 10, "data")
    if Path("/proc/self/status").exists():  # reports 0 bytes, holds more
        assert b"Name:" in files.read_limited("/proc/self/status", 1 << 20, "data")
        with pytest.raises(files.FileError, match="larger than 10 bytes"):
            files.read_limited("/proc/self/status", 10, "data")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_data_that_is_not_a_bounded_regular_file_is_refused(double, tmp_path, capsys, monkeypatch, deadline):
    for data, expected in ((fifo(tmp_path), "(a FIFO)"), ("/dev/zero", "(a character device)")):
        one_error_line(*main(capsys, "train", SPEC, "--data", data, "--out", tmp_path / "a", *SETS)[::2],
                       f"data {data} is not a regular file {expected}")
    big = tmp_path / "big.txt"
    big.write_bytes(b"abc" * 400)
    monkeypatch.setattr(nldata, "MAX_DATA_BYTES", 1000)
    one_error_line(*main(capsys, "train", SPEC, "--data", big, "--out", tmp_path / "b", *SETS)[::2],
                   "is larger than 1,000 bytes")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_spec_that_is_a_fifo_is_refused(double, tmp_path, capsys, deadline):
    one_error_line(*main(capsys, "train", fifo(tmp_path), "--out", tmp_path / "a")[::2], "is not a regular file")


# --- checkpoints: checksums, malformed metadata, old formats, temporaries ----------

def test_corruption_is_found_by_the_checksum(trained, capsys):
    path = trained / tr.CHECKPOINT
    good = path.read_bytes()
    assert tr.load_checkpoint(trained).step == 2
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # a bit of the last tensor's data
    path.write_bytes(bytes(flipped))
    one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2], f"the checkpoint {path} is corrupt")
    path.write_bytes(good.replace(b'"step":"2"', b'"step":"3"'))  # the metadata is covered too
    with pytest.raises(tr.TrainError, match="is corrupt"):
        tr.load_checkpoint(trained)
    path.write_bytes(good[:len(good) // 2])  # cut short
    one_error_line(*main(capsys, "generate", "--ckpt", trained)[::2], f"cannot read the checkpoint {path}")


@pytest.mark.parametrize("key, value, expected", [
    ("step", "two", "`step`: invalid literal"),
    ("step", "-1", "`step`: -1 is negative"),
    ("step", "3", "history has 2 training losses for 3 steps"),
    ("history", "{", "`history`: Expecting"),
    ("history", '{"train": 5}', "`history`"),
    ("overrides", "[1]", "`overrides`: overrides map settings to numbers, not list"),
    ("overrides", '{"report": 1}', "`report` is not a model setting"),
    ("overrides", '{"dim": NaN}', "must be a finite number"),
    ("optimizer", "{", "`optimizer`"),
    ("optimizer", '{"state": {"__tensor__": "optimizer.999"}}', "`optimizer`: 'optimizer.999'"),
    ("optimizer", "[" * 100_000 + "]" * 100_000, "`optimizer`"),
    ("eval_batches", "0", "`eval_batches`: 0 is less than 1"),
    ("inner_clip", "-1", "`inner_clip`: --inner-clip -1"),
    ("data", "", "`data`: it is empty"),
    ("spec", None, "it has no `spec`"),
    ("seed", None, "it has no `seed`"),
])
def test_malformed_metadata_is_one_error_line(trained, capsys, key, value, expected):
    rewrite(trained, {key: value})
    one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2],
                   f"the checkpoint {trained / tr.CHECKPOINT} is malformed", expected)


def test_a_resumed_optimizer_state_that_does_not_fit_is_one_error_line(trained, capsys):
    rewrite(trained, {"optimizer": '{"state": 3, "param_groups": []}'})
    one_error_line(*main(capsys, "train", SPEC, "--resume", "--out", trained, "--steps", 3)[::2],
                   "does not fit this model")


def test_checkpoints_of_format_1_load_unverified(trained, capsys):
    rewrite(trained, {"format": "nldsl-run/1", "inner_clip": None, "data_sha256": None})
    ckpt = tr.load_checkpoint(trained)
    assert ckpt.step == 2 and ckpt.inner_clip is None and ckpt.data_sha256 is None
    assert "nldsl-run/1 checkpoint, which holds no sha256" in capsys.readouterr().err
    rc, printed, err = main(capsys, "eval", "--ckpt", trained)
    assert rc == 0 and "(step 2), held-out pydoc" in printed, err
    run(trained, 3, resume=True)  # a resumed run writes the current format
    capsys.readouterr()
    assert tr.load_checkpoint(trained).step == 3
    assert "holds no sha256" not in capsys.readouterr().err
    rewrite(trained, {"format": "nldsl-run/9"})
    with pytest.raises(tr.TrainError, match="is not an nldsl checkpoint"):
        tr.load_checkpoint(trained)


def test_the_next_write_removes_temporaries_of_a_killed_write(trained):
    stale = [trained / ".model.safetensors.k1ll_9ab", trained / ".losses.csv.zz9_0abc"]
    others = [trained / ".model.safetensors.bak", trained / ".model.safetensors.k1ll_9ab.keep", trained / "notes.txt"]
    for p in stale + others:
        p.write_bytes(b"half a file")
    run(trained, 3, resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


# --- a run folder from elsewhere ---------------------------------------------------

@pytest.fixture
def opened():
    """The paths this process opens while the fixture's list is alive (the `open` audit event,
    raised by both `open()` and `os.open`)."""
    paths = []
    _OPENED.append(paths)
    yield paths
    _OPENED.remove(paths)


_OPENED: list[list[str]] = []


def _record_opens(event: str, args: tuple) -> None:
    if event == "open":
        for paths in _OPENED:
            paths.append(str(args[0]))


sys.addaudithook(_record_opens)  # for the whole session: hooks cannot be removed; idle while _OPENED is empty


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_eval_and_generate_never_read_the_stored_spec_path(trained, tmp_path, capsys, opened, deadline):
    same = tmp_path / "same.nl"
    same.write_text(SPEC.read_text())  # what the run trained on, unchanged
    for spec_path in (str(same), "/dev/zero", str(fifo(tmp_path)), "/proc/self/environ"):
        rewrite(trained, {"spec_path": spec_path})
        opened.clear()
        rc, printed, err = main(capsys, "eval", "--ckpt", trained)
        assert rc == 0 and "held-out pydoc" in printed, err
        rc, _, err = main(capsys, "generate", "--ckpt", trained, "-n", 3)
        assert rc == 0, err
        assert str(trained / tr.CHECKPOINT) in opened and spec_path not in opened


def test_a_stored_spec_may_import_the_library_only(trained, tmp_path, capsys, monkeypatch):
    (tmp_path / "near.nl").write_text("optimizer near(lr = 1) { update W -= lr * g }\n")
    spec = SPEC.read_text()
    for target in ("/etc/passwd", "../near.nl", "near.nl", "optim/../../README.md"):
        rewrite(trained, {"spec": f'import "{target}"\n{spec}'})
        monkeypatch.chdir(tmp_path)  # where `near.nl` would be found
        one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2],
                       f'the spec stored in the checkpoint imports "{target}"', "give the spec file")
    rewrite(trained, {"spec": f'import "optim/adam.nl"\n{spec}'})
    rc, _, err = main(capsys, "eval", "--ckpt", trained)
    assert rc == 0, err
    (tmp_path / "optim").mkdir()
    (tmp_path / "optim" / "adam.nl").write_text("optimizer adam(lr = 1) { update W -= lr * g }\n")
    one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2], 'imports "optim/adam.nl"')  # shadowed here
    rewrite(trained, {"spec": "../escape.nl"})  # one line ending in .nl: still text, never a path
    rc, _, err = main(capsys, "eval", "--ckpt", trained)
    assert rc == 1 and "error[NL" in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_stored_data_is_read_only_if_a_bounded_regular_file(trained, tmp_path, capsys, monkeypatch, deadline):
    for data, expected in ((fifo(tmp_path), "(a FIFO)"), ("/dev/zero", "(a character device)"),
                           (tmp_path, "(a folder)")):
        rewrite(trained, {"data": str(data)})
        one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2], f"data {data} is not a regular file {expected}")
    big = tmp_path / "big.txt"
    big.write_bytes(b"abc" * 400)
    rewrite(trained, {"data": str(big)})
    monkeypatch.setattr(nldata, "MAX_DATA_BYTES", 1000)
    one_error_line(*main(capsys, "eval", "--ckpt", trained)[::2], "larger than 1,000 bytes")


def test_a_relative_data_path_is_stored_resolved(double, tmp_path, capsys, monkeypatch):
    text = (ROOT / "README.md").read_bytes() * 4
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "text.txt").write_bytes(text)
    monkeypatch.chdir(tmp_path / "here")
    run(tmp_path / "run", 2, data="text.txt")
    assert tr.load_checkpoint(tmp_path / "run").data == str(tmp_path / "here" / "text.txt")
    monkeypatch.chdir(tmp_path)
    rc, printed, err = main(capsys, "eval", "--ckpt", "run")
    assert rc == 0 and f"held-out {tmp_path / 'here' / 'text.txt'}:" in printed and "note" not in err, err
    (tmp_path / "here" / "text.txt").write_bytes(text[::-1])
    rc, printed, err = main(capsys, "eval", "--ckpt", "run")
    assert rc == 0 and "has changed since this run was trained on it" in err


# --- --set keys that are not settings ----------------------------------------------

@pytest.mark.parametrize("key, flag", [("name", "--name"), ("source", "FILE"), ("report", "no setting"),
                                       ("inner_clip", "--inner-clip"), ("fused", "--paths"),
                                       ("kernels", "kernels=")])
def test_set_refuses_what_is_not_a_setting(tmp_path, capsys, key, flag):
    for command in (("train", SPEC, "--out", tmp_path / "r"), ("compile", SPEC), ("bench", SPEC)):
        one_error_line(*main(capsys, *command, "--set", f"{key}=1")[::2],
                       f"--set `{key}=1`: `{key}` is not a model setting", flag)
    assert not (tmp_path / "r").exists()


def test_set_values_must_be_finite(tmp_path, capsys):
    for value in ("nan", "inf", "-inf"):
        one_error_line(*main(capsys, "train", SPEC, "--set", f"dim={value}", "--out", tmp_path)[::2],
                       "must be a finite number")


def test_overrides_never_collide_with_the_apis_parameters():
    for key in ("source", "report", "params"):
        with pytest.raises(NLError, match=f"override `{key}=1` names no setting"):
            nldsl.compile(SPEC, **{key: 1})
    with pytest.raises(ValueError, match="no hyperparameter `source`"):
        nldsl.compile_optimizer(ROOT / "examples" / "optim" / "adam.nl", [torch.zeros(2)], source=1)
    with pytest.raises(ValueError, match="inner_clip must be a positive number"):
        nldsl.compile(SPEC, inner_clip=0)


def test_unknown_settings_are_diagnostics_for_every_command(tmp_path, capsys):
    for command in (("train", SPEC, "--out", tmp_path / "r", "--quiet"), ("compile", SPEC),
                    ("bench", SPEC, "--matmul-size", 8, "--no-memory", "--repeats", 1, "--scaling-tokens", "")):
        rc, _, err = main(capsys, *command, "--set", "dims=32")
        assert rc == 1 and "error[NL124]" in err and "did you mean `dim`?" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_unknown_settings_stored_in_a_checkpoint_are_diagnostics(trained, capsys):
    rewrite(trained, {"overrides": '{"dims": 32}'})
    rc, _, err = main(capsys, "eval", "--ckpt", trained)
    assert rc == 1 and "error[NL124]" in err and "Traceback" not in err


# --- the output folder: unwritable, full, shared ------------------------------------

def test_an_unwritable_out_is_reported_before_training(double, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    rc, printed, err = main(capsys, "train", SPEC, "--out", tmp_path / "file" / "run", *SETS)
    one_error_line(rc, err, f"cannot write to --out {tmp_path / 'file' / 'run'}: Not a directory")
    assert "held-out" not in printed
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o555)
        rc, printed, err = main(capsys, "train", SPEC, "--out", tmp_path / "ro", *SETS)
        one_error_line(rc, err, f"cannot write to --out {tmp_path / 'ro'}: Permission denied")


@pytest.fixture
def full_disk(monkeypatch):
    """fsync fails with ENOSPC for files whose name contains the given text, as on a full disk."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    real, names = os.fsync, []

    def fsync(fd):
        if any(n in os.readlink(f"/proc/self/fd/{fd}") for n in names):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return names


def test_a_full_disk_is_one_error_line_up_front_and_at_each_write(double, tmp_path, capsys, full_disk):
    full_disk.append(tr.LOCK)
    rc, printed, err = main(capsys, "train", SPEC, "--out", tmp_path, *SETS)
    one_error_line(rc, err, f"cannot write to --out {tmp_path}: No space left on device")
    assert "held-out" not in printed
    full_disk[:] = [".model.safetensors."]
    rc, printed, err = main(capsys, "train", SPEC, "--out", tmp_path, "--steps", 3, "--ckpt-every", 2, "--quiet",
                            *SETS)
    one_error_line(rc, err, f"cannot write {tmp_path / tr.CHECKPOINT}: No space left on device")
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("events.out.tfevents."))
    assert written == [tr.LOCK]  # no temporary left behind (TensorBoard's event files are appended as they go)
    full_disk.clear()
    run(tmp_path, 2)  # the lock was let go


def test_a_second_training_on_the_same_out_refuses(trained, capsys):
    before = (trained / tr.CHECKPOINT).read_bytes()
    with tr.lock_run(trained):
        for resume in (("--resume",), ()):
            one_error_line(*main(capsys, "train", SPEC, "--out", trained, "--steps", 4, *resume)[::2],
                           f"{trained} is being trained by another process (pid {os.getpid()})")
    assert (trained / tr.CHECKPOINT).read_bytes() == before
    run(trained, 3, resume=True)  # released with the first holder


# --- generate and eval: arguments and numbers --------------------------------------

def test_generate_refuses_bad_arguments(trained, capsys):
    for args, expected in ((("--temperature", "nan"), "--temperature nan"), (("--temperature", -1), "--temperature -1"),
                           (("--temperature", "inf"), "--temperature inf"), (("--top-k", 0), "--top-k 0"),
                           (("--top-k", -1), "--top-k -1"), (("-n", -1), "-n -1"),
                           (("--prompt", os.fsdecode(b"caf\xe9")), "--prompt is not UTF-8 text")):
        one_error_line(*main(capsys, "generate", "--ckpt", trained, *args)[::2], expected)
    rc, printed, err = main(capsys, "generate", "--ckpt", trained, "--temperature", 1e-30, "-n", 5)
    assert rc == 0 and "\x00" not in printed, err  # a tiny temperature is the likeliest byte, not an overflow


def test_nonfinite_weights_are_refused(trained, capsys):
    name = next(k for k in tr.load_checkpoint(trained).model if k.endswith("weight") and "head" in k)
    rewrite(trained, tensors={f"model.{name}": torch.full_like(tr.load_checkpoint(trained).model[name], float("nan"))})
    for command in ("eval", "generate"):
        one_error_line(*main(capsys, command, "--ckpt", trained)[::2], f"holds NaN or Inf in `{name}`")


class NaNOut(ByteGRU):
    """Test double whose outputs are NaN whenever it is not training: finite weights, NaN predictions."""

    def forward(self, tokens, state=None):
        logits, state = super().forward(tokens, state)
        return (logits if self.training else logits * float("nan")), state


def test_nonfinite_predictions_stop_eval_and_generate(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nldsl, "compile", ByteGRU, raising=False)
    run(tmp_path, 1)
    monkeypatch.setattr(nldsl, "compile", NaNOut, raising=False)
    one_error_line(*main(capsys, "eval", "--ckpt", tmp_path)[::2], "(step 1) on pydoc is nan",
                   "outputs are not finite")
    rc, printed, err = main(capsys, "generate", "--ckpt", tmp_path, "--temperature", 0)
    one_error_line(rc, err, "the model's prediction after 1 bytes is NaN or Inf")
    assert "\x00" not in printed
    with pytest.raises(tr.TrainError, match="at initialisation, before any training: the held-out loss is nan"):
        run(tmp_path / "fresh", 2)


# --- divergence names its cause ----------------------------------------------------

class Exploding(ByteGRU):
    """Test double whose optimizer turns the head's bias to Inf at its second step."""

    def configure_optimizer(self):
        opt = super().configure_optimizer()
        step, head = opt.step, self.head.bias

        def explode(*a, **k):
            out = step(*a, **k)
            if opt.state[head]["step"] >= 2:
                head.data.fill_(float("inf"))
            return out
        opt.step = explode
        return opt


def test_an_outer_update_that_makes_weights_nonfinite_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(nldsl, "compile", Exploding, raising=False)
    with pytest.raises(tr.TrainError) as e:
        run(tmp_path, 4, ckpt_every=1)
    assert str(e.value).startswith("training diverged at step 2: the outer optimizer's update made `head.bias` NaN")
    assert "lower the learning rate on the spec's `optimizer` line" in str(e.value)
    assert "last checkpoint (step 1)" in str(e.value) and tr.load_checkpoint(tmp_path).step == 1


def test_the_inner_nonfinite_hint_names_options_that_exist(capsys):
    message = str(NonFiniteError("attn", "S", 3, 0))
    assert "inner_clip=X in nldsl.compile" in message and "--inner-clip X in nldsl train" in message
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--inner-clip X" in capsys.readouterr().out


def test_inner_clip_is_kept_by_the_run(double, tmp_path, capsys):
    one_error_line(*main(capsys, "train", SPEC, "--inner-clip", 0, "--out", tmp_path / "a", *SETS)[::2],
                   "--inner-clip 0.0: give a positive number")
    one_error_line(*main(capsys, "train", SPEC, "--inner-clip", "nan", "--out", tmp_path / "a", *SETS)[::2],
                   "--inner-clip nan")
    run(tmp_path, 1, inner_clip=0.5)
    assert tr.load_checkpoint(tmp_path).inner_clip == 0.5
    model, _ = tr.load_run(tmp_path)
    assert model.options["inner_clip"] == 0.5
    run(tmp_path, 2, resume=True)
    assert tr.load_checkpoint(tmp_path).inner_clip == 0.5  # kept ...
    run(tmp_path, 3, resume=True, inner_clip=2.0)
    assert tr.load_checkpoint(tmp_path).inner_clip == 2.0  # ... unless a new one is given


# --- the real backend ----------------------------------------------------------------

def hot(tmp_path, example: str) -> Path:
    """An example whose outer optimizer is SGD with a learning rate of 1e4."""
    text = (ROOT / "examples" / example).read_text()
    spec = tmp_path / example
    spec.write_text(text.replace("optimizer adam(lr: 1e-3)", "optimizer sgd(lr: 1e4)"))
    assert "sgd(lr: 1e4)" in spec.read_text()
    return spec


def test_a_huge_outer_rate_is_blamed_not_the_inner_levels(tmp_path, capsys):
    """With the outer lr at 1e4, gated deltanet's weights turn NaN in the second update,
    and linear attention's grow 1e5 times and give a NaN loss at the third step: either
    way the message names the outer optimizer, not an inner level."""
    rc, _, err = main(capsys, "train", hot(tmp_path, "gated_deltanet.nl"), "--out", tmp_path / "g", "--steps", 4,
                      "--set", "depth=1", *REAL)
    one_error_line(rc, err, "training diverged at step 2: the outer optimizer's update made `", "` NaN or Inf",
                   "lower the learning rate on the spec's `optimizer` line")
    rc, _, err = main(capsys, "train", hot(tmp_path, "linear_attention.nl"), "--out", tmp_path / "l", "--steps", 4,
                      "--set", "depth=1", *REAL)
    one_error_line(rc, err, "training diverged at step 3:", "the outer update of step 2 grew the weights' norm",
                   "lower the learning rate on the spec's `optimizer` line")


def test_real_runs_keep_their_inner_clip_and_refuse_nan_weights(tmp_path, capsys):
    spec = ROOT / "examples" / "linear_attention.nl"
    out = tmp_path / "run"
    rc, _, err = main(capsys, "train", spec, "--out", out, "--steps", 1, "--set", "depth=1", "--inner-clip", 4, *REAL)
    assert rc == 0, err
    model, ckpt = tr.load_run(out)
    assert ckpt.inner_clip == 4.0 and model.options["inner_clip"] == 4.0
    name = next(n for n, _ in model.named_parameters())
    rewrite(out, tensors={f"model.{name}": torch.full_like(ckpt.model[name], float("nan"))})
    one_error_line(*main(capsys, "generate", "--ckpt", out)[::2], f"holds NaN or Inf in `{name}`")


def test_library_specs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = torch.nn.Parameter(torch.ones(3))
    opt = nldsl.compile_optimizer("optim/adam.nl", [w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.all(w < 1)
    assert nldsl.check("optim/sgd.nl").optimizers[0].name == "sgd"
    model = nldsl.compile("hope.nl", dim=16)  # the library's, which imports "optim/adamw.nl"
    assert model.settings["dim"] == 16
    assert model(torch.randint(0, 256, (1, 8)))[0].shape == (1, 8, 256)
