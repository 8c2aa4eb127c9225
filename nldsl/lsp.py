"""`nldsl lsp`: a language server for `.nl` specs, over stdio (docs/editors.md).

What it says comes from the compiler itself, never from a second copy of it:

* diagnostics: the loader's and the checker's (compiler/load.py, compiler/check/), the
  same codes, messages and spans as `nldsl check`, on the buffer's text. Its imports
  are looked up beside the document's file; a buffer that is no file on disk (an
  untitled one) sees nldsl's library only, so it makes the server read nothing else.
  Nothing is ever executed.
* hover: a level's period, tier, outer parameters and inner state from the level graph
  after the passes that derive tiers and costs (compiler/passes.py, what `nldsl stats`
  and `nldsl ir --levels` print); a memory's kind, state shapes and rule from the
  checked spec; a built-in word's signature and meaning from nldsl/vocab.py's tables.
* go to definition, document symbols and completion: from the syntax tree of the
  buffer (compiler/ast.py spans) and the loaded program (imported and library
  optimizers).
* formatting: `nldsl fmt`'s canonical text (compiler/format.py), as one edit, and no
  edit at all for a text that does not parse.

Needs pygls, the `lsp` extra (`pip install 'nldsl[lsp]'`). Every request is answered
even when it fails inside: the failure is logged on standard error, the answer empty.

Positions: the compiler's spans count lines and columns from 1, in code points after a
byte-order mark; LSP counts from 0 in the units the client chose (UTF-16 unless it
asked otherwise). Both count lines at "\\n" only.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path, uri_scheme

from . import __version__
from .compiler import ast
from .compiler.check import Checker
from .compiler.diagnostics import Diagnostic, Report, Span
from .compiler.format import _period, format_expr, format_text
from .compiler.load import Program, library_optimizers, library_root, load
from .compiler.parse import BOM, parse
from .compiler.spec import LevelSpec, ModelSpec, OptimizerSpec, ProgramSpec
from .vocab import (ACTIVATIONS, FUNCTIONS, HINTS, INITS, INPUTS, MEMORY_FLAGS, MEMORY_KINDS, OBJECTIVE_FLAGS,
                    OBJECTIVES, OPTIMIZER_INPUTS, OUTER_OBJECTIVE_FLAGS, OUTER_OBJECTIVES, RULE_FLAGS, RULES, SELECTORS,
                    SETTINGS, SIZES, TRAINING_SETTINGS, WORDS, Function, MemoryKind, Objective, Rule)

log = logging.getLogger("nldsl.lsp")

FLAGS = (*MEMORY_FLAGS, *RULE_FLAGS, *OBJECTIVE_FLAGS, *OUTER_OBJECTIVE_FLAGS)  # options written bare, like `residual`

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ------------------------------------------------------------------ text and positions
class Text:
    """A source text, and conversions between its offsets and the compiler's 1-based
    (line, column) positions, both in code points after a byte-order mark."""

    def __init__(self, text: str):
        self.text = text.removeprefix(BOM)
        self.bom = len(text) - len(self.text)  # columns of line 1 shift by it in the editor's text
        self.lines = self.text.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, line: int, col: int) -> int:
        line = min(max(line, 1), len(self.lines))
        return self.starts[line - 1] + min(max(col - 1, 0), len(self.lines[line - 1]))

    def position(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:  # the last line starting at or before `offset`
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.starts[mid] <= offset else (lo, mid - 1)
        return lo + 1, offset - self.starts[lo] + 1

    def span(self, file: str, start: int, end: int) -> Span:
        (l0, c0), (l1, c1) = self.position(start), self.position(end)
        return Span(file, l0, c0, l1, c1)

    def find(self, name: str, span: Span | None, after: int = 0, dot: bool = False) -> Span | None:
        """Where `name` is first written as a whole word inside `span`, from `after`
        characters into it (a declaration's name, after its keyword), or after the
        span's first `.` (`level.memory`, `level.hint`)."""
        if span is None:
            return None
        start = self.offset(span.line, span.col) + after
        if dot:
            start = self.text.find(".", start) + 1
            if start == 0:
                return None
        end = self.offset(span.end_line, span.end_col) if span.end_line else len(self.text)
        m = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])").search(self.text, start, max(end, start))
        return self.span(span.file, m.start(), m.end()) if m else None

    def word_at(self, line: int, col: int) -> tuple[int, int] | None:
        """The offsets of the name under (or just before) a position."""
        if not 1 <= line <= len(self.lines):
            return None
        text = self.lines[line - 1]
        for m in NAME.finditer(text):
            if m.start() < col <= m.end() + 1:
                return self.starts[line - 1] + m.start(), self.starts[line - 1] + m.end()
        return None


class Positions:
    """The compiler's positions in the client's units, and back."""

    def __init__(self, text: Text, units):
        self.text, self.units = text, units  # units: a str -> its length in the client's code units

    def to_client(self, line: int, col: int) -> types.Position:
        lines = self.text.lines
        if line > len(lines):
            line, col = len(lines), len(lines[-1]) + 1
        line = max(line, 1)
        return types.Position(line=line - 1, character=self.units(lines[line - 1][:max(col - 1, 0)]) + self.bom(line))

    def bom(self, line: int) -> int:
        return self.units(BOM) * self.text.bom if line == 1 else 0

    def range(self, span: Span | None) -> types.Range:
        if span is None:
            zero = types.Position(line=0, character=0)
            return types.Range(start=zero, end=zero)
        return types.Range(start=self.to_client(span.line, span.col), end=self.to_client(span.end_line, span.end_col))

    def from_client(self, pos: types.Position) -> tuple[int, int]:
        lines = self.text.lines
        if pos.line >= len(lines):
            return len(lines), len(lines[-1]) + 1
        text, want = lines[pos.line], pos.character - self.bom(pos.line + 1)
        units = col = 0
        while col < len(text) and units < want:
            units += self.units(text[col])
            col += 1
        return pos.line + 1, col + 1


# ------------------------------------------------------------------ what names mean
@dataclass
class Target:
    """What a name means: something the spec defines (with where), or a word of the language."""

    what: str  # model optimizer level memory flow setting var param | function kind objective rule ...
    name: str
    node: object = None  # the defining statement, or the vocabulary's row
    span: Span | None = None  # where its name is written
    item: object = None  # the model or optimizer definition it belongs to
    level: ast.Level | None = None
    file: str | None = None  # another file than the document's (imports, the library)


