"""`nldsl compile -o model.py`: standalone source, byte-identical for the same input,
equal to the in-process module, safe whatever the spec names things and whatever
its file is called."""
from __future__ import annotations

import importlib.util
import math
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.fx as fx

import nldsl
from nldsl.compiler.backends.python import _literal, _Printer, _Source, emit
from nldsl.runtime.model import Level, Model

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


SPECS = Path(__file__).parent / "specs"
SIZES = dict(dim=16, heads=2, context=64, depth=2)
# every model of every example at small sizes, and the specs whose names collide with the emitted file's
CASES = [(f, m.name, SIZES) for f in sorted(EXAMPLES.glob("*.nl")) for m in nldsl.check(f).models]
CASES += [(SPECS / f, None, {}) for f in ("hostile_names.nl", "hostile_collisions.nl")]


@pytest.mark.parametrize("spec,name,sizes", CASES, ids=[name or spec.stem for spec, name, _ in CASES])
def test_emitted_model_equals_the_compiled_one(spec, name, sizes, tmp_path):
    torch.manual_seed(0)
    model = nldsl.compile(spec, name=name, **sizes)
    module = load_emitted(emit(model), tmp_path)
    torch.manual_seed(0)
    emitted = module.build()
    # same creation order: the same seed gives the same weights, under the same names
    a, b = model.state_dict(), emitted.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    # and trained weights load: other weights, replaced by the compiled module's
    torch.manual_seed(1)
    emitted = module.build()
    emitted.load_state_dict(model.state_dict(), strict=True)
    tokens = torch.randint(0, int(model.settings["vocab"]), (2, int(model.settings["context"]) + 6))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], model(tokens)[0], rtol=0, atol=0)


def test_emitted_classes_add_no_attribute_a_spec_name_could_meet(tmp_path):
    """`register` renames a parameter whose name the module already has (`step` ->
    `step_`); an attribute only the emitted class had (once `DESC`) renamed it there
    alone, and trained weights no longer loaded."""
    module = load_emitted(emit(nldsl.compile(SPECS / "hostile_collisions.nl")), tmp_path)
    classes = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    assert len(classes) == 6
    for cls in classes:
        base = Level if issubclass(cls, Level) else Model
        assert set(vars(cls)) <= set(dir(base)), cls


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
    torch.manual_seed(0)
    model = nldsl.compile(SPECS / "hostile_names.nl")
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


PAYLOAD = "__import__('pathlib').Path('MARK').touch()"
# file names that end a docstring or a comment, or make a docstring invalid, if copied as they are
HOSTILE_FILE_NAMES = {
    "triple-double-quotes": f'a"""+{PAYLOAD}+"""b.nl',
    "triple-single-quotes": f"a'''+{PAYLOAD}+'''b.nl",
    "newline": f"a\n        {PAYLOAD}\n        #b.nl",
    "carriage-return": f"a\r        {PAYLOAD}\r        #b.nl",
    "backslashes": "a\\N\\x\\.nl",
    "line-separators": "a\u2028b\u2029c\x85d.nl",
    "form-feed": "a\x0cb\x0bc\x1cd.nl",
    "undecodable-byte": os.fsdecode(b"a\xff.nl"),  # a lone surrogate: no UTF-8 file can hold it
}
# a spec whose comments hold a carriage return and other characters some reader takes for a line break
HOSTILE_LINES = f"""model m {{
  vocab 32
  dim 8
  context 16
  level L every 2 tokens {{
    memory M : linear(dim, init: normal)
    flow k = proj(x)  # a comment\r        {PAYLOAD}
    flow v = proj(x)  # \x0c \x0b \x1c \x85 \u2028 \u2029 \\ \"\"\"
    learn M : l2(k, v) by gd(lr: 0.1)
    out M(x)
  }}
  block {{ x = x + L(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}
"""


@pytest.mark.parametrize("file_name", HOSTILE_FILE_NAMES.values(), ids=HOSTILE_FILE_NAMES)
def test_file_names_and_lines_of_a_spec_cannot_inject(file_name, tmp_path, monkeypatch):
    spec = tmp_path / file_name
    spec.write_bytes(HOSTILE_LINES.encode())
    torch.manual_seed(0)
    model = nldsl.compile(spec)
    source = emit(model)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)  # where the payload would leave its mark
    module = load_emitted(source, tmp_path)
    emitted = module.build()
    emitted.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 32, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(emitted(tokens)[0], model(tokens)[0], rtol=0, atol=0)
    assert not (run / "MARK").exists()
    assert source.count("\n") == len(source.splitlines())  # no line break but \n: no \r, \f, U+2028, ...
    # each comment shows its line as the parser numbers them (a lone \r does not start one), escaped
    assert f":7  flow k = proj(x)  # a comment\\r        {PAYLOAD}\n" in source
    assert ':8  flow v = proj(x)  # \\x0c \\x0b \\x1c \\x85 \\u2028 \\u2029 \\\\ \\"\\"\\"\n' in source
    # the docstrings read back as the file's name (a byte that is not UTF-8 as its escape)
    shown = file_name.encode("utf-8", "backslashreplace").decode()
    assert module.__doc__.startswith(f"m: generated by `nldsl compile` from {shown}. Do not edit")
    assert module.LLevel.__doc__ == f"level L ({shown}:5)."


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 1e-300, 2**70, True, None, "a'\"\n\u2028",
                                   (1.5, -math.inf), (math.nan,), [1, math.inf], {"lr": math.inf, "k": (3,)}])
def test_literals_read_back(value):
    """`repr` writes non-finite floats as bare names (`nan`, `inf`): undefined in the emitted file."""
    assert repr(eval(_literal(value), {})) == repr(value)


