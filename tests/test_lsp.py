"""`nldsl lsp`: the language server, driven through the protocol over stdio.

One server process (`python -m nldsl lsp`) for the module, talked to by pygls's
LanguageClient on an event loop of its own; each test opens its own document. What
the server answers is held to what the compiler says without it: `nldsl check`'s
diagnostics, `nldsl fmt`'s text, `nldsl stats`' costs, the vocabulary's rows.
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pygls.lsp.server")  # pygls 2 (the `lsp` extra)
from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402
from pygls.uris import from_fs_path  # noqa: E402

from nldsl.cli import main  # noqa: E402
from nldsl.compiler import passes  # noqa: E402
from nldsl.compiler.driver import check  # noqa: E402
from nldsl.compiler.format import format_text  # noqa: E402
from nldsl.compiler.load import library_root  # noqa: E402
from nldsl.vocab import FUNCTIONS, MEMORY_KINDS, SIZES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60

# A model with one mistake (`M2` is no memory) and an optimizer imported from a file beside it.
BROKEN = """\
import "opt.nl"

model small {
  vocab 64
  dim 32
  heads 2
  context 64
  batch 2

  level fast every 8 tokens {
    memory M : linear(dim, heads: heads)
    flow k = l2norm(proj(x), heads: heads)
    learn M : l2(k, proj(x)) by gd(lr: 0.1)
    out M2(k)
  }
  level ffn outer { memory f : mlp(dim, hidden: 2 * dim) }

  block repeat 2 {
    x = x + fast(rmsnorm(x))
    x = x + ffn(rmsnorm(x))
  }
  objective next_token
  optimizer mysgd(lr: 0.01)
}
"""
FIXED = BROKEN.replace("out M2(k)", "out M(k)")
OPT = """\
optimizer mysgd(lr = 0.1) {
  update W -= lr * g
}
"""


class Session:
    """A LanguageClient on its own event loop thread, talking to one server process."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.diagnostics: dict[str, list[types.PublishDiagnosticsParams]] = {}
        self.arrived = threading.Condition()
        self.client = self.run(self._client())

    async def _client(self) -> LanguageClient:
        client = LanguageClient("nldsl-tests", "0")

        @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def published(params: types.PublishDiagnosticsParams):
            with self.arrived:
                self.diagnostics.setdefault(params.uri, []).append(params)
                self.arrived.notify_all()

        await client.start_io(sys.executable, "-m", "nldsl", "lsp", cwd=str(self.cwd))
        return client

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def initialize(self, folder: Path):
        return self.run(self.client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(folder)))))

    def notify(self, method, params) -> None:
        self.loop.call_soon_threadsafe(method, params)

    def published(self, uri: str, version: int | None) -> list[types.Diagnostic]:
        """The diagnostics the server published for `uri` at `version` (waiting for them)."""
        def found():
            return next((p for p in self.diagnostics.get(uri, []) if p.version == version), None)
        with self.arrived:
            assert self.arrived.wait_for(found, TIMEOUT), f"no diagnostics for {uri} version {version}"
            return list(found().diagnostics)

    def open(self, path: Path | str, text: str, version: int = 1) -> str:
        uri = from_fs_path(str(path)) if isinstance(path, Path) else path
        self.notify(self.client.text_document_did_open, types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="nl", version=version, text=text)))
        return uri

    def change(self, uri: str, text: str, version: int) -> None:
        self.notify(self.client.text_document_did_change, types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))

    def close(self) -> None:
        try:
            self.run(self.client.shutdown_async(None))
            self.client.exit(None)
            self.run(self.client.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("specs").resolve()
    (folder / "opt.nl").write_text(OPT)
    return folder


@pytest.fixture(scope="module")
def lsp(folder):
    session = Session(cwd=folder)  # an untitled buffer must not find `opt.nl` there
    try:
        result = session.initialize(folder)
        caps = result.capabilities
        assert caps.hover_provider and caps.definition_provider and caps.document_formatting_provider
        assert caps.document_symbol_provider and caps.completion_provider
        session.notify(session.client.initialized, types.InitializedParams())
        yield session
    finally:
        session.close()


def at(text: str, needle: str, offset: int = 0) -> types.Position:
    """The position `offset` characters into the first occurrence of `needle`."""
    i = text.index(needle) + offset
    line = text.count("\n", 0, i)
    return types.Position(line=line, character=i - (text.rfind("\n", 0, i) + 1))


def doc(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


def hover(lsp, uri, pos) -> str:
    h = lsp.run(lsp.client.text_document_hover_async(types.HoverParams(text_document=doc(uri), position=pos)))
    assert h is not None
    return h.contents.value


def definition(lsp, uri, pos) -> types.Location:
    d = lsp.run(lsp.client.text_document_definition_async(types.DefinitionParams(text_document=doc(uri),
                                                                                 position=pos)))
    assert isinstance(d, types.Location), d
    return d


def check_json(path: Path, capsys) -> list[dict]:
    """`nldsl check --error-format json`'s diagnostics, from the command's own code."""
    capsys.readouterr()
    main(["check", "--error-format", "json", str(path)])
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ diagnostics
def test_diagnostics_are_nldsl_checks_and_clear_when_fixed(lsp, folder, capsys):
    path = folder / "small.nl"
    path.write_text(BROKEN)  # the file as saved: what `nldsl check` sees
    expected = [d for d in check_json(path, capsys) if d["severity"] == "error"]
    assert [d["code"] for d in expected] == ["NL116"]  # `M2` is no memory (nor function)

    uri = lsp.open(path, BROKEN)
    got = lsp.published(uri, 1)
    errors = [d for d in got if d.severity == types.DiagnosticSeverity.Error]
    assert len(errors) == len(expected)
    for d, e in zip(errors, expected):
        assert d.code == e["code"] and d.source == "nldsl"
        assert d.message.split("\nhelp: ")[0] == e["message"]
        assert (d.range.start.line, d.range.start.character) == (e["line"] - 1, e["col"] - 1)
        assert (d.range.end.line, d.range.end.character) == (e["end_line"] - 1, e["end_col"] - 1)
        assert e.get("help") is None or d.message.endswith("help: " + e["help"])
    # the buffer is checked, not the file: fixing it in the editor clears the error
    lsp.change(uri, FIXED, 2)
    assert [d for d in lsp.published(uri, 2) if d.severity == types.DiagnosticSeverity.Error] == []


def test_warnings_are_warnings(lsp, folder, capsys):
    text = FIXED.replace("  level ffn outer", "  level unused outer { memory u : mlp(dim) }\n  level ffn outer")
    path = folder / "warned.nl"
    path.write_text(text)
    expected = check_json(path, capsys)
    assert [d["code"] for d in expected] == ["NL155"]  # a level no block uses
    got = lsp.published(lsp.open(path, text), 1)
    assert [(d.code, d.severity, d.range.start.line) for d in got] == \
        [("NL155", types.DiagnosticSeverity.Warning, expected[0]["line"] - 1)]


def test_syntax_error_and_a_buffer_that_is_no_file(lsp, folder):
    # a buffer without a file sees only the library: not `opt.nl` in the server's current directory
    uri = lsp.open("untitled:Untitled-1", BROKEN)
    got = lsp.published(uri, 1)
    assert [d.code for d in got] == ["NL020"] and '"opt.nl"' in got[0].message
    assert got[0].range.start == types.Position(line=0, character=0)
    # a syntax error: the parser's diagnostic, and still an outline from the braces
    broken = FIXED.replace("flow k = l2norm", "flow k = = l2norm")
    lsp.change(uri, broken, 2)
    got = lsp.published(uri, 2)
    (d,) = got
    assert d.code == "NL011" and d.range.start == at(broken, "= l2norm")
    symbols = lsp.run(lsp.client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=doc(uri))))
    assert [s.name for s in symbols] == ["small"]
    assert [s.name for s in symbols[0].children] == ["fast", "ffn"]
    assert [s.name for s in symbols[0].children[0].children] == ["M"]
    # formatting refuses a text that does not parse
    edits = lsp.run(lsp.client.text_document_formatting_async(types.DocumentFormattingParams(
        text_document=doc(uri), options=types.FormattingOptions(tab_size=2, insert_spaces=True))))
    assert list(edits) == []