@dataclass
class Scope:
    """The names a model, an optimizer definition, a level or a block declares."""

    item: object
    level: ast.Level | None
    names: dict[str, Target] = field(default_factory=dict)
    parent: "Scope | None" = None

    def lookup(self, name: str) -> Target | None:
        s = self
        while s is not None:
            if name in s.names:
                return s.names[name]
            s = s.parent
        return None

    def visible(self) -> dict[str, Target]:
        out: dict[str, Target] = {}
        s = self
        while s is not None:
            for k, v in s.names.items():
                out.setdefault(k, v)
            s = s.parent
        return out

    @property
    def optimizer(self) -> bool:
        return isinstance(self.item, ast.OptimizerDef)


@dataclass
class Ref:
    """A name written in the document, with what role it plays there."""

    name: str
    span: Span
    role: str  # name call kind objective rule optimizer hyperparameter option flag member hint outer_objective selector
    scope: Scope
    owner: str | None = None  # the call an option or flag belongs to, the level of a member or hint
    target: Target | None = None  # known where it is written: a declaration


def _decl(scope: Scope, what: str, name: str, node, span: Span | None, refs: list[Ref], **kw) -> Target:
    t = Target(what, name, node, span, scope.item, scope.level, **kw)
    scope.names.setdefault(name, t)
    if span is not None:
        refs.append(Ref(name, span, "decl", scope, target=t))
    return t


class Index:
    """Every name the document writes, with its scope: built from the syntax tree."""

    def __init__(self, module: ast.Module, text: Text):
        self.text, self.file = text, module.file
        self.refs: list[Ref] = []
        self.top = Scope(None, None)
        self.scopes: list[Scope] = []
        for item in module.items:
            if isinstance(item, ast.Model):
                _decl(self.top, "model", item.name, item, text.find(item.name, item.span, len("model")), self.refs)
            elif isinstance(item, ast.OptimizerDef):
                _decl(self.top, "optimizer", item.name, item, text.find(item.name, item.span, len("optimizer")),
                      self.refs)
        for item in module.items:
            if isinstance(item, ast.Model):
                self._model(item)
            elif isinstance(item, ast.OptimizerDef):
                self._optimizer(item)

    # ---- declarations
    def _scope(self, item, level, parent) -> Scope:
        s = Scope(item, level, parent=parent)
        self.scopes.append(s)
        return s

    def _model(self, m: ast.Model) -> None:
        scope, find, refs = self._scope(m, None, self.top), self.text.find, self.refs
        for s in m.body:
            if isinstance(s, ast.Setting):
                _decl(scope, "setting", s.name, s, find(s.name, s.span), refs)
            elif isinstance(s, ast.Level):
                _decl(scope, "level", s.name, s, find(s.name, s.span, len("level")), refs)
        for s in m.body:
            if isinstance(s, ast.Setting):
                self._expr(s.value, scope)
            elif isinstance(s, ast.Level):
                self._level(s, scope)
            elif isinstance(s, ast.Block):
                self._expr(s.repeat, scope)
                block = self._scope(m, None, scope)
                for a in s.body:
                    self._expr(a.value, block)
                    span = find(a.name, a.span)
                    if block.lookup(a.name) is None and a.name not in INPUTS and span is not None:
                        _decl(block, "var", a.name, a, span, refs)
                    elif span is not None:
                        refs.append(Ref(a.name, span, "name", block))
            elif isinstance(s, ast.Objective):
                self._head(s.value, scope, "outer_objective", "flag")
            elif isinstance(s, ast.OptimizerUse):
                self._head(s.value, scope, "optimizer", "hyperparameter")
                if s.selector is not None and (span := find(s.selector, s.span, len("optimizer"))):
                    refs.append(Ref(s.selector, span, "selector", scope))
            elif isinstance(s, ast.Schedule):
                for h in s.hints:
                    if (span := find(h.level, h.span)) is not None:
                        refs.append(Ref(h.level, span, "name", scope))
                        if (key := find(h.key, h.span, dot=True)) is not None:
                            refs.append(Ref(h.key, key, "hint", scope, owner=h.level))
                    self._expr(h.value, scope)

    def _optimizer(self, o: ast.OptimizerDef) -> None:
        scope, find, refs = self._scope(o, None, self.top), self.text.find, self.refs
        for p in o.params:
            _decl(scope, "param", p.name, p, find(p.name, p.span), refs)
            self._expr(p.default, scope)
        levels = [s for s in o.body if isinstance(s, ast.Level)]
        for lv in levels:  # an optimizer's memories are visible across its levels
            _decl(scope, "level", lv.name, lv, find(lv.name, lv.span, len("level")), refs)
            for s in lv.body:
                if isinstance(s, ast.Memory):
                    for name, span in zip(s.names, s.name_spans):
                        scope.names.setdefault(name, Target("memory", name, s, span, o, lv))
        for s in o.body:
            if isinstance(s, ast.Flow):
                _decl(scope, "flow", s.name, s, find(s.name, s.span, len("flow")), refs)
                self._expr(s.value, scope)
            elif isinstance(s, ast.Update):
                if (span := find(s.target, s.span, len("update"))) is not None:
                    refs.append(Ref(s.target, span, "name", scope))
                self._expr(s.value, scope)
        for lv in levels:
            self._level(lv, scope)

    def _level(self, lv: ast.Level, parent: Scope) -> None:
        scope, find, refs = self._scope(parent.item, lv, parent), self.text.find, self.refs
        for s in lv.body:
            if isinstance(s, ast.Memory):
                for name, span in zip(s.names, s.name_spans):
                    _decl(scope, "memory", name, s, span, refs)
            elif isinstance(s, ast.Flow):
                _decl(scope, "flow", s.name, s, find(s.name, s.span, len("flow")), refs)
        self._expr(lv.period.count, parent)
        for s in lv.body:
            if isinstance(s, ast.Memory):
                self._head(s.kind, scope, "kind", "option")
            elif isinstance(s, ast.Flow):
                self._expr(s.value, scope)
            elif isinstance(s, ast.Learn):
                for name, span in zip(s.names, s.name_spans):
                    refs.append(Ref(name, span, "name", scope))
                self._head(s.objective, scope, "objective", "option")
                if s.rule is not None:
                    self._head(s.rule, scope, "rule", "option")
            elif isinstance(s, ast.Out):
                self._expr(s.value, scope)

    # ---- uses
    def _head(self, e, scope: Scope, role: str, options: str) -> None:
        """A call whose name is a word of `role` (a memory kind, a rule, ...): its name,
        its options (keyword arguments, and names written bare: flags) and its arguments."""
        name, args = ast.head(e)
        if name is None:
            self._expr(e, scope)
            return
        self.refs.append(Ref(name, self.text.find(name, e.span) or e.span, role, scope))
        for a in args:
            if a.key is not None:
                if (span := self.text.find(a.key, a.span)) is not None:
                    self.refs.append(Ref(a.key, span, options, scope, owner=name))
                self._expr(a.value, scope)
            elif isinstance(a.value, ast.Name) and a.value.id in FLAGS:
                self.refs.append(Ref(a.value.id, a.value.span, "flag", scope, owner=name))
            else:
                self._expr(a.value, scope)

    def _expr(self, e, scope: Scope) -> None:
        for n in ast.walk(e):
            if isinstance(n, ast.Name) and n.span is not None:
                self.refs.append(Ref(n.id, n.span, "name", scope))
            elif isinstance(n, ast.Call) and n.span is not None:
                if (span := self.text.find(n.func, n.span)) is not None:
                    self.refs.append(Ref(n.func, span, "call", scope))
                for a in n.args:
                    if a.key is not None and (span := self.text.find(a.key, a.span)) is not None:
                        self.refs.append(Ref(a.key, span, "option", scope, owner=n.func))
            elif isinstance(n, ast.Member) and n.span is not None:
                if (owner := self.text.find(n.owner, n.span)) is not None:
                    self.refs.append(Ref(n.owner, owner, "name", scope))
                if (name := self.text.find(n.name, n.span, dot=True)) is not None:
                    self.refs.append(Ref(n.name, name, "member", scope, owner=n.owner))

    def at(self, line: int, col: int) -> Ref | None:
        """The name written at a position (a cursor just after a name counts)."""
        best = None
        for r in self.refs:
            s = r.span
            if s.line == line and s.col <= col <= s.end_col and (best is None or s.col > best.span.col):
                best = r
        return best


