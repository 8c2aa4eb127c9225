"""Notebooks: what each value shows as (the reprs), the `%%nl` magic without a kernel,
and examples/notebooks/tour.ipynb executed on a local kernel (no network)."""
from __future__ import annotations

import html
import io
import re
import shutil
from pathlib import Path

import pytest

import nldsl
from nldsl import notebook
from nldsl.compiler import passes
from nldsl.compiler.backends import graphviz
from nldsl.compiler.driver import check
from nldsl.compiler.stats import level_rows, stats_table

ROOT = Path(__file__).resolve().parent.parent
HOPE = ROOT / "examples" / "hope.nl"
HAS_DOT = shutil.which("dot") is not None

TINY = """model tiny {
  vocab 64
  dim 16
  level fast every 4 tokens {
    memory M : linear(dim, init: zeros)
    flow k = proj(x)
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: 0.1)
    out M(proj(x))
  }
  level ffn outer { memory f : mlp(dim) }
  block { x = x + fast(rmsnorm(x)); x = x + ffn(rmsnorm(x)) }
  objective next_token
  optimizer adamw(lr: 3e-3)
}
"""


@pytest.fixture
def no_dot(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)


def text_of(fragment: str) -> str:
    """What HTML reads as: its tags dropped, its entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", fragment))


# ------------------------------------------------------------------ diagrams
def test_level_graph_shows_its_compact_diagram_as_svg_or_else_its_dot_text(monkeypatch):
    ir = nldsl.graph(HOPE)
    levels = graphviz.to_dot(ir, view="levels")
    assert str(ir.diagram()) == levels and str(ir.diagram("full")) == graphviz.to_dot(ir)
    if HAS_DOT:
        svg = ir._repr_svg_()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert "memories alpha, eta, k, mem, v" in text_of(svg) and "memory:titans" not in svg  # compact
        assert ir._repr_html_() is None  # the SVG shows, not both
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert ir._repr_svg_() is None
    shown = ir._repr_html_()
    assert "apt-get install graphviz" in shown
    (pre,) = re.findall(r"<pre>(.*)</pre>", shown, re.S)
    assert html.unescape(pre) == levels and "<" not in pre.replace("<pre>", "")  # escaped, whole


def test_compiled_model_shows_the_diagram_of_its_spec(no_dot):
    model = nldsl.compile(TINY)
    assert str(model.diagram()) == graphviz.to_dot(passes.run(check(TINY).models[0]), view="levels")
    assert model._repr_svg_() is None
    assert html.unescape(re.search(r"<pre>(.*)</pre>", model._repr_html_(), re.S).group(1)) == str(model.diagram())
    model.draw = None  # as a model written out by `nldsl compile` has: no spec, nothing to draw
    assert model.diagram() is None and model._repr_html_() is None and model._repr_svg_() is None


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's `dot` is not installed here")
def test_compiled_model_svg_names_its_levels():
    svg = nldsl.compile(TINY)._repr_svg_()
    assert "<svg" in svg and "fast" in text_of(svg) and "ffn" in text_of(svg)


# ------------------------------------------------------------------ specs
def test_spec_shows_its_text_highlighted_and_nothing_lost():
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    spec = nldsl.check(HOPE)
    assert spec.text == HOPE.read_text()
    shown = spec._repr_html_()
    try:
        get_lexer_by_name("nl")
    except ClassNotFound:
        pytest.skip("the `.nl` lexer is not registered with Pygments here (pip install -e .)")
    assert "<span" in shown  # coloured, inline, needing no stylesheet
    assert text_of(shown).strip().endswith(HOPE.read_text().strip())


def test_spec_without_a_lexer_shows_as_escaped_text(monkeypatch):
    import pygments.lexers
    from pygments.util import ClassNotFound

    def none(name):
        raise ClassNotFound(name)

    monkeypatch.setattr(pygments.lexers, "get_lexer_by_name", none)
    text = "# a < b & c\n" + TINY
    shown = nldsl.check(text)._repr_html_()
    assert shown == f"<pre>{html.escape(text)}</pre>"


def test_spec_text_is_not_in_its_repr_or_dump_and_a_spec_equals_itself():
    a, b = nldsl.check(TINY), nldsl.check(TINY)
    assert a == b and "text" not in a.model_dump() and TINY not in repr(a)


# ------------------------------------------------------------------ stats
def test_stats_prints_as_the_command_and_shows_the_same_cells_as_a_table(capsys):
    from nldsl import cli

    s = nldsl.stats(HOPE)
    assert cli.main(["stats", str(HOPE)]) == 0
    assert str(s) == repr(s) == capsys.readouterr().out.rstrip("\n") == stats_table(nldsl.graph(HOPE))
    assert s.rows == level_rows(s.ir) and s.totals["params"] == 955_016
    shown = s._repr_html_()
    # each printed table (the rows under a line of dashes) is an HTML table with the same cells
    lines = str(s).splitlines()
    printed = []
    for i, line in enumerate(lines):
        if set(line) <= {"-", " "} and line:
            rows = [re.split(r"\s{2,}", row.strip()) for row in lines[i + 1:]]
            printed.append(rows[:next(j for j, r in enumerate(rows + [[]]) if len(r) != len(rows[0]))])
    tables = [[[text_of(c) for c in re.findall(r"<td[^>]*>.*?</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", body)]
              for body in re.findall(r"<thead>.*?<tbody>(.*?)</tbody>", shown, re.S)]
    assert tables == printed and len(printed) == 1 + bool(s.tasks)
    assert len(printed[0]) == len(s.rows)
    assert "955,016" in text_of(shown) and "20.26G FLOPs" in text_of(shown)


def test_stats_of_an_optimizer_alone_has_no_totals():
    s = nldsl.stats(ROOT / "examples" / "optim" / "adamw.nl")
    assert s.totals is None and str(s).startswith("optimizer adamw")
    assert s._repr_html_().count("<table>") == 1


def test_graph_and_stats_say_when_nothing_is_named_so():
    with pytest.raises(ValueError, match="nothing named `nope`"):
        nldsl.stats(HOPE, name="nope")


# ------------------------------------------------------------------ %%nl
def test_magic_compiles_the_cell_and_binds_it():
    ns, err = {}, io.StringIO()
    model = notebook.run_cell("tiny context=32", TINY, ns, err)
    assert ns == {"tiny": model} and err.getvalue() == ""
    assert model.settings["context"] == 32 and model.settings["dim"] == 16
    assert notebook.run_cell("", TINY, ns, err) is not None and set(ns) == {"tiny"}  # no name: nothing bound


def test_magic_prints_located_diagnostics_and_binds_nothing():
    ns, err = {}, io.StringIO()
    bad = TINY.replace("ffn(rmsnorm(x))", "ffn(rmsnorm(y))")
    assert notebook.run_cell("broken", bad, ns, err) is None
    assert ns == {}
    out = err.getvalue()
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if "rmsnorm(y)" in text)
    col = bad.splitlines()[line - 1].index("y)") + 1
    assert f"<text>:{line}:{col}: error[NL100]: unknown name `y`" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("line, says", [("a b", "one name"), ("class", "not a Python name"),
                                        ("m dim=big", "`big` is not a number"),
                                        ('m "titans.rule=gd(lr: 1)', "No closing quotation")])
def test_magic_line_mistakes_are_one_line(line, says):
    err = io.StringIO()
    assert notebook.run_cell(line, TINY, {}, err) is None
    assert err.getvalue().startswith("error: ") and says in err.getvalue() and err.getvalue().count("\n") == 1


def test_magic_of_an_optimizer_alone_binds_its_level_graph():
    text = (ROOT / "examples" / "optim" / "adamw.nl").read_text()
    ns = {}
    ir = notebook.run_cell("opt", text, ns, io.StringIO())
    assert ns["opt"] is ir and not ir.is_model and str(ir.diagram()).startswith('digraph "adamw"')


def test_load_ipython_extension_registers_nl_which_binds_and_shows_the_diagram(monkeypatch):
    pytest.importorskip("IPython", reason="IPython is not installed (the `notebook` extra)")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)

    class Shell:  # what the extension uses of an IPython shell
        user_ns: dict = {}
        magics: dict = {}

        def register_magic_function(self, fn, magic_kind, magic_name):
            self.magics[magic_kind, magic_name] = fn

    shell = Shell()
    notebook.load_ipython_extension(shell)
    shell.magics["cell", "nl"]("tiny", TINY)
    (diagram,) = shown
    assert str(diagram) == str(shell.user_ns["tiny"].diagram())


# ------------------------------------------------------------------ the tour
def test_tour_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="the `notebook` extra is not installed (pip install -e '.[notebook]')")
    nbclient = pytest.importorskip("nbclient", reason="the `notebook` extra is not installed (pip install -e '.[notebook]')")
    pytest.importorskip("ipykernel", reason="the `notebook` extra is not installed (pip install -e '.[notebook]')")
    nb = nbformat.read(ROOT / "examples" / "notebooks" / "tour.ipynb", as_version=4)
    # the kernel is this interpreter; run from an empty folder: the specs come from nldsl's library
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {cell.source.split("\n")[0]: cell.outputs for cell in nb.cells if cell.cell_type == "code"}

    def data(first_line: str) -> dict:
        return {k: v for o in outputs[first_line] for k, v in o.get("data", {}).items()}

    diagram = "image/svg+xml" if HAS_DOT else "text/html"
    assert "<span" in data("import torch")["text/html"]  # the spec, highlighted
    assert diagram in data('hope = nldsl.graph("hope.nl")') and diagram in data('hope.diagram("full")')
    assert "<table>" in data('nldsl.stats("hope.nl")')["text/html"]
    assert diagram in data("%%nl tiny context=32")
    printed = "".join(o.get("text", "") for o in outputs["torch.manual_seed(0)"])
    assert "(4, 32, 64)" in printed
    assert diagram in data("tiny  # a compiled model shows its diagram")


def test_magic_line_takes_quoted_edits():
    name, settings = notebook.parse_line('m dim=32 "cms1=every 16 tokens" titans.rule=gd(lr:0.01)')
    assert (name, settings) == ("m", {"dim": 32, "cms1": "every 16 tokens", "titans.rule": "gd(lr:0.01)"})