# ------------------------------------------------------------------ hover
@pytest.fixture(scope="module")
def titans(lsp):
    path = ROOT / "examples" / "titans.nl"
    text = path.read_text()
    uri = lsp.open(path, text)
    assert lsp.published(uri, 1) == []
    return uri, text


def test_hover_on_a_level_shows_its_period_tier_and_costs(lsp, titans):
    uri, text = titans
    ir = passes.build(check(ROOT / "examples" / "titans.nl").models[0])
    for name, fn in passes.PASSES[:3]:  # tiers and costs, as `nldsl stats` and `nldsl ir --levels` have them
        assert name in ("derive_tiers", "nest_tiers", "annotate_costs")
        ir = fn(ir)
    d = ir.graph.nodes["level:titans"]
    tier = next(i for i, t in enumerate(ir.tiers) if "level:titans" in t["nodes"]) + 1
    for pos in (at(text, "level titans", 7), at(text, "titans(rmsnorm", 2)):  # its declaration, and a use
        shown = hover(lsp, uri, pos)
        assert "level titans every 16 tokens" in shown
        assert f"tier {tier} of {len(ir.tiers)}" in shown
        assert f"outer parameters: {d['params']:,}" in shown
        assert f"inner state per sequence: {d['state']:,} numbers" in shown