# ------------------------------------------------------------------ one document, analysed
class Analysis:
    """A document's text, checked as `nldsl check` checks a file: its diagnostics, and
    what hover, definition, symbols and completion read (the syntax tree, the loaded
    program, the models and optimizers that checked)."""

    def __init__(self, text: str, name: str, folder: Path):
        self.raw, self.text, self.name = text, Text(text), name
        self.report = Report()
        self.program: Program | None = load(name, self.report, text=text, folder=folder)
        self.spec: ProgramSpec | None = Checker(self.program, self.report).run() if self.program else None
        self.module = parse(text, name, Report())  # the buffer's own tree, even when an import is broken
        self.index = Index(self.module, self.text) if self.module is not None else None
        self._graphs: dict[str, object] = {}

    # ---- diagnostics
    def diagnostics(self) -> list[tuple[Diagnostic, Span | None]]:
        """Each diagnostic with the span to show it at in this document: its own, or for
        one inside another file (an import, a library optimizer), the import that leads
        there (else the first line)."""
        out = []
        for d in self.report.sorted():
            if d.span is None or d.span.file == self.name:
                out.append((d, d.span))
            else:
                out.append((d, self._import_leading_to(d.span.file)))
        return out

    def _import_leading_to(self, file: str) -> Span:
        """The line of this document through which `file` was read: the import it is
        (or that imports it), or the `optimizer NAME(...)` line of a library optimizer."""
        items = self.module.items if self.module else ()
        imports = [i for i in items if isinstance(i, ast.Import)]
        if self.program is not None:  # loaded without errors: each import resolved, in order
            for item, child in zip(imports, self.program.imports.get(self.name, [])):
                if file in self._reachable(child):
                    return item.span
            for name, (_, where) in self.program.library.items():
                uses = [s for m in items if isinstance(m, ast.Model) for s in m.body
                        if isinstance(s, ast.OptimizerUse) and ast.head(s.value)[0] == name]
                if where == file and uses:
                    return uses[0].span
        for i in imports:  # an import whose file did not load
            if Path(file).as_posix().endswith("/" + i.path.lstrip("./")):
                return i.span
        return imports[0].span if imports else Span(self.name, 1, 1, 1, 1)

    def _reachable(self, file: str) -> set[str]:
        """`file` and the files it imports, directly or not."""
        seen, todo = set(), [file]
        while todo:
            f = todo.pop()
            if f not in seen:
                seen.add(f)
                todo.extend(self.program.imports.get(f, []))
        return seen

    # ---- the checked spec and its level graph
    def spec_of(self, item) -> ModelSpec | OptimizerSpec | None:
        if self.spec is None or item is None:
            return None
        specs = self.spec.models if isinstance(item, ast.Model) else self.spec.optimizers
        return next((s for s in specs if s.name == item.name), None)

    def graph(self, spec):
        """The level graph after the passes that derive its tiers and costs. Lowering
        (torch.fx) comes after them and tells a hover nothing more, so it is not run."""
        if spec.name not in self._graphs:
            from .compiler import passes
            ir = passes.build(spec)
            for name, fn in passes.PASSES:
                if name == "lower":
                    break
                ir = fn(ir)
            self._graphs[spec.name] = ir
        return self._graphs[spec.name]

    # ---- names
    def optimizer_def(self, name: str) -> tuple[ast.OptimizerDef, str] | None:
        """An optimizer a model may use: the document's, a direct import's, or the library's."""
        t = self.index.top.names.get(name) if self.index else None
        if t is not None and t.what == "optimizer":
            return t.node, self.name
        if self.program is not None:
            return Checker(self.program, Report()).visible_optimizers(self.name).get(name) or \
                self.program.library.get(name)
        return None

    def resolve(self, ref: Ref) -> Target | None:
        if ref.target is not None:
            return ref.target
        role, name = ref.role, ref.name
        if role == "kind":
            return Target("kind", name, MEMORY_KINDS.get(name)) if name in MEMORY_KINDS else None
        if role == "objective":
            return Target("objective", name, OBJECTIVES[name]) if name in OBJECTIVES else None
        if role == "rule":
            return Target("rule", name, RULES[name]) if name in RULES else None
        if role == "outer_objective":
            return Target("outer_objective", name) if name in OUTER_OBJECTIVES else None
        if role == "selector":
            return Target("selector", name) if name in SELECTORS else None
        if role == "hint":
            return Target("hint", name, HINTS[name], item=ref.owner) if name in HINTS else None
        if role in ("option", "flag"):
            return Target("option", name, item=ref.owner)
        if role in ("optimizer", "hyperparameter"):
            found = self.optimizer_def(name if role == "optimizer" else ref.owner)
            if found is None:
                return None
            o, file = found
            if role == "hyperparameter":
                p = next((p for p in o.params if p.name == name), None)
                return self._target_in(file, "param", name, p, p.span, o, 0) if p else None
            return self._target_in(file, "optimizer", name, o, o.span, o, len("optimizer"))
        if role == "member":
            lv = ref.scope.lookup(ref.owner)
            if lv is None or lv.what != "level":
                return None
            for s in lv.node.body:
                if isinstance(s, ast.Memory) and name in s.names:
                    return Target("memory", name, s, s.name_spans[s.names.index(name)], lv.item, lv.node)
            return None
        found = ref.scope.lookup(name)
        if found is not None:
            return found
        return self.word(name, ref.scope)

    def _target_in(self, file: str, what: str, name: str, node, span, item, after: int) -> Target:
        """A definition in `file`, its name's span found in that file's text."""
        if file == self.name:
            return Target(what, name, node, self.text.find(name, span, after) or span, item)
        source = self.report.sources.get(file)
        where = Text(source).find(name, span, after) if source is not None else None
        return Target(what, name, node, where or span, item, file=file)

    @staticmethod
    def word(name: str, scope: Scope | None) -> Target | None:
        """A name the language gives a meaning: an input, a reserved word, a built-in
        function, a setting a model has without writing it."""
        optimizer = scope is not None and scope.optimizer
        if name in _inputs(optimizer):
            return Target("input", name)
        if name in WORDS:
            return Target("word", name)
        if name in FUNCTIONS:
            return Target("function", name, FUNCTIONS[name])
        if name in INITS:
            return Target("init", name)
        if not optimizer and (name in SETTINGS or name in TRAINING_SETTINGS):
            return Target("setting", name, item=scope.item if scope else None)
        return None

    def target_at(self, line: int, col: int) -> Target | None:
        if self.index is None:
            return None
        ref = self.index.at(line, col)
        return self.resolve(ref) if ref is not None else None

    # ---- hover
    def hover(self, t: Target) -> str | None:
        what = t.what
        if what == "level":
            return self._hover_level(t)
        if what == "memory":
            return self._hover_memory(t)
        if what == "flow":
            spec = self.spec_of(t.item)
            size = None
            if spec is not None:
                flows = list(getattr(spec, "flows", ()))
                for lv in spec.levels:
                    flows += lv.flows if t.level is None or lv.name == t.level.name else ()
                size = next((f.size for f in flows if f.name == t.name), None)
            text = f"flow {t.name} = {format_expr(t.node.value)}"
            return _code(text) + (f"\n\nsize {size}" if size is not None else "")
        if what == "setting":
            node = t.node if isinstance(t.node, ast.Setting) else None
            spec = self.spec_of(t.item) if isinstance(t.item, ast.Model) else None
            value = spec.settings.get(t.name) if spec is not None else None
            head = _code(f"{t.name} {format_expr(node.value)}" if node else f"{t.name}")
            if node is None:
                default = SETTINGS.get(t.name)
                note = (f"a setting of the model, {_num(default)} unless written" if default is not None else
                        "a setting of the model, required" if t.name in SETTINGS else
                        "a training setting: `nldsl train` uses it when written")
                return f"{head}\n\n{note}"
            return head + (f"\n\nsetting of model `{t.item.name}`: {_num(value)}" if value is not None else "")
        if what == "var":
            return _code(f"{t.name} = {format_expr(t.node.value)}") + "\n\na variable of the block"
        if what == "param":
            return _code(f"{t.name} = {format_expr(t.node.default)}") + \
                f"\n\nhyperparameter of optimizer `{t.item.name}`" + self._where(t)
        if what == "optimizer":
            o = t.node
            params = ", ".join(f"{p.name} = {format_expr(p.default)}" for p in o.params)
            levels = [f"`{s.name}` {_period(s.period)}" for s in o.body if isinstance(s, ast.Level)]
            text = _code(f"optimizer {o.name}({params})")
            return text + (f"\n\nlevels: {', '.join(levels)}" if levels else "") + self._where(t)
        if what == "model":
            return self._hover_model(t)
        return describe_word(t)

    def _where(self, t: Target) -> str:
        if t.file is None:
            return ""
        try:
            shown = Path(t.file).relative_to(library_root()).as_posix() + " (nldsl's library)"
        except ValueError:
            shown = t.file
        return f"\n\ndefined in {shown}"

    def _level_node(self, t: Target) -> tuple[object, str] | None:
        spec = self.spec_of(t.item)
        if spec is None:
            return None
        ir = self.graph(spec)
        node = f"level:{spec.name}/{t.name}" if isinstance(spec, OptimizerSpec) else f"level:{t.name}"
        return (ir, node) if node in ir.graph else None

    def _hover_level(self, t: Target) -> str:
        lv: ast.Level = t.node
        lines = [_code(f"level {lv.name} {_period(lv.period)}")]
        found = self._level_node(t)
        if found is None:
            lines.append("(its tier and costs show once the "
                         f"{'model' if isinstance(t.item, ast.Model) else 'optimizer'} checks without errors)")
        else:
            ir, node = found
            d = ir.graph.nodes[node]
            tier = next(i for i, tier in enumerate(ir.tiers) if node in tier["nodes"]) if \
                any(node in tier["nodes"] for tier in ir.tiers) else None
            from .compiler.stats import _n
            if tier is not None:
                lines.append(f"- tier {tier + 1} of {len(ir.tiers)}, fastest first (`nldsl ir --levels`): "
                             f"{ir.tiers[tier]['label']}")
            lines.append(f"- {d['scope']} level, {d['copies']} cop{'y' if d['copies'] == 1 else 'ies'}")
            lines.append(f"- outer parameters: {d['params']:,}")
            lines.append(f"- inner state per sequence: {d['state']:,} numbers")
            lines.append(f"- FLOPs per token, forward: {_n(d['flops'])}")
        mems = [f"`{n}` ({format_expr(s.kind)})" for s in lv.body if isinstance(s, ast.Memory) for n in s.names]
        if mems:
            lines.append(f"- memories: {', '.join(mems)}")
        return "\n".join(lines)

    def _level_spec(self, t: Target) -> LevelSpec | None:
        spec = self.spec_of(t.item)
        if spec is None or t.level is None:
            return None
        return next((lv for lv in spec.levels if lv.name == t.level.name), None)

    def _hover_memory(self, t: Target) -> str:
        m: ast.Memory = t.node
        lines = [_code(f"memory {t.name} : {format_expr(m.kind)}"), f"in level `{t.level.name}`" if t.level else ""]
        lv = self._level_spec(t)
        ms = next((x for x in lv.memories if x.name == t.name), None) if lv else None
        if ms is not None:
            shapes = ms.state_shapes()
            if ms.kind in ("linear", "mlp"):
                lines.append(f"- {ms.d_in} -> {ms.d_out}, {ms.heads} head{'s' * (ms.heads != 1)}")
                lines.append("- state θ: " + ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in shapes.items()) +
                             f" ({ms.state_numel:,} numbers a copy)")
            elif ms.kind == "elementwise":
                lines.append("- state θ: shaped like the parameter W, one number per coordinate")
            else:
                lines.append("- no state of its own: it keeps the keys and values it is given"
                             + (f", a window of {ms.window}" if ms.window else ""))
            lines.append(f"- initial state θ₀: {ms.init}" + (" (a constant)" if ms.fixed else ""))
        learns = [s for s in (t.level.body if t.level else ()) if isinstance(s, ast.Learn) and t.name in s.names]
        learn = lv.learn_of(t.name) if lv else None
        if learns:
            s = learns[0]
            rule = format_expr(s.rule) if s.rule is not None else (learn.rule if learn and learn.rule else None)
            lines.append(f"- learns {format_expr(s.objective)}" + (f" by {rule}" if rule else "") +
                         f", read {s.read or 'before'}")
        else:
            lines.append("- not learned in its level: a fixed map its outer parameters train")
        return "\n".join(x for x in lines if x)

    def _hover_model(self, t: Target) -> str:
        lines = [_code(f"model {t.name}")]
        spec = self.spec_of(t.item)
        if spec is not None:
            from .compiler.stats import _n, totals
            tot = totals(self.graph(spec))
            lines += [f"- parameters (all outer): {tot['params']:,}",
                      f"- inner state per sequence: {tot['state']:,} numbers",
                      f"- FLOPs per token, forward: {_n(tot['flops'])}"]
        return "\n".join(lines)


