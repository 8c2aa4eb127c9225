"""Building a run (nldsl/run.py): specs by path, example name or FILE:MODEL, devices,
precision, and the commands that use them."""
import os
from pathlib import Path

import pytest
import torch

from nldsl import run as runs
from nldsl import sources
from nldsl.cli import main
from nldsl.compiler.load import library_root
from nldsl.train import load_checkpoint, load_run

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def test_a_spec_is_a_path_an_example_or_a_model_of_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    library = library_root()
    assert runs.resolve_spec("hope") == (library / "hope.nl", None)
    assert runs.resolve_spec("hope.nl") == (library / "hope.nl", None)
    assert runs.resolve_spec("cms:cms_nested") == (library / "cms.nl", "cms_nested")
    mine = tmp_path / "hope.nl"
    mine.write_text("model m {}\n")
    assert runs.resolve_spec("hope.nl") == (Path("hope.nl"), None)  # a file here comes first
    with pytest.raises(runs.RunError, match=r"no spec `hopee`: give a \.nl file or one of the examples \(cms, "):
        runs.resolve_spec("hopee")
    with pytest.raises(runs.RunError, match="no spec `sub/hope.nl`"):
        runs.resolve_spec("sub/hope.nl")  # only bare names are looked up in the library
    os.mkfifo(tmp_path / "fifo")
    assert runs.resolve_spec("fifo") == (Path("fifo"), None)  # the reader of specs refuses it, without blocking


def test_devices():
    assert runs.device("cpu") == CPU
    assert runs.device("auto") == (torch.device("cuda") if torch.cuda.is_available() else CPU)
    with pytest.raises(runs.RunError, match="--device tpu: give auto, cpu, cuda or cuda:N"):
        runs.device("tpu")
    with pytest.raises(runs.RunError, match="--device cuda:x: give auto"):
        runs.device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(runs.RunError, match="--device cuda: this machine has no CUDA device"):
            runs.device("cuda")
    else:
        with pytest.raises(runs.RunError, match="CUDA devices, numbered from 0"):
            runs.device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(runs.RunError, match="--precision fp8: give one of fp32, bf16, fp16"):
        runs.precision("fp8")


def _losses(spec: str, precision: str, steps: int = 6) -> tuple[list[float], object]:
    path, name = runs.resolve_spec(spec)
    model = runs.build_model(path, {"dim": 32, "context": 64, "batch": 2}, 0, name=name)
    optimizer, corpus, scaler = model.configure_optimizer(), sources.load("pydoc"), runs.grad_scaler(CPU, precision)
    from nldsl.train import _train_step
    return [_train_step(model, optimizer, *corpus.batch(0, s, 2, 64), precision, scaler)[0]
            for s in range(1, steps + 1)], model


@pytest.mark.parametrize("spec", ["gated_deltanet", "hope"])
def test_bf16_training_stays_near_fp32(spec):
    """Autocast to bf16 on the CPU: six training steps stay within 5e-3 nats of fp32's
    (measured: at most 1.4e-3 over ten steps for hope, 5e-4 for gated_deltanet), and
    the fast states stay float32."""
    fp32, _ = _losses(spec, "fp32")
    bf16, model = _losses(spec, "bf16")
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 5e-3
    assert fp32 != bf16  # autocast did take effect
    with torch.no_grad(), runs.autocast(CPU, "bf16"):
        _, state = model(torch.randint(0, 256, (1, 64)))
    thetas = [t for ls in state.levels.values() for f in ls.fast.values() for t in (getattr(f, "theta", None) or {}).values()]
    assert thetas and all(t.dtype == torch.float32 for t in thetas)


def test_fp16_trains_with_a_gradient_scaler():
    assert runs.grad_scaler(CPU, "fp16").is_enabled() and not runs.grad_scaler(CPU, "bf16").is_enabled()
    losses, model = _losses("transformer", "fp16", steps=4)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_commands_take_an_example_a_model_of_a_file_a_device_and_a_precision(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "cms:cms_nested", "--steps", "2", "--set", "dim=16", "--set", "batch=2", "--out", str(out),
                 "--eval-every", "0", "--eval-batches", "1", "--sample", "0", "--quiet", "--device", "cpu",
                 "--precision", "bf16"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.model_name == "cms_nested" and ckpt.step == 2
    model, _ = load_run(out)
    assert model.name == "cms_nested"
    assert main(["eval", "--ckpt", str(out), "--eval-batches", "1", "--device", "cpu"]) == 0
    assert main(["generate", "--ckpt", str(out), "-n", "3", "--precision", "bf16"]) == 0
    capsys.readouterr()
    assert main(["train", "cms:cms_sequential", "--steps", "3", "--resume", "--out", str(out)]) == 1
    assert "the run was trained with FILE:MODEL 'cms_nested', not 'cms_sequential'" in capsys.readouterr().err
    assert main(["train", "cms:nope", "--steps", "1", "--out", str(tmp_path / "x"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "has no model `nope` (its models: `cms_sequential`, `cms_independent`, `cms_nested`)" in err
    assert main(["train", "transformer", "--steps", "1", "--device", "tpu", "--out", str(tmp_path / "y")]) == 1
    assert "--device tpu" in capsys.readouterr().err