def test_hover_on_a_memory_shows_its_shape_and_rule(lsp, titans):
    uri, text = titans
    m = check(ROOT / "examples" / "titans.nl").models[0].level("titans").memories[0]
    shown = hover(lsp, uri, at(text, "out proj(M(q))", 9))
    assert "memory M : mlp(dim, hidden: 2 * dim, residual, heads: heads)" in shown
    assert ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in m.state_shapes().items()) in shown
    assert f"{m.state_numel:,} numbers" in shown
    assert "learns l2(k, v) by momentum(lr: lr, beta: surprise_decay, decay: keep)" in shown


def test_hover_on_builtin_words_reads_the_vocabulary(lsp, titans):
    uri, text = titans
    shown = hover(lsp, uri, at(text, "l2norm(proj", 1))
    f = FUNCTIONS["l2norm"]
    assert "l2norm(a, heads: …)" in shown and SIZES[f.size] in shown
    shown = hover(lsp, uri, at(text, "mlp(dim, hidden: 2", 1))
    assert all(o in shown for o in MEMORY_KINDS["mlp"].options) and "memory kind" in shown
    assert "update rule" in hover(lsp, uri, at(text, "momentum(lr", 3))


# ------------------------------------------------------------------ definition
def test_definition_of_levels_memories_flows_and_optimizers(lsp, folder):
    path = folder / "defs.nl"
    uri = lsp.open(path, FIXED)
    lsp.published(uri, 1)
    for use, decl in (("fast(rmsnorm", "level fast"), ("M(k)", "memory M"), ("k, proj(x))", "flow k"),
                      ("heads: heads)\n    flow", "heads 2")):
        loc = definition(lsp, uri, at(FIXED, use, 0 if not use.startswith("heads") else 7))
        name = use.split("(")[0].split(",")[0].split(":")[0]
        start = at(FIXED, decl, len(decl) - len(decl.split()[-1]) if not decl.startswith("heads") else 0)
        assert loc.uri == uri and loc.range.start == start, use
        assert loc.range.end.character - loc.range.start.character == len(name)
    # an optimizer imported from a file beside the document
    loc = definition(lsp, uri, at(FIXED, "mysgd", 1))
    assert loc.uri == from_fs_path(str(folder / "opt.nl"))
    assert loc.range.start == at(OPT, "mysgd")
    # and one of the library, used by name alone
    text = FIXED.replace("optimizer mysgd(lr: 0.01)", "optimizer adamw(lr: 3e-3)")
    lsp.change(uri, text, 2)
    assert lsp.published(uri, 2) == []
    loc = definition(lsp, uri, at(text, "adamw", 2))
    adamw = library_root() / "optim" / "adamw.nl"
    assert loc.uri == from_fs_path(str(adamw.resolve()))
    assert loc.range.start == at(adamw.read_text(), "optimizer adamw", len("optimizer "))


# ------------------------------------------------------------------ completion, formatting, symbols
def labels(lsp, uri, pos) -> set[str]:
    result = lsp.run(lsp.client.text_document_completion_async(types.CompletionParams(text_document=doc(uri),
                                                                                      position=pos)))
    items = result.items if isinstance(result, types.CompletionList) else result
    return {i.label for i in items}


def test_completion(lsp, folder):
    # while typing a memory's kind, the text does not parse: the kinds a model may use
    text = FIXED.replace("memory M : linear(dim, heads: heads)", "memory M : ")
    uri = lsp.open(folder / "complete.nl", FIXED)
    lsp.published(uri, 1)
    lsp.change(uri, text, 2)
    lsp.published(uri, 2)
    assert labels(lsp, uri, at(text, "memory M : ", len("memory M : "))) == \
        {k.name for k in MEMORY_KINDS.values() if k.model}
    # the options of a kind, and the names in scope where a value goes
    got = labels(lsp, uri, at(FIXED, "mlp(dim, hidden", len("mlp(")))
    assert set(MEMORY_KINDS["mlp"].options) <= got
    got = labels(lsp, uri, at(FIXED, "l2norm(proj(x)", len("l2norm(")))
    assert {"heads", "dim", "x", "proj", "M", "k"} <= got