def _inputs(optimizer: bool) -> tuple[str, ...]:
    """The names the stream gives: `x` in a model; `g`, `W` and `step` in an optimizer."""
    return OPTIMIZER_INPUTS if optimizer else tuple(i for i in INPUTS if i not in OPTIMIZER_INPUTS)


def _code(text: str) -> str:
    return f"```nl\n{text}\n```"


def _num(v) -> str:
    from .compiler.check.context import num
    return num(v) if isinstance(v, (int, float)) else str(v)


# ------------------------------------------------------------------ the vocabulary, described
def signature(row) -> str:
    """A word of the vocabulary as it is written: its arguments and options."""
    if isinstance(row, Function):
        lo, hi = row.arity
        names = "abcdefghijklmnop"
        args = ", ".join(names[:lo])
        if hi - lo > 2:
            args += f", … (up to {hi})"
        else:
            args += "".join(f"[, {names[i]}]" for i in range(lo, hi))
        opts = "".join(f", {o}: …" for o in row.options)
        return f"{row.name}({args}{opts})"
    if isinstance(row, MemoryKind):
        parts = ["d_in -> d_out"] if row.sized else []
        parts += [o if o in MEMORY_FLAGS else f"{o}: …" for o in row.options]
        return f"{row.name}({', '.join(parts)})"
    if isinstance(row, Objective):
        return f"{row.name}({', '.join(row.args)}{''.join(f'[, {f}]' for f in row.flags)})"
    if isinstance(row, Rule):
        parts = [f"{o}: …" for o in row.required] + \
                [f"[{o}]" if o in row.flags else f"[{o}: …]" for o in row.optional]
        return f"{row.name}({', '.join(parts)})"
    return str(row)


