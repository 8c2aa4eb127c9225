"""Data-parallel training (nldsl/distributed.py) on this CPU: 2 ranks over gloo, started by
torchrun, against one process training the same global batch.

Tolerance: the ranks' gradients are averaged by an all-reduce, so float32 sums run in
another order than in one process; over six steps of these tiny models the losses agree
to about 1e-7 relative, and the tests hold them to 1e-5.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import cli, distributed, sources
from nldsl import train as tr
from nldsl.run import RunError
from test_logs import scalars

ROOT = Path(__file__).resolve().parent.parent
HOPE = {"dim": 16, "context": 64, "batch": 4, "depth": 1, "heads": 2}  # task level cms1 and cross levels
CMS = {"dim": 16, "context": 64, "batch": 4}  # cms_nested: task levels every 8 and 32 tokens
TINY = {"dim": 16, "context": 16, "batch": 4, "depth": 1}  # transformer
QUIET = {"eval_batches": 1, "eval_every": 0, "ckpt_every": 0, "sample": 0, "quiet": True, "device": "cpu"}
FLAGS = ["--eval-batches", "1", "--eval-every", "0", "--sample", "0", "--device", "cpu", "--quiet"]
REL = 1e-5


def sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node N ARGS...` from the repository."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def one_process(spec: str, out: Path, steps: int, overrides: dict | None = None, **kw) -> tr.History:
    kw = {**QUIET, **kw}
    if not kw.get("resume"):
        kw["overrides"] = overrides
    return tr.train(spec, steps=steps, out_dir=out, **kw)


def losses(out: Path) -> list[float]:
    return tr.load_checkpoint(out).history.train


def grad_norms(out: Path) -> list[float]:
    """The gradient norm a run logged at each step (TensorBoard), in order of the steps."""
    return [v for _, v in sorted(scalars(out)["grad_norm"].items())]


@pytest.fixture(scope="module")
def hope_run(tmp_path_factory):
    """One process trains hope 6 steps; its folder at step 3 is kept, to resume elsewhere."""
    base = tmp_path_factory.mktemp("hope")
    one_process("hope", base / "run", 3, HOPE)
    shutil.copytree(base / "run", base / "at3")
    return one_process("hope", base / "run", 6, resume=True).train, base / "at3"


@pytest.fixture(scope="module")
def hope_norms(hope_run) -> list[float]:
    """The gradient norms of hope_run's first 3 steps."""
    return grad_norms(hope_run[1])


# --- DDP ------------------------------------------------------------------------------

RUNNER = """
import hashlib, json, os, sys
from pathlib import Path
import nldsl.train as T

log = {"writes": [], "weights": {}}
models, build, write = [], T.build_model, T.atomic_write
T.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]
T.atomic_write = lambda path, data: log["writes"].append(Path(path).name) or write(path, data)

def weights(step, loss):  # a checksum of all the weights this rank holds after the step
    h = hashlib.sha256()
    for p in models[0].parameters():
        h.update(p.detach().numpy().tobytes())
    log["weights"][step] = h.hexdigest()

logs = Path(sys.argv[2])
try:
    T.train(**json.loads(sys.argv[1]), on_step=weights)
finally:
    (logs / f"rank{os.environ['RANK']}.json").write_text(json.dumps(log))
"""