def test_formatting_is_nldsl_fmt(lsp, folder):
    messy = "model   tiny{vocab 64\ndim 32 ;  level f outer {memory m:mlp(dim)}\n\n\n block {x=x+f(x)}" \
            "\nobjective next_token\noptimizer adamw(lr:1e-3)}\n"
    path = folder / "messy.nl"
    path.write_text(messy)
    assert main(["fmt", str(path)]) == 0
    formatted = path.read_text()
    assert formatted != messy and formatted == format_text(messy)
    uri = lsp.open(path, messy)
    lsp.published(uri, 1)
    (edit,) = lsp.run(lsp.client.text_document_formatting_async(types.DocumentFormattingParams(
        text_document=doc(uri), options=types.FormattingOptions(tab_size=2, insert_spaces=True))))
    lines = messy.split("\n")
    assert edit.range == types.Range(start=types.Position(line=0, character=0),
                                     end=types.Position(line=len(lines) - 1, character=len(lines[-1])))
    assert edit.new_text == formatted


def test_document_symbols_outline_levels_and_memories(lsp, titans):
    uri, text = titans
    symbols = lsp.run(lsp.client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=doc(uri))))
    (model,) = symbols
    assert model.name == "titans" and model.kind == types.SymbolKind.Class
    levels = [s for s in model.children if s.kind == types.SymbolKind.Namespace]
    assert [(s.name, s.detail) for s in levels] == [("titans", "every 16 tokens"), ("ffn", "outer")]
    assert [s.name for s in levels[0].children if s.kind == types.SymbolKind.Field] == ["M"]
    assert levels[0].selection_range.start == at(text, "level titans", len("level "))
    assert {s.name for s in model.children if s.kind == types.SymbolKind.Constant} == \
        {"vocab", "dim", "heads", "depth", "context"}


def test_requests_on_nonsense_answer_empty(lsp):
    uri = lsp.open("untitled:nonsense", "\x00{{{ model )")
    assert [d.code for d in lsp.published(uri, 1)] == ["NL001"]
    pos = types.Position(line=0, character=3)
    assert lsp.run(lsp.client.text_document_hover_async(types.HoverParams(text_document=doc(uri), position=pos))) \
        is None
    assert lsp.run(lsp.client.text_document_definition_async(
        types.DefinitionParams(text_document=doc(uri), position=pos))) is None
    labels(lsp, uri, types.Position(line=5, character=40))  # past the end: answered, not failed


def test_a_mistake_inside_an_import_shows_at_the_import(lsp, folder):
    (folder / "bad_opt.nl").write_text(OPT.replace("lr * g", "lr * gg"))
    text = FIXED.replace('import "opt.nl"', 'import "bad_opt.nl"')
    uri = lsp.open(folder / "imports_bad.nl", text)
    (d,) = lsp.published(uri, 1)
    assert d.code == "NL100" and d.range.start == types.Position(line=0, character=0)
    assert d.message.startswith(f"{folder / 'bad_opt.nl'}:2:")
    (related,) = d.related_information
    assert related.location.uri == from_fs_path(str(folder / "bad_opt.nl"))
    assert related.location.range.start == at(OPT, "g\n")


def test_hover_in_an_optimizer_definition(lsp):
    path = library_root() / "optim" / "adamw.nl"
    text = path.read_text()
    uri = lsp.open(path, text)
    assert lsp.published(uri, 1) == []
    shown = hover(lsp, uri, at(text, "level moments", 7))
    assert "level moments every 1 step" in shown and "optimizer level" in shown
    shown = hover(lsp, uri, at(text, "memory m, s", 7))
    assert "shaped like the parameter W" in shown and "learns dot(g) by gd(lr: 1 - beta1, decay: beta1)" in shown
    assert "hyperparameter of optimizer `adamw`" in hover(lsp, uri, at(text, "lr * weight_decay", 0))
    assert "the gradient" in hover(lsp, uri, at(text, "dot(g)", 4))


def test_without_pygls_the_command_names_the_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "nldsl.lsp" or m.split(".")[0] in ("pygls", "lsprotocol")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pygls", None)  # what an import finds when it is not installed
    assert main(["lsp"]) == 1
    err = capsys.readouterr().err
    assert err == "error: `nldsl lsp` needs pygls, which is not installed: pip install 'nldsl[lsp]'\n"