def test_constants_of_a_graph_are_written_to_compute_the_same():
    """Non-finite constants where a graph holds them (arguments, keywords), and a negative
    one as an operand: `(-2.0) ** x`, not `-2.0 ** x`, which is `-(2.0 ** x)`."""
    g = fx.Graph()
    x = g.placeholder("x")
    low = g.call_method("clamp", (x,), {"min": -math.inf, "max": math.inf})
    g.output((g.call_function(operator.pow, (-2.0, low)), g.call_function(operator.mul, (low, -math.inf))))
    printer = _Printer(g, _Source())
    scope = {}
    exec(f"def f(self, {printer.params()}):\n" + "\n".join(printer.body("    ")), scope)
    t = torch.tensor([2.0, 3.0])
    # the reference runs the nodes one by one: torch.fx's own code writes `-2.0 ** x` too
    expected = fx.Interpreter(fx.GraphModule(torch.nn.Module(), g)).run(t)
    torch.testing.assert_close(scope["f"](None, t), expected)
    torch.testing.assert_close(expected, (torch.tensor([4.0, -8.0]), torch.tensor([-math.inf, -math.inf])))


def test_a_negative_constant_base_is_raised_as_written(tmp_path):
    """`(0 - 1) ** t` is 1 for t = 2, in the compiled module as in the emitted one (torch.fx's
    own code for a constant base reads `-1 ** t`, which is -(1 ** t))."""
    text = (EXAMPLES / "linear_attention.nl").read_text()
    power = text.replace("flow v = proj(x)", "flow v = proj(x) * BASE ** (proj(x) * 0 + 2)")
    models = []
    for base in ("(0 - 1)", "1"):
        torch.manual_seed(0)
        models.append(nldsl.compile(power.replace("BASE", base), dim=16, heads=2, depth=1))
    tokens = torch.randint(0, 256, (2, 24))
    emitted = load_emitted(emit(models[0]), tmp_path).build()
    emitted.load_state_dict(models[0].state_dict())
    with torch.no_grad():
        torch.testing.assert_close(models[0](tokens)[0], models[1](tokens)[0], rtol=0, atol=0)
        torch.testing.assert_close(emitted(tokens)[0], models[1](tokens)[0], rtol=0, atol=0)


def test_emitted_model_trains(tmp_path):
    module = load_emitted(emit(nldsl.compile(EXAMPLES / "titans.nl", dim=16, heads=2, context=32, depth=1)), tmp_path)
    model = module.build()
    tokens = torch.randint(0, 256, (2, 33))
    loss = model.loss(tokens)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# Loads an emitted file where the compiler cannot be imported, trains it a few steps with
# its own optimizer (`configure_optimizer`), and saves the weights.
STANDALONE = """
import importlib.abc
import importlib.util
import sys


class NoCompiler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "nldsl.compiler" or name.startswith("nldsl.compiler."):
            raise ModuleNotFoundError(f"{name} is refused: the emitted file must not need it")
        return None


sys.meta_path.insert(0, NoCompiler())
try:
    import nldsl.compiler
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("the compiler was importable")

import torch

emitted, weights, batches, out = sys.argv[1:]
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("emitted", emitted)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.build()
model.load_state_dict(torch.load(weights))
opt = model.configure_optimizer()
for tokens in torch.load(batches):
    opt.zero_grad()
    model.loss(tokens).backward()
    opt.step()
assert not [name for name in sys.modules if name.startswith("nldsl.compiler")]
torch.save(model.state_dict(), out)
"""

# two optimizers with memories of their own: elementwise moments and a slow level every
# 2 steps (m3), a coordinate-wise mlp memory drawn from the optimizer's seed (dmgd); the
# level `slow` is cross-sequence, stepped every 3 calls (test_optim.py)
TWO_OPTIMIZERS = """model tiny {
  vocab 16
  dim 8
  context 4
  batch 2
  level slow every 24 tokens { memory ffn : mlp(dim, hidden: 8) }
  block { x = x + slow(rmsnorm(x)) }
  objective next_token
  optimizer m3(lr: 1e-2, slow_every: 2) for matrices
  optimizer dmgd(lr: 1e-2) for rest
}
"""


@pytest.mark.parametrize("source,sizes,length", [
    (EXAMPLES / "hope.nl", dict(dim=16, heads=2, context=64, depth=1), 65),
    (TWO_OPTIMIZERS, {}, 5),
], ids=["hope", "m3-dmgd"])
def test_emitted_model_steps_its_optimizer_without_the_compiler(source, sizes, length, tmp_path, one_thread):
    """The emitted file carries its optimizers' steps (`OPTIMIZERS`): built where the
    compiler cannot be imported, it trains as the compiled model does, step for step."""
    torch.manual_seed(0)
    model = nldsl.compile(source, **sizes)
    (tmp_path / "emitted.py").write_text(emit(model))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, int(model.settings["vocab"]), (2, length), generator=gen) for _ in range(3)]
    torch.save(batches, tmp_path / "batches.pt")
    run = subprocess.run([sys.executable, "-c", STANDALONE] + [str(tmp_path / f) for f in
                         ("emitted.py", "weights.pt", "batches.pt", "trained.pt")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    opt = model.configure_optimizer()
    for tokens in batches:
        opt.zero_grad()
        model.loss(tokens).backward()
        opt.step()
    trained, initial = torch.load(tmp_path / "trained.pt"), torch.load(tmp_path / "weights.pt")
    assert list(trained) == list(model.state_dict())
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)  # the steps moved it
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)


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