def test_ddp_equals_one_process_and_its_checkpoint_resumes_in_one(hope_run, hope_norms, tmp_path):
    """hope (a task level's inner autograd.grad inside DDP's forward) on 2 ranks: the losses
    and logged gradient norms of one process, the same weights on both ranks after every
    step, rank 0 alone writing and printing, and a checkpoint that one process resumes where
    the uninterrupted run goes."""
    reference, _ = hope_run
    runner, out = tmp_path / "runner.py", tmp_path / "run"
    runner.write_text(RUNNER)
    kw = {"spec_path": "hope", "steps": 3, "out_dir": str(out), "overrides": HOPE, **QUIET, "sample": 8}
    r = torchrun(str(runner), json.dumps(kw), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert list(ranks[0]["weights"]) == ["1", "2", "3"] and ranks[0]["weights"] == ranks[1]["weights"]
    assert sorted(ranks[0]["writes"]) == ["loss.png", "losses.csv", "model.safetensors", "sample.txt"]
    assert ranks[1]["writes"] == []
    assert r.stdout.count("held-out at step 0") == 1 and r.stdout.count("sample:") == 1
    assert losses(out) == pytest.approx(reference[:3], rel=REL)
    assert grad_norms(out) == pytest.approx(hope_norms, rel=REL)  # the whole batch's, not rank 0's share
    assert one_process("hope", out, 6, resume=True).train == pytest.approx(reference, rel=REL)


def test_ddp_with_nested_task_levels(tmp_path):
    """cms_nested: two task levels, each taking an inner gradient in every forward, the
    faster restarting from the slower's state; DDP's reducer is not disturbed, here with
    each rank's share run as 2 micro-batches (--accumulate 2), each backward all-reduced."""
    torchrun("-m", "nldsl", "train", "cms:cms_nested", *sets(CMS), "--steps", "3", *FLAGS, "--out",
             str(tmp_path / "ddp"), "--accumulate", "2")
    straight = one_process("cms:cms_nested", tmp_path / "one", 3, CMS, accumulate=2)
    assert losses(tmp_path / "ddp") == pytest.approx(straight.train, rel=REL)


@pytest.mark.parametrize("engine", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_a_one_process_checkpoint_resumes_on_two_ranks(hope_run, tmp_path, engine):
    reference, at3 = hope_run
    out = tmp_path / "run"
    shutil.copytree(at3, out)
    torchrun("-m", "nldsl", "train", "hope", "--resume", "--steps", "6", *FLAGS, "--out", str(out), *engine)
    assert losses(out) == pytest.approx(reference, rel=REL)
    assert losses(out)[:3] == reference[:3]  # the steps before the checkpoint are kept as they were


# --- FSDP -----------------------------------------------------------------------------

def test_fsdp_equals_one_process_and_its_shards_resume_in_one(hope_run, hope_norms, tmp_path):
    """FSDP shards weights and the spec optimizer's state (and accumulates the sharded
    gradients of 2 micro-batches); its checkpoint is one safetensors file a rank
    (torch.distributed.checkpoint) that one process reads whole, and evaluates."""
    reference, _ = hope_run
    out = tmp_path / "run"
    torchrun("-m", "nldsl", "train", "hope", *sets(HOPE), "--steps", "3", *FLAGS, "--out", str(out), "--fsdp",
             "--accumulate", "2", "--grad-clip", "1e9")  # a clip of the sharded gradients that leaves them as they are
    from safetensors import safe_open
    with safe_open(out / tr.CHECKPOINT, "pt") as f:
        assert list(f.keys()) == []  # the tensors are in the shards
    assert sorted(p.name for p in (out / "shards-00000003").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    assert losses(out) == pytest.approx(reference[:3], rel=REL)
    assert grad_norms(out) == pytest.approx(hope_norms, rel=REL)  # of the sharded gradients, combined
    model, _ = tr.load_run(out, device="cpu")  # eval and generate read the shards too
    assert tr.evaluate(model, sources.load("pydoc"), 1) == pytest.approx(tr.load_checkpoint(out).history.heldout[3])

    bad = tmp_path / "bad"  # a flipped bit in a shard, then a missing shard, are found
    shutil.copytree(out, bad)
    shard = bad / "shards-00000003" / "shard-00002-model-00001-of-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(RunError, match="is corrupt"):
        tr.load_checkpoint(bad)
    shard.unlink()
    with pytest.raises(RunError, match="does not hold the files"):
        tr.load_checkpoint(bad)

    assert one_process("hope", out, 6, resume=True).train == pytest.approx(reference, rel=REL)
    assert not (out / "shards-00000003").exists()  # one process wrote a whole checkpoint: the shards went


@pytest.mark.parametrize("stored, why", [
    ("[]", "it is not an object with `folder` and `files`"),
    ('{"folder": "../shards-00000001", "files": {"shard-00001-model-00001-of-00001.safetensors": "0"}}',
     "`folder` is not a folder of shards"),
    ('{"folder": "shards-00000001", "files": {"../model.safetensors": "0"}}', "`files` does not name shard files"),
    ('{"folder": "shards-00000001", "files": {}}', "`files` does not name shard files"),
])
def test_a_checkpoint_names_only_shards_in_its_own_folder(tmp_path, stored, why):
    with pytest.raises(RunError, match=f"is malformed: `shards`: {why}"):
        distributed.read_shards(tmp_path, stored, tmp_path / tr.CHECKPOINT)


def spec_with(optimizer: str) -> str:
    text = (ROOT / "examples" / "transformer.nl").read_text()
    return text.replace("  optimizer adamw(lr: 3e-3, weight_decay: 0.1)\n", optimizer)


@pytest.mark.parametrize("optimizer, refusal", [
    ("  optimizer muon(lr: 2e-2) for matrices\n  optimizer adamw(lr: 3e-3) for rest\n", "`newton_schulz`, `rows`"),
    ("  optimizer dmgd(lr: 1e-2)\n", "memory `m` \\(mlp\\) learns from all the coordinates"),
], ids=["muon", "dmgd"])
def test_fsdp_refuses_optimizers_that_read_a_whole_parameter(optimizer, refusal):
    """FSDP gives each rank rows of a parameter: Newton-Schulz, rows/cols or a memory of all
    its coordinates would see only those rows. Adam and AdamW act coordinate by coordinate."""
    with pytest.raises(RunError, match=refusal):
        distributed.check_shardable(nldsl.compile(spec_with(optimizer), **TINY))
    adam = nldsl.compile(spec_with("  optimizer adam(lr: 1e-3)\n"), **TINY)
    distributed.World(fsdp=True).check(adam, "bf16")
    with pytest.raises(RunError, match="--fsdp with --precision fp16"):  # its scaler would not see the gradients
        distributed.World(fsdp=True).check(adam, "fp16")


# --- the ranks' batches -----------------------------------------------------------------

def test_the_ranks_share_a_step_of_one_process_and_its_micro_batches():
    corpus = sources.load("pydoc")
    x, y = corpus.batch(5, 7, 8, 16)
    shares = [distributed.RankShare(corpus, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([s.batch(5, 7, 8, 16)[0] for s in shares]), x)
    # micro-batch i of rank r is what one process's micro-batch i holds of rank r's rows
    micro = [s.batch(5, 7, 4, 16, rank=i, world_size=2)[1] for i in range(2) for s in shares]
    assert torch.equal(torch.cat(micro), y)
    with pytest.raises(RunError, match="does not split evenly among 3 ranks"):
        distributed.World(rank=0, size=3).share(corpus, 8)
    with pytest.raises(RunError, match="2 ranks × 3 micro-batches"):
        distributed.World(rank=0, size=2).share(corpus, 8, accumulate=3)


# --- failures ---------------------------------------------------------------------------

def main(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "error: --nproc 0: give the number of processes, at least 1\n"),
    (["--fsdp"], "error: --fsdp shards the model over the ranks of a job: start it with torchrun"),
    (["--dist-timeout", "0"], "error: --dist-timeout 0: give a positive number of seconds\n"),
])
def test_bad_flags_are_one_error_line(capsys, tmp_path, argv, message):
    rc, out, err = main(capsys, "train", "transformer", *sets(TINY), "--out", tmp_path / "run", *FLAGS, *argv)
    assert rc == 1 and err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_nproc_under_torchrun_must_be_torchruns(capsys, tmp_path, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    rc, out, err = main(capsys, "train", "transformer", "--out", tmp_path / "run", "--nproc", "3")
    assert rc == 1 and err == ("error: [rank 0] --nproc 3: this process is already one of the 2 ranks that torchrun "
                               "started on this machine; leave --nproc out under torchrun\n")


def test_an_unreachable_rendezvous_is_one_line_not_a_hang(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    began = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nldsl", "train", "transformer", *sets(TINY), "--out",
                        str(tmp_path / "run"), *FLAGS, "--dist-timeout", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and time.monotonic() - began < 60
    assert r.stderr.startswith(f"error: [rank 1] could not join the job of 2 ranks at 127.0.0.1:{port} within 2 s")
    assert r.stderr.count("\n") == 1, r.stderr  # torch's C++ retries and stack frames are not shown


def _rank_pid(out: Path, rank: int) -> int | None:
    """The process of `rank` of the job training into `out` (found through /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(out).encode() in command and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank to kill through /proc (Linux)")
def test_a_killed_rank_stops_the_job_and_resume_loses_nothing(tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "nldsl", "train", "transformer", *sets(TINY), "--steps", "1000",
                            "--ckpt-every", "2", *FLAGS, "--nproc", "2", "--out", str(out)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / tr.CHECKPOINT).exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
            time.sleep(0.02)
        os.kill(_rank_pid(out, 1), signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 1
    assert f"error: the job stopped: rank 1 was killed by SIGKILL, and the other ranks were stopped; `--resume` " \
           f"continues from the last checkpoint in {out}" in err
    assert "Traceback" not in err
    last = tr.load_checkpoint(out).step
    assert 2 <= last < 1000 and last % 2 == 0
    resumed = one_process("transformer", out, last + 2, resume=True)
    straight = one_process("transformer", tmp_path / "straight", last + 2, TINY)
    assert resumed.train == pytest.approx(straight.train, rel=REL)