def _where_allowed(model: bool, optimizer: bool) -> str:
    return "in models and optimizers" if model and optimizer else "in models only" if model else "in optimizers only"


# the words whose hover text is a line or two, by what they are
_SHORT = {
    "objective": lambda t: f"{_code(signature(t.node))}\ninner objective, {_where_allowed(True, t.node.optimizer)}",
    "rule": lambda t: f"{_code(signature(t.node))}\nupdate rule of a learn statement",
    "init": lambda t: f"`{t.name}`: an initial state θ₀ a memory may start from (`init: {t.name}`)",
    "input": lambda t: f"`{t.name}`: {INPUTS[t.name]}",
    "word": lambda t: f"`{t.name}`: {WORDS[t.name]}",
    "outer_objective": lambda t: f"`{t.name}`: the outer objective (flags: {', '.join(OUTER_OBJECTIVE_FLAGS)})",
    "selector": lambda t: f"`{t.name}`: the parameter group this optimizer trains (one of {', '.join(SELECTORS)})",
}


def describe_word(t: Target) -> str | None:
    """Hover text for a word of the language, from nldsl/vocab.py's rows."""
    row, what = t.node, t.what
    if what == "function":
        text = [_code(signature(row)), f"built-in function, {_where_allowed(row.model, row.optimizer)}",
                f"- result: {SIZES[row.size]}"]
        if row.params:
            text.append(f"- each call makes an outer parameter ({', '.join(row.params)})")
        return "\n".join(text)
    if what == "kind":
        text = [_code(signature(row)), f"memory kind, {_where_allowed(row.model, row.optimizer)}",
                f"- initial state θ₀ unless `init:` says: {row.init} (one of {', '.join(row.inits)})"]
        if row.rule:
            text.append(f"- learned by `{row.rule}` unless a rule is written")
        if "act" in row.options:
            text.append(f"- `act:` one of {', '.join(ACTIVATIONS)}")
        return "\n".join(text)
    if what in _SHORT:
        return _SHORT[what](t)
    if what == "hint":
        kind = row if isinstance(row, tuple) else "a whole number"
        values = ", ".join(kind) if isinstance(kind, tuple) else kind
        return f"`{t.name}`: schedule hint of level `{t.item}` ({values})"
    if what == "option":
        owner = t.item
        for table, kind in ((MEMORY_KINDS, "memory kind"), (RULES, "rule"), (FUNCTIONS, "function")):
            if owner in table:
                return f"`{t.name}`: option of {kind} `{signature(table[owner])}`"
        return f"`{t.name}`: option of `{owner}`" if owner else None
    return None


