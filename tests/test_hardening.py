"""Hardening of the front end: where imports may lead, files that are not specs,
bounded reads, constants with no value, reserved names, long chains of flows,
overrides, look-alike digits; and the promise that ties them together: a spec that
checks clean compiles, runs a forward pass and takes a training step without
raising. The examples of docs/diagnostics.md are checked here too."""
from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nldsl
from nldsl import cli
from nldsl.compiler import fold, passes
from nldsl.compiler.backends.graphviz import to_dot
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler.driver import check, load
from nldsl.compiler.load import library_root
from nldsl.files import FileError, FileTooLarge, read_limited

from test_bad_input import GOOD  # a small model that checks clean

ROOT = Path(__file__).resolve().parent.parent

OPTIMIZER = "optimizer mine(lr = 1e-3) { update W -= lr * g }\n"


def diagnostics(source, /, **overrides) -> list:
    """What `check` reports (errors and warnings), [] when clean; nothing but NLError may escape."""
    try:
        check(source, **overrides)
    except NLError as e:
        assert e.diagnostics and all(re.fullmatch(r"NL\d{3}", d.code) for d in e.diagnostics)
        str(e)  # renders
        return e.diagnostics
    return []


def codes(source, /, **overrides) -> set[str]:
    return {d.code for d in diagnostics(source, **overrides) if d.severity == "error"}


def rendered(source) -> str:
    with pytest.raises(NLError) as e:
        check(source)
    return str(e.value)


