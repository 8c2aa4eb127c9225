"""`nldsl compile -o model.py`: standalone source, byte-identical for the same input,
equal to the in-process module, safe whatever the spec names things."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.compiler.backends.python import emit

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NLDSL_UPDATE_GOLDEN") == "1"


def load_emitted(source: str, tmp_path: Path, name: str = "emitted"):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [("hope.nl", None), ("hope_attention.nl", None), ("gated_deltanet.nl", None), ("titans.nl", None),
         ("cms.nl", "cms_nested"), ("cms.nl", "cms_independent"), ("transformer.nl", None)]


@pytest.mark.parametrize("example,name", CASES)
def test_emitted_model_equals_the_compiled_one(example, name, tmp_path):
    sizes = dict(dim=16, heads=2, context=64, depth=2)
    torch.manual_seed(0)
    model = nldsl.compile(EXAMPLES / example, name=name, **sizes)
    module = load_emitted(emit(model), tmp_path)
    torch.manual_seed(0)
    emitted = module.build()
    # same creation order: the same seed gives the same weights, under the same names
    a, b = model.state_dict(), emitted.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    tokens = torch.randint(0, 256, (2, 70))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], model(tokens)[0], rtol=0, atol=0)


def test_emitted_source_is_byte_identical_and_golden():
    first = emit(nldsl.compile(EXAMPLES / "linear_attention.nl"))
    torch.manual_seed(123)  # other weights, same source
    second = emit(nldsl.compile(EXAMPLES / "linear_attention.nl"))
    assert first == second
    golden = GOLDEN / "linear_attention.py"
    if UPDATE:
        golden.write_text(first)
    assert golden.exists(), "run with NLDSL_UPDATE_GOLDEN=1 to write it"
    assert first == golden.read_text()


def test_names_from_a_spec_cannot_clash_or_inject(tmp_path):
    spec = Path(__file__).parent / "specs" / "hostile_names.nl"
    torch.manual_seed(0)
    model = nldsl.compile(spec)
    source = emit(model)
    compile(source, "emitted", "exec")  # valid Python
    module = load_emitted(source, tmp_path)
    torch.manual_seed(0)
    emitted = module.build()
    tokens = torch.randint(0, 32, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], model(tokens)[0], rtol=0, atol=0)
    # every name from the spec reaches the source as an identifier or inside repr() strings
    assert "eval_" in dict(model.named_children()) and "import os" not in source


def test_emitted_model_trains(tmp_path):
    module = load_emitted(emit(nldsl.compile(EXAMPLES / "titans.nl", dim=16, heads=2, context=32, depth=1)), tmp_path)
    model = module.build()
    tokens = torch.randint(0, 256, (2, 33))
    loss = model.loss(tokens)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_emitted_model_takes_the_runtime_options(tmp_path):
    module = load_emitted(emit(nldsl.compile(EXAMPLES / "linear_attention.nl", dim=16, heads=2, depth=1)), tmp_path)
    assert module.build().options["kernels"] == "auto"
    options = module.build(inner_clip=1.0, fused=False, kernels="torch").options
    assert {k: options[k] for k in ("inner_clip", "fused", "kernels")} == {"inner_clip": 1.0, "fused": False,
                                                                          "kernels": "torch"}


def test_cli_compile_writes_the_same_file_twice(tmp_path, capsys):
    from nldsl import cli
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    assert cli.main(["compile", str(EXAMPLES / "titans.nl"), "-o", str(a), "--set", "dim=32"]) == 0
    assert cli.main(["compile", str(EXAMPLES / "titans.nl"), "-o", str(b), "--set", "dim=32"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "register(self, 'q.proj', init('proj', (32, 32)))" in a.read_text()


@pytest.mark.parametrize("argv,message", [
    (["compile", str(EXAMPLES / "cms.nl"), "--name", "nope"], "no model named `nope`"),
    (["compile", str(EXAMPLES / "optim" / "adam.nl")], "defines no model"),
    (["compile", str(EXAMPLES / "hope.nl"), "--set", "dim=3x"], "is not a number"),
    (["compile", str(EXAMPLES / "hope.nl"), "--set", "dim=30"], "error[NL131]"),
])
def test_cli_compile_user_errors(argv, message, capsys):
    from nldsl import cli
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