# ------------------------------------------------------------------ what text that does not parse shows
_HEADER = re.compile(r"\b(model|level|optimizer|block|schedule)\b\s*([A-Za-z_][A-Za-z0-9_]*)?")


@dataclass
class Brace:
    """A `{ ... }` found by its braces alone, with the header before it."""

    kind: str
    name: str | None
    name_at: int  # offset of the name (or of the keyword)
    start: int  # offset of the header
    open: int
    close: int | None = None  # None: never closed
    children: list["Brace"] = field(default_factory=list)


def braces(text: str) -> list[Brace]:
    """The blocks of a text by its braces, comments and strings skipped: what completion
    and the outline know of the structure of a text that does not parse."""
    roots: list[Brace] = []
    stack: list[Brace] = []
    last = 0  # where the current statement may start: after a brace or `;`
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if ch == '"':
            j = text.find('"', i + 1)
            i = n if j < 0 else j + 1
            continue
        if ch == "{":
            header = text[last:i]
            m = None
            for m in _HEADER.finditer(header):
                pass
            b = Brace(m.group(1), m.group(2) if m.group(1) in ("model", "level", "optimizer") else None,
                      last + (m.start(2) if m.group(2) else m.start(1)), last + m.start(1), i) if m else \
                Brace("block", None, i, i, i)
            (stack[-1].children if stack else roots).append(b)
            stack.append(b)
            last = i + 1
        elif ch == "}":
            if stack:
                stack.pop().close = i
            last = i + 1
        elif ch == ";":
            last = i + 1
        elif ch == "\n" and stack == [] and text[last:i].strip() == "":
            last = i + 1
        i += 1
    return roots


def enclosing(text: str, offset: int) -> list[Brace]:
    """The blocks holding an offset, outermost first."""
    out, level = [], braces(text)
    while True:
        inner = next((b for b in level if b.open < offset and (b.close is None or offset <= b.close)), None)
        if inner is None:
            return out
        out.append(inner)
        level = inner.children


# ------------------------------------------------------------------ symbols
def symbols(a: Analysis, pos: Positions) -> list[types.DocumentSymbol]:
    if a.module is not None and a.index is not None:
        return [s for item in a.module.items if (s := _item_symbol(a, item, pos)) is not None]
    return [_brace_symbol(b, a.text, pos) for b in braces(a.text.text) if b.kind in ("model", "optimizer") and b.name]


def _symbol(name, kind, span, name_span, pos: Positions, children=()) -> types.DocumentSymbol:
    return types.DocumentSymbol(name=name, kind=kind, range=pos.range(span),
                                selection_range=pos.range(name_span or span), children=list(children))


def _item_symbol(a: Analysis, item, pos: Positions) -> types.DocumentSymbol | None:
    find = a.text.find
    if isinstance(item, ast.Model):
        children = []
        for s in item.body:
            if isinstance(s, ast.Setting):
                children.append(_symbol(s.name, types.SymbolKind.Constant, s.span, find(s.name, s.span), pos))
            elif isinstance(s, ast.Level):
                children.append(_level_symbol(a, s, pos))
        return _symbol(item.name, types.SymbolKind.Class, item.span, find(item.name, item.span, len("model")), pos,
                       children)
    if isinstance(item, ast.OptimizerDef):
        children = [_symbol(p.name, types.SymbolKind.Property, p.span, find(p.name, p.span), pos) for p in item.params]
        children += [_level_symbol(a, s, pos) if isinstance(s, ast.Level) else
                     _symbol(s.name, types.SymbolKind.Variable, s.span, find(s.name, s.span, len("flow")), pos)
                     for s in item.body if isinstance(s, (ast.Level, ast.Flow))]
        return _symbol(item.name, types.SymbolKind.Function, item.span, find(item.name, item.span, len("optimizer")),
                       pos, children)
    return None


def _level_symbol(a: Analysis, lv: ast.Level, pos: Positions) -> types.DocumentSymbol:
    children = []
    for s in lv.body:
        if isinstance(s, ast.Memory):
            children += [_symbol(n, types.SymbolKind.Field, s.span, sp, pos) for n, sp in zip(s.names, s.name_spans)]
        elif isinstance(s, ast.Flow):
            children.append(_symbol(s.name, types.SymbolKind.Variable, s.span, a.text.find(s.name, s.span, len("flow")),
                                    pos))
    sym = _symbol(lv.name, types.SymbolKind.Namespace, lv.span, a.text.find(lv.name, lv.span, len("level")), pos,
                  children)
    sym.detail = _period(lv.period)
    return sym


_MEMORY = re.compile(r"\bmemory\s+([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*:")


def _brace_symbol(b: Brace, text: Text, pos: Positions) -> types.DocumentSymbol:
    end = b.close + 1 if b.close is not None else len(text.text)
    span, name = text.span("", b.start, end), text.span("", b.name_at, b.name_at + len(b.name or b.kind))
    kind = {"model": types.SymbolKind.Class, "optimizer": types.SymbolKind.Function}.get(b.kind,
                                                                                         types.SymbolKind.Namespace)
    children = [_brace_symbol(c, text, pos) for c in b.children if c.kind == "level" and c.name]
    if b.kind == "level":
        inner = [c for c in b.children]
        for m in _MEMORY.finditer(text.text, b.open, end):
            if any(c.open <= m.start() <= (c.close or end) for c in inner):
                continue
            for w in NAME.finditer(m.group(1)):
                at = m.start(1) + w.start()
                children.append(_symbol(w.group(), types.SymbolKind.Field, text.span("", m.start(), m.end()),
                                        text.span("", at, at + len(w.group())), pos))
    return _symbol(b.name or b.kind, kind, span, name, pos, children)