def within(seconds: float, fn):
    """fn()'s result; fails instead of hanging if it takes longer (a blocking read)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # raised again in the caller
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second torch thread only waits for the first (and for the CPU
    others share), which made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ imports
@pytest.fixture
def tree(tmp_path, monkeypatch):
    """tmp/outside.nl and tmp/project/: the spec under test lives in the project."""
    (tmp_path / "outside.nl").write_text(OPTIMIZER)
    (tmp_path / "secret.txt").write_text("password: hunter2\n")
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "lib.nl").write_text(OPTIMIZER)
    monkeypatch.chdir(tmp_path)
    return project


def spec_importing(folder: Path, path: str, name: str = "spec.nl") -> Path:
    spec = folder / name
    spec.write_text(f'import "{path}"\n' + GOOD.replace("adam(", "mine("))
    return spec


def test_import_beside_and_below_the_spec(tree):
    (tree / "sub" / "deep.nl").write_text('import "../lib.nl"\n' + OPTIMIZER)  # back up to the spec's folder: allowed
    assert codes(spec_importing(tree, "lib.nl")) == set()
    assert codes(spec_importing(tree, "sub/../lib.nl")) == set()
    assert codes(spec_importing(tree, "sub/deep.nl")) == set()
    os.symlink(tree / "lib.nl", tree / "sub" / "link.nl")  # a link inside the folder
    assert codes(spec_importing(tree, "sub/link.nl")) == set()


@pytest.mark.parametrize("path, code", [
    ("/etc/passwd", "NL022"), ("/etc/hostname.nl", "NL022"), ("../outside.nl", "NL022"),
    ("sub/../../outside.nl", "NL022"), ("../secret.txt", "NL023"), ("lib.txt", "NL023"), ("C:/x.nl", "NL022"),
    ("../../../../../../../../etc/passwd", "NL023"),
])
def test_import_that_leaves_the_folder_or_is_no_spec(tree, path, code):
    (tree / "lib.txt").write_text("password: hunter2\n")
    spec = spec_importing(tree, path)
    assert codes(spec) == {code}
    text = rendered(spec)
    assert "hunter2" not in text and "root:x:" not in text
    assert "imports stay inside" in text or "only `.nl` files" in text


def test_import_of_a_nested_file_cannot_climb_above_the_spec(tree):
    (tree / "sub" / "up.nl").write_text('import "../../outside.nl"\n')
    assert codes(spec_importing(tree, "sub/up.nl")) == {"NL022"}


def test_import_through_links_that_leave(tree):
    os.symlink(tree.parent / "outside.nl", tree / "escape.nl")
    os.symlink(tree.parent, tree / "up")
    (tree / "notes.txt").write_text("password: hunter2\n")
    os.symlink(tree / "notes.txt", tree / "secret.nl")  # inside, but not a spec
    for path, code in [("escape.nl", "NL022"), ("up/outside.nl", "NL022"), ("secret.nl", "NL023")]:
        spec = spec_importing(tree, path)
        assert codes(spec) == {code}, path
        assert "hunter2" not in rendered(spec)


def test_text_spec_imports_from_the_current_directory_and_the_library(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert codes('import "lib.nl"\n' + GOOD.replace("adam(", "mine(")) == set()
    assert codes('import "optim/adamw.nl"\n' + GOOD) == set()
    assert codes('import "../outside.nl"\n' + GOOD) == {"NL022"}


def test_root_file_that_is_not_a_spec_is_never_quoted(tree):
    for name, code in [("secret.txt", "NL011"), ("passwd", "NL011"), ("notes", "NL010"), ("half", "NL012")]:
        path = tree.parent / name
        path.write_text({"NL011": "zebra:x:0:0:hunter2:/home/zebra:/bin/sh\n", "NL010": "\n$ zebra hunter2",
                         "NL012": "model zebra { hunter2"}[code])
        (d,) = diagnostics(path)
        assert d.code == code and d.span.line in (1, 2)
        text = rendered(path)
        assert "hunter2" not in text and "zebra" not in text, text
    spec = tree.parent / "spec.nl"  # a spec is quoted as ever
    spec.write_text("zebra hunter2")
    assert "zebra hunter2" in rendered(spec)


def test_fmt_never_quotes_a_file_that_is_not_a_spec(tree, capsys):
    from nldsl import cli
    secret = tree.parent / "secret.txt"
    secret.write_text("zebra:x:0:0:hunter2:/home/zebra:/bin/sh\n")
    assert cli.main(["fmt", "--check", str(secret)]) == 1
    out, err = capsys.readouterr()
    assert "NL011" in err and "hunter2" not in out + err and "zebra" not in out + err, err


def test_special_files_are_refused_without_blocking(tree):
    fifo = tree / "fifo.nl"
    os.mkfifo(fifo)
    (d,) = within(20, lambda: diagnostics(fifo))
    assert d.code == "NL001" and "FIFO" in d.message
    (d,) = within(20, lambda: diagnostics(spec_importing(tree, "fifo.nl")))
    assert d.code == "NL001" and "FIFO" in d.message and d.span.line == 1
    (d,) = within(20, lambda: diagnostics(Path("/dev/zero")))
    assert d.code == "NL001" and "character device" in d.message
    (d,) = diagnostics(tree)
    assert d.code == "NL001" and "folder" in d.message


def test_read_limited_reads_at_most_one_byte_past_the_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_limited(path, 100) == b"x" * 100
    with pytest.raises(FileTooLarge) as e:
        read_limited(path, 99)
    assert e.value.size == 100 and "100 bytes" in str(e.value)
    status = Path("/proc/self/status")
    if status.exists() and status.stat().st_size == 0:  # the file system reports 0 bytes
        assert b"Name" in read_limited(status, 1 << 20)
        with pytest.raises(FileTooLarge) as e:
            read_limited(status, 10)
        assert e.value.size is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="FIFO"):
        within(20, lambda: read_limited(fifo, 10))


# ------------------------------------------------------------------ the library from anywhere
def test_library_specs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [o.name for o in check("optim/adam.nl").optimizers] == ["adam"]
    assert load("optim/adamw.nl").root == "optim/adamw.nl"
    opt = nldsl.compile_optimizer("optim/adamw.nl", [torch.nn.Parameter(torch.ones(2, 2))])
    assert isinstance(opt, torch.optim.Optimizer)
    (d,) = diagnostics("optim/nope.nl")
    assert d.code == "NL001" and str(tmp_path) in d.help and str(library_root()) in d.help
    (tmp_path / "optim").mkdir()
    (tmp_path / "optim" / "adam.nl").write_text(OPTIMIZER)  # the current directory comes first
    assert [o.name for o in check("optim/adam.nl").optimizers] == ["mine"]


def test_the_readmes_python_example_runs_from_any_directory(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["logits"].shape == (2, 128, 256) and isinstance(scope["adam"], torch.optim.Optimizer)


# ------------------------------------------------------------------ constants
@pytest.mark.parametrize("expr, message", [
    ("exp(1000)", "out of range"), ("exp(100)", "out of range"), ("sqrt(0 - 1)", "square root"),
    ("exp(709) * exp(709) - exp(709) * exp(709)", "out of range"), ("1 / 0", "divides by zero"),
    ("0 ** -1", "divides by zero"), ("2 ** 2000", "out of range"), ("(0 - 8) ** 0.5", "fractional power"),
    ("softplus(1e18) * 10", "out of range"), ("max(1e18, 1) + 1e18", "out of range"), ("select(1, 1 / 0, 1)", "zero"),
])
@pytest.mark.parametrize("where", ["flow", "rate", "option", "setting", "learned", "eps"])
def test_constants_without_a_value_are_located(expr, message, where):
    text = {"flow": GOOD.replace("flow v = proj(x)", f"flow v = proj(x) * ({expr})"),
            "rate": GOOD.replace("lr: 0.1", f"lr: sigmoid({expr})"),
            "option": GOOD.replace("adam(lr: 1e-3", f"adam(lr: {expr}"),
            "setting": GOOD.replace("dim 64", f"dim 64\n  scale {expr}"),
            "learned": GOOD.replace("x = x + mem(h)", f"x = x + mem(h) * learned({expr})"),
            "eps": GOOD.replace("h = rmsnorm(x)", f"h = rmsnorm(x, eps: {expr})")}[where]
    found = [d for d in diagnostics(text) if d.severity == "error"]
    assert {d.code for d in found} == {"NL160"}, found
    d = found[0]
    assert message in d.message
    line = text.split("\n")[d.span.line - 1]
    assert line[d.span.col - 1:d.span.end_col - 1] in expr  # the part with no value, not the whole line


@pytest.mark.parametrize("expr", ["proj(x) / 0", "proj(x) / (dim - dim)", "x / sign(0)", "proj(x) / 1e-400",
                                  "proj(x) / (1 / 1e18 / 1e18)", "proj(x) / 1e-19"])
def test_division_by_a_constant_zero_or_nearly(expr):
    (d,) = [d for d in diagnostics(GOOD.replace("flow v = proj(x)", f"flow v = {expr}")) if d.severity == "error"]
    assert (d.code, d.span.line, d.span.col) == ("NL160", 7, 14) and "divides by" in d.message
    assert codes(GOOD.replace("flow v = proj(x)", "flow v = proj(x) / 1e-18")) == set()


def test_folding_is_one_function():
    """The checker accepts what the backend computes, with the same values."""
    assert fold.apply("sigmoid", -1000) == 0.0 and fold.apply("softplus", 1000) == 1000
    assert fold.apply("**", 2, 10) == 1024 and isinstance(fold.apply("**", 2, 10), int)
    model = nldsl.compile(GOOD.replace("lr: 0.1", "lr: 0.2 * sigmoid(-1000) + 0.1 * exp(0)"), dim=16, context=16)
    rates = [n for lv in model.levels() for n in lv.step.graph.nodes if n.op == "call_method" and n.target == "learn"]
    assert rates and all(n.kwargs["lr"] == pytest.approx(0.1) for n in rates)


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["self", "true", "false"])
@pytest.mark.parametrize("position", ["block variable", "level", "flow", "memory", "setting", "hyperparameter"])
def test_words_of_the_language_cannot_name_things(name, position):
    text = {"block variable": GOOD.replace("h = rmsnorm(x)\n    x = x + mem(h)", f"{name} = rmsnorm(x)\n    x = x + mem({name})"),
            "level": GOOD.replace("level mem", f"level {name}").replace("mem(h)", f"{name}(h)"),
            "flow": GOOD.replace("flow v = proj(x)", f"flow {name} = proj(x)\n    flow v = {name}"),
            "memory": GOOD.replace("memory f :", f"memory {name} :"),
            "setting": GOOD.replace("dim 64", f"dim 64\n  {name} 2"),
            "hyperparameter": GOOD + f"optimizer o({name} = 1) {{ update W -= g }}\n"}[position]
    assert "NL102" in codes(text)


# ------------------------------------------------------------------ long chains of flows
def reversed_flows(n: int) -> str:
    """A level whose n flows each read the next one, written in reverse order."""
    flows = "\n".join(f"    flow f{i} = f{i + 1} * 0.5 + 1" for i in range(n))
    return GOOD.replace("flow k = l2norm(proj(x))", f"{flows}\n    flow f{n} = proj(x)\n    flow k = l2norm(f0)")


def test_two_thousand_flows_in_reverse_order_check_and_compile():
    text = reversed_flows(2000)
    (spec,) = check(text).models
    assert to_dot(passes.run(spec)).startswith("digraph")
    model = nldsl.compile(text, dim=16, context=16)
    logits, _ = model(torch.randint(0, 256, (1, 16)))
    assert logits.shape == (1, 16, 256) and torch.isfinite(logits).all()


def test_flows_that_meet_again_are_followed_once():
    """f0 reads f1 twice over (through g0 and h0), f1 reads f2 twice over, ...: 2⁴⁰ paths."""
    flows = "\n".join(f"    flow f{i} = g{i} + h{i}\n    flow g{i} = f{i + 1}\n    flow h{i} = f{i + 1} * 2"
                      for i in range(40))
    text = GOOD.replace("flow k = l2norm(proj(x))", f"{flows}\n    flow f40 = proj(x)\n    flow k = l2norm(f0)")
    (spec,) = check(text).models
    label = passes.run(spec).graph.edges["input:x", "memory:mem.M"]["label"]  # the flows between
    assert {"f0", "g39", "h39", "f40", "k", "x"} <= set(label.split(", "))
    assert runs(text) == "ran"


def test_optimizer_flows_in_reverse_order():
    flows = "\n".join(f"  flow f{i} = f{i + 1} * 1" for i in range(1000))
    text = f"optimizer o(lr = 1e-3) {{\n{flows}\n  flow f1000 = g\n  update W -= lr * f0\n}}\n"
    W = torch.nn.Parameter(torch.ones(3))
    opt = nldsl.compile_optimizer(text, [W])
    W.grad = torch.ones(3)
    opt.step()
    assert torch.isfinite(W).all() and (W < 1).all()


# ------------------------------------------------------------------ overrides
def test_overrides_must_name_a_setting():
    (d,) = [d for d in diagnostics(GOOD, dims=32) if d.severity == "error"]
    assert (d.code, d.help) == ("NL124", "did you mean `dim`?") and d.span.line == 1
    with pytest.raises(NLError, match="NL124"):
        nldsl.compile(GOOD, dims=32)
    assert codes(GOOD, batch=4, context=32) == set()  # known settings the spec leaves to their defaults
    assert codes(GOOD.replace("dim 64", "dim 64\n  width 2"), width=3) == set()  # one the spec writes
    assert codes(GOOD, scale=1e300) == {"NL124"}
    assert codes(GOOD.replace("dim 64", "dim 64\n  scale 1"), scale=1e300) == {"NL160"}
    assert codes(OPTIMIZER, lr=1.0) == {"NL124"}  # no model: no setting at all


def test_overrides_named_like_parameters_are_overrides():
    assert codes(GOOD, report=1) == {"NL124"}
    assert codes(GOOD, source="x") == {"NL124"}
    with pytest.raises(TypeError):
        load(GOOD, report=None)


# ------------------------------------------------------------------ digits
@pytest.mark.parametrize("digits", ["６４", "٦٤", "۶۴", "६४"])
def test_look_alike_digits_are_not_numbers(digits):
    (d,) = diagnostics(GOOD.replace("dim 64", f"dim {digits}"))
    assert (d.code, d.span.line, d.span.col) == ("NL010", 3, 7)
    assert d.help == "numbers are written with the digits 0-9: write `64`"


# ------------------------------------------------------------------ the examples of the docs
DOC = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
DOC_CASES = re.findall(r"<!-- check: expect (NL\d{3}) -->\n```nl\n(.*?)```\n\n```console\n\$ nldsl check spec\.nl\n(.*?)```",
                       DOC, re.S)


def test_every_marked_example_is_read():
    assert len(DOC_CASES) == DOC.count("<!-- check: expect") >= 35


@pytest.mark.parametrize("code, text, console", DOC_CASES, ids=[c[0] for c in DOC_CASES])
def test_documented_example_prints_what_the_docs_show(tmp_path, monkeypatch, code, text, console):
    (tmp_path / "spec.nl").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        cli.main(["check", "spec.nl"])
    assert f"[{code}]" in err.getvalue()
    got = err.getvalue().replace(str(tmp_path), "/path/to").replace(str(library_root()), "/…/nldsl/examples")
    shown = [line for line in console.splitlines() if not line.startswith("spec.nl: ok")]
    assert got.splitlines() == shown
    assert out.getvalue().splitlines() == [line for line in console.splitlines() if line.startswith("spec.nl: ok")]


# ------------------------------------------------------------------ a clean check means it runs
def runs(text: str) -> str:
    """Check `text`; if clean, compile it small, run a forward pass and a training
    step. Returns "error" or "ran"; anything raised after a clean check fails."""
    try:
        check(text, dim=16, context=16)
    except NLError:
        return "error"
    torch.manual_seed(0)
    model = nldsl.compile(text, dim=16, context=16)
    opt = model.configure_optimizer()
    tokens = torch.randint(0, int(model.settings["vocab"]), (2, 17))
    with torch.no_grad():
        model(tokens[:, :-1])
    loss = model.loss(tokens)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    return "ran"


NUMBERS = ["0", "1", "2", "0.5", "1e-3", "709", "1000", "1e18", "1e-400", "dim", "heads"]
FUNCTIONS = ["exp", "sqrt", "softplus", "sigmoid", "silu", "gelu", "tanh", "abs", "sign", "relu"]


@st.composite
def constant(draw, depth: int = 3) -> str:
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NUMBERS))
    kind = draw(st.sampled_from(["op", "op", "call", "neg", "pair"]))
    a = draw(constant(depth - 1))
    if kind == "op":
        return f"({a} {draw(st.sampled_from(['+', '-', '*', '/', '**']))} {draw(constant(depth - 1))})"
    if kind == "call":
        return f"{draw(st.sampled_from(FUNCTIONS))}({a})"
    if kind == "neg":
        return f"-{a}"
    return f"{draw(st.sampled_from(['max', 'min']))}({a}, {draw(constant(depth - 1))})"


# places where any value in range keeps a model finite: normalised, squashed or tiny
CONSTANT_PLACES = [
    lambda c: GOOD.replace("flow k = l2norm(proj(x))", f"flow k = l2norm(proj(x) * {c})"),
    lambda c: GOOD.replace("lr: 0.1", f"lr: sigmoid({c})"),
    lambda c: GOOD.replace("adam(lr: 1e-3", f"adam(lr: 1e-3 * sigmoid({c})"),
    lambda c: GOOD.replace("x = x + mem(h)", f"x = x + mem(h) * tanh(learned({c}))"),
    lambda c: GOOD.replace("dim 64", f"dim 64\n  scale {c}").replace("h = rmsnorm(x)", "h = rmsnorm(x * sigmoid(scale))"),
]
NAMES = ["self", "true", "false", "graph", "code", "meta", "forward", "training", "st", "tokens", "x", "g", "W",
         "step", "embed", "norm", "head", "logits", "getattr", "torch", "print", "type", "ops", "scan", "recompile",
         "to_folder", "shape_env", "_code", "state", "read", "learn", "conv", "rates", "mem_0", "exp", "max"]
NAME_PLACES = [
    lambda n: GOOD.replace("h = rmsnorm(x)\n    x = x + mem(h)", f"{n} = rmsnorm(x)\n    x = x + mem({n})"),
    lambda n: GOOD.replace("level mem", f"level {n}").replace("mem(h)", f"{n}(h)"),
    lambda n: GOOD.replace("flow v = proj(x)", f"flow {n} = proj(x)\n    flow v = {n} * 2"),
    lambda n: GOOD.replace("memory M", f"memory {n}").replace("learn M", f"learn {n}").replace("out M(k)", f"out {n}(k)"),
    lambda n: GOOD.replace("vocab 256", f"vocab 256\n  {n} 2").replace("2 * dim", f"{n} * dim"),
    lambda n: GOOD.replace("model m", f"model {n}"),
    lambda n: GOOD.replace("adam(lr: 1e-3)", "o(lr: 1e-3)")
    + f"optimizer o(lr = 1, {n} = 0.5) {{\n  level {n} every 1 step {{ memory {n}_m : elementwise\n"
      f"    learn {n}_m : dot(g) by gd(lr: 1 - {n}, decay: {n}) }}\n  flow {n}_u = {n}_m * {n}\n"
      f"  update W -= lr * 1e-3 * {n}_u\n}}\n",
]
LENGTHS = [1, 2, 30, 200]

CATEGORIES = st.one_of(
    st.tuples(st.sampled_from(CONSTANT_PLACES), constant()).map(lambda t: t[0](t[1])),
    st.tuples(st.sampled_from(NAME_PLACES), st.sampled_from(NAMES)).map(lambda t: t[0](t[1])),
    st.sampled_from(LENGTHS).map(reversed_flows),
)
QUICK = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(max_examples=60, **QUICK)
@given(CATEGORIES)
def test_clean_check_means_it_runs(text):
    runs(text)


def test_every_reserved_name_in_every_place_checks_or_runs():
    """Not a sample: names the backend and the runtime might take for their own."""
    for place in NAME_PLACES:
        for n in ("self", "graph", "code", "meta", "st", "tokens", "getattr"):
            runs(place(n))


def test_generated_specs_that_check_clean_run():
    from test_fuzz import model_text  # the fuzzer's generator of specs that parse

    @settings(max_examples=25, **QUICK)
    @given(model_text())
    def run(text):
        runs(text)

    run()