# ------------------------------------------------------------------ completion
KEYWORDS = {"top": ("model", "optimizer", "import"), "model": ("level", "block", "objective", "optimizer", "schedule"),
            "level": ("memory", "flow", "learn", "out"), "optimizer": ("level", "flow", "update")}


def completions(a: Analysis, last: Analysis | None, line: int, col: int) -> list[types.CompletionItem]:
    """What may be written at a position, from the text before it on its line and the
    blocks around it; the names in scope from the latest version of the document that
    parsed."""
    text = a.text
    before = text.lines[line - 1][:col - 1] if line <= len(text.lines) else ""
    blocks = enclosing(text.text, text.offset(line, col))
    kinds = [b.kind for b in blocks]
    optimizer = "optimizer" in kinds

    def kind_of(row, k):
        return types.CompletionItem(label=row.name, kind=k, detail=signature(row))

    def words(ws, k=types.CompletionItemKind.Keyword):
        return [types.CompletionItem(label=w, kind=k) for w in ws]

    if re.search(r"\bmemory\s+[\w\s,]*:\s*\w*$", before):
        return [kind_of(k, types.CompletionItemKind.Class) for k in MEMORY_KINDS.values()
                if (k.optimizer if optimizer else k.model)]
    if re.search(r"\blearn\s+[\w\s,]*:\s*\w*$", before):
        return [kind_of(o, types.CompletionItemKind.Function) for o in OBJECTIVES.values()
                if o.optimizer or not optimizer]
    if re.search(r"\bby\s+\w*$", before):
        return [kind_of(r, types.CompletionItemKind.Function) for r in RULES.values()]
    if re.search(r"\bact\s*:\s*\w*$", before):
        return words(ACTIVATIONS, types.CompletionItemKind.EnumMember)
    if re.search(r"\binit\s*:\s*\w*$", before):
        return words(INITS, types.CompletionItemKind.EnumMember)
    if re.search(r"\bfor\s+\w*$", before):
        return words(SELECTORS, types.CompletionItemKind.EnumMember)
    if re.search(r"^\s*objective\s+\w*$", before):
        return words(OUTER_OBJECTIVES, types.CompletionItemKind.EnumMember)
    if re.search(r"\blevel\s+\w+\s+\w*$", before):
        return words(("every", "outer", "frozen"))
    if re.search(r"\bevery\s+\S+\s+\w*$", before):
        return words(("tokens", "steps"))
    if re.search(r"^\s*optimizer\s+\w*$", before) and "model" in kinds:
        names = dict.fromkeys(library_optimizers())
        if last is not None and last.program is not None:
            names.update(dict.fromkeys(Checker(last.program, Report()).visible_optimizers(last.name)))
        return words(sorted(names), types.CompletionItemKind.Function)
    scope = _scope_at(last, blocks)
    if (m := re.search(r"\b([A-Za-z_]\w*)\s*\.\s*\w*$", before)) is not None:
        if "schedule" in kinds:
            return words(HINTS, types.CompletionItemKind.Property)
        lv = scope.lookup(m.group(1)) if scope else None
        if lv is not None and lv.what == "level":
            return words([n for s in lv.node.body if isinstance(s, ast.Memory) for n in s.names],
                         types.CompletionItemKind.Field)
        return []
    call = _open_call(before)
    if call is not None and re.search(r"[(,]\s*\w*$", before):  # an option's name may go here
        options = _options_of(call, last)
        if options:
            items = words(options, types.CompletionItemKind.Property)
            return items + _names(scope, optimizer)
    if re.fullmatch(r"\s*\w*", before):  # a statement starts here
        where = "level" if "level" in kinds else "optimizer" if optimizer else "model" if "model" in kinds else "top"
        items = words(KEYWORDS[where])
        if where == "model":
            items += words([*SETTINGS, *TRAINING_SETTINGS], types.CompletionItemKind.Constant)
        if where != "level" and "level" not in kinds:
            return items
        return items + (_names(scope, optimizer) if where == "level" else [])
    return _names(scope, optimizer)


def _scope_at(a: Analysis | None, blocks: list[Brace]) -> Scope | None:
    """The scope of the latest tree that matches the blocks around the cursor by name."""
    if a is None or a.index is None:
        return None
    item_b = next((b for b in blocks if b.kind in ("model", "optimizer")), None)
    level_b = next((b for b in blocks if b.kind == "level"), None)
    if item_b is None:
        return a.index.top
    best = None
    for s in a.index.scopes:
        if getattr(s.item, "name", None) != item_b.name:
            continue
        if s.level is None and best is None:
            best = s
        if level_b is not None and s.level is not None and s.level.name == level_b.name:
            return s
    return best


def _names(scope: Scope | None, optimizer: bool) -> list[types.CompletionItem]:
    kinds = {"memory": types.CompletionItemKind.Field, "flow": types.CompletionItemKind.Variable,
             "level": types.CompletionItemKind.Module, "setting": types.CompletionItemKind.Constant,
             "param": types.CompletionItemKind.Constant, "var": types.CompletionItemKind.Variable}
    items = {}
    for name, t in (scope.visible() if scope else {}).items():
        if t.what in kinds:
            items[name] = types.CompletionItem(label=name, kind=kinds[t.what], detail=t.what)
    for name in _inputs(optimizer):
        items.setdefault(name, types.CompletionItem(label=name, kind=types.CompletionItemKind.Variable,
                                                    detail=INPUTS[name]))
    if not optimizer:
        for name in SETTINGS:
            items.setdefault(name, types.CompletionItem(label=name, kind=types.CompletionItemKind.Constant,
                                                        detail="setting"))
    for f in FUNCTIONS.values():
        if f.optimizer if optimizer else f.model:
            items.setdefault(f.name, types.CompletionItem(label=f.name, kind=types.CompletionItemKind.Function,
                                                          detail=signature(f)))
    return list(items.values())


def _open_call(before: str) -> str | None:
    """The name of the innermost call still open at the end of `before`."""
    depth = 0
    for i in range(len(before) - 1, -1, -1):
        ch = before[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                m = re.search(r"([A-Za-z_]\w*)\s*$", before[:i])
                return m.group(1) if m else None
            depth -= 1
    return None


def _options_of(call: str, last: Analysis | None) -> tuple[str, ...]:
    if call in MEMORY_KINDS:
        return MEMORY_KINDS[call].options
    if call in RULES:
        r = RULES[call]
        return r.required + r.optional
    if call in OBJECTIVES:
        return OBJECTIVES[call].flags
    if call in FUNCTIONS:
        return FUNCTIONS[call].options
    found = last.optimizer_def(call) if last is not None else None
    return tuple(p.name for p in found[0].params) if found else ()


# ------------------------------------------------------------------ the server
class NLServer(LanguageServer):
    """Keeps each open document's latest analysis, and the latest one that parsed."""

    def __init__(self):
        super().__init__("nldsl", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.analyses: dict[str, Analysis] = {}
        self.parsed: dict[str, Analysis] = {}

    def analysis(self, uri: str) -> tuple[Analysis, Positions]:
        doc = self.workspace.get_text_document(uri)
        text = doc.source
        a = self.analyses.get(uri)
        if a is None or a.raw != text:
            a = self.analyses[uri] = Analysis(text, *self.place(uri))
            if a.module is not None:
                self.parsed[uri] = a
        return a, Positions(a.text, self.workspace.position_codec.client_num_units)

    @staticmethod
    def place(uri: str) -> tuple[str, Path]:
        """The name the document's spans carry, and the folder its imports are looked up
        in: its file's, or for a buffer that is no file, nldsl's library (nothing else)."""
        path = to_fs_path(uri) if uri_scheme(uri) == "file" else None
        if path is None:
            return uri, library_root()
        real = Path(path).resolve()
        return str(real), real.parent

    def publish(self, uri: str, version: int | None) -> None:
        try:
            a, pos = self.analysis(uri)
            out = [_diagnostic(d, span, a, pos) for d, span in a.diagnostics()]
        except Exception:  # never leave stale diagnostics on a failure of ours
            log.exception("checking %s failed", uri)
            out = []
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=out,
                                                                              version=version))


def _diagnostic(d: Diagnostic, span: Span | None, a: Analysis, pos: Positions) -> types.Diagnostic:
    message = d.message + (f"\nhelp: {d.help}" if d.help else "")
    related = None
    if d.span is not None and d.span.file != a.name:  # shown at the import that leads there
        message = f"{d.span.file}:{d.span.line}:{d.span.col}: {message}"
        source = a.report.sources.get(d.span.file)
        where = Positions(Text(source), pos.units).range(d.span) if source is not None else pos.range(None)
        related = [types.DiagnosticRelatedInformation(
            location=types.Location(uri=from_fs_path(d.span.file) or d.span.file, range=where), message=d.message)]
    severity = types.DiagnosticSeverity.Error if d.severity == "error" else types.DiagnosticSeverity.Warning
    return types.Diagnostic(range=pos.range(span), message=message, severity=severity, code=d.code, source="nldsl",
                            related_information=related)


def _guarded(empty):
    """A request that fails inside is logged and answered with `empty`, never an error."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(ls, params):
            try:
                return fn(ls, params)
            except Exception:
                log.exception("%s failed", fn.__name__)
                return empty
        return run
    return wrap


def make_server() -> NLServer:
    server = NLServer()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: NLServer, params: types.DidOpenTextDocumentParams):
        ls.publish(params.text_document.uri, params.text_document.version)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: NLServer, params: types.DidChangeTextDocumentParams):
        ls.publish(params.text_document.uri, params.text_document.version)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: NLServer, params: types.DidSaveTextDocumentParams):  # the files it imports may have changed
        ls.analyses.pop(params.text_document.uri, None)
        ls.publish(params.text_document.uri, None)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def files_changed(ls: NLServer, params: types.DidChangeWatchedFilesParams):  # an import may have changed
        for uri in list(ls.analyses):
            ls.analyses.pop(uri, None)
            ls.publish(uri, ls.workspace.get_text_document(uri).version)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: NLServer, params: types.DidCloseTextDocumentParams):
        uri = params.text_document.uri
        ls.analyses.pop(uri, None)
        ls.parsed.pop(uri, None)
        ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    @_guarded(None)
    def hover(ls: NLServer, params: types.HoverParams):
        a, pos = ls.analysis(params.text_document.uri)
        line, col = pos.from_client(params.position)
        ref = a.index.at(line, col) if a.index else None
        target = a.resolve(ref) if ref else None
        text = a.hover(target) if target else None
        if not text:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text),
                           range=pos.range(ref.span))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    @_guarded(None)
    def definition(ls: NLServer, params: types.DefinitionParams):
        a, pos = ls.analysis(params.text_document.uri)
        target = a.target_at(*pos.from_client(params.position))
        if target is None or target.span is None:
            return None
        if target.file is None:
            return types.Location(uri=params.text_document.uri, range=pos.range(target.span))
        source = a.report.sources.get(target.file)
        where = Positions(Text(source), pos.units).range(target.span) if source is not None else pos.range(None)
        return types.Location(uri=from_fs_path(target.file) or target.file, range=where)

    @server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    @_guarded([])
    def document_symbol(ls: NLServer, params: types.DocumentSymbolParams):
        a, pos = ls.analysis(params.text_document.uri)
        return symbols(a, pos)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[":", ".", "(", ",", " "]))
    @_guarded([])
    def completion(ls: NLServer, params: types.CompletionParams):
        uri = params.text_document.uri
        a, pos = ls.analysis(uri)
        line, col = pos.from_client(params.position)
        return completions(a, ls.parsed.get(uri), line, col)

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    @_guarded([])
    def formatting(ls: NLServer, params: types.DocumentFormattingParams):
        a, pos = ls.analysis(params.text_document.uri)
        doc = ls.workspace.get_text_document(params.text_document.uri)
        formatted = format_text(doc.source, a.name)
        if formatted is None or formatted == doc.source:
            return []
        end = Positions(a.text, pos.units).to_client(len(a.text.lines), len(a.text.lines[-1]) + 1)
        return [types.TextEdit(range=types.Range(start=types.Position(line=0, character=0), end=end),
                               new_text=formatted)]

    return server


def serve() -> None:
    """Answer an editor on standard input and output until it says `exit`."""
    logging.basicConfig(level=logging.WARNING, format="nldsl lsp: %(levelname)s: %(message)s")
    make_server().start_io()
