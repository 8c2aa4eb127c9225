"""The canonical formatter: `ast.Module` (+ its source text) -> canonical `.nl` text.

The examples under examples/ are written in the canonical style, and formatting one
of them gives it back byte for byte (except where noted in tests/test_format.py).

Layout rules, all deterministic and idempotent (formatting formatted text changes
nothing):

* Two spaces of indentation, one statement per line, no `;`.
* Operators get one space either side; parentheses only where the tree needs them.
* A `level` with exactly one statement stays on one line, `level f outer { out x }`,
  when it was on one line in the source and fits in 100 columns; every other block
  is multi-line. An empty block prints as `{}`.
* Blank lines: a run of blank source lines between two statements (or comments)
  becomes one blank line; none after `{` or before `}`. At the top level, items are
  always separated by one blank line (consecutive imports excepted).
* Comments are never lost, duplicated or reordered. A comment on its own line stays
  on its own line, indented like the statement that follows it (or like the body
  when it comes last in a block). A comment after code stays after that code,
  separated by exactly three spaces: after a statement, after a block's `{` or after
  its `}`. A comment inside a statement that spans several lines moves to its own
  line just before that statement.
"""
from __future__ import annotations

from . import ast
from .diagnostics import Report

INDENT = "  "
WIDTH = 100  # a one-line level must fit in this many columns
TRAIL = "   "  # between code and its trailing comment

# ------------------------------------------------------------- expressions
_PREC_ARROW, _PREC_SUM, _PREC_PRODUCT, _PREC_UNARY, _PREC_POWER, _PREC_ATOM = range(6)
_BINARY = {"+": _PREC_SUM, "-": _PREC_SUM, "*": _PREC_PRODUCT, "/": _PREC_PRODUCT}


def format_expr(e: ast.Expr) -> str:
    """An expression with the fewest parentheses that parse back to the same tree."""
    return _expr(e)[0]


def _wrap(part: tuple[str, int], need: int) -> str:
    text, prec = part
    return text if prec >= need else f"({text})"


def _expr(e) -> tuple[str, int]:
    # Iterative over the left spine of long `a + b + c + ...` chains would be nicer,
    # but the parser caps nesting at 64, far below Python's recursion limit.
    if isinstance(e, ast.Number):
        return e.text, _PREC_ATOM
    if isinstance(e, ast.Name):
        return e.id, _PREC_ATOM
    if isinstance(e, ast.Member):
        return f"{e.owner}.{e.name}", _PREC_ATOM
    if isinstance(e, ast.Call):
        return f"{e.func}({', '.join(_arg(a) for a in e.args)})", _PREC_ATOM
    if isinstance(e, ast.Vector):
        return f"[{', '.join(format_expr(i) for i in e.items)}]", _PREC_ATOM
    if isinstance(e, ast.Neg):
        return "-" + _wrap(_expr(e.operand), _PREC_UNARY), _PREC_UNARY
    if isinstance(e, ast.BinOp):
        if e.op == "**":  # power: atom "**" unary
            left = _wrap(_expr(e.left), _PREC_ATOM)
            right = _wrap(_expr(e.right), _PREC_UNARY)
            return f"{left} ** {right}", _PREC_POWER
        prec = _BINARY[e.op]  # left-associative: the right operand binds tighter
        left = _wrap(_expr(e.left), prec)
        right = _wrap(_expr(e.right), prec + 1)
        return f"{left} {e.op} {right}", prec
    if isinstance(e, ast.Arrow):  # only valid as a whole call argument
        return f"{format_expr(e.src)} -> {format_expr(e.dst)}", _PREC_ARROW
    raise TypeError(f"not an expression: {e!r}")


def _arg(a: ast.Arg) -> str:
    value = format_expr(a.value)
    return f"{a.key}: {value}" if a.key is not None else value


# -------------------------------------------------------------- statements
def _period(p: ast.Period) -> str:
    if p.kind != "every":
        return p.kind
    unit = p.unit or "tokens"
    if isinstance(p.count, ast.Number) and p.count.value == 1:
        unit = unit[:-1] if unit.endswith("s") else unit
    return f"every {format_expr(p.count)} {unit}"


def _simple(s) -> str:
    """A one-line statement (everything but the ones with a body)."""
    if isinstance(s, ast.Setting):
        return f"{s.name} {format_expr(s.value)}"
    if isinstance(s, ast.Memory):
        return f"memory {', '.join(s.names)} : {format_expr(s.kind)}"
    if isinstance(s, ast.Flow):
        return f"flow {s.name} = {format_expr(s.value)}"
    if isinstance(s, ast.Learn):
        text = f"learn {', '.join(s.names)} : {format_expr(s.objective)}"
        if s.rule is not None:
            text += f" by {format_expr(s.rule)}"
        if s.read is not None:
            text += f" read {s.read}"
        return text
    if isinstance(s, ast.Out):
        return f"out {format_expr(s.value)}"
    if isinstance(s, ast.Assign):
        return f"{s.name} = {format_expr(s.value)}"
    if isinstance(s, ast.Objective):
        return f"objective {format_expr(s.value)}"
    if isinstance(s, ast.OptimizerUse):
        text = f"optimizer {format_expr(s.value)}"
        return text + (f" for {s.selector}" if s.selector is not None else "")
    if isinstance(s, ast.Hint):
        return f"{s.level}.{s.key} = {format_expr(s.value)}"
    if isinstance(s, ast.Update):
        return f"update {s.target} {s.op} {format_expr(s.value)}"
    if isinstance(s, ast.Import):
        return f'import "{s.path}"'
    raise TypeError(f"not a statement: {s!r}")


_CONTAINERS = (ast.Model, ast.Level, ast.Block, ast.Schedule, ast.OptimizerDef)


def _children(node) -> tuple:
    if isinstance(node, ast.Schedule):
        return node.hints
    return node.body


def _header(node) -> str:
    if isinstance(node, ast.Model):
        return f"model {node.name}"
    if isinstance(node, ast.Level):
        return f"level {node.name} {_period(node.period)}"
    if isinstance(node, ast.Block):
        return "block" if node.repeat is None else f"block repeat {format_expr(node.repeat)}"
    if isinstance(node, ast.Schedule):
        return "schedule"
    if isinstance(node, ast.OptimizerDef):
        params = ", ".join(f"{p.name} = {format_expr(p.default)}" for p in node.params)
        return f"optimizer {node.name}({params})"
    raise TypeError(f"not a block: {node!r}")


def _lines(span) -> tuple[int, int] | None:
    if span is None:
        return None
    return span.line, span.end_line


# --------------------------------------------------------------- formatter
class _Formatter:
    def __init__(self, module: ast.Module, source: str):
        self.module = module
        # Split on \n only: lark counts lines that way (splitlines() would also break
        # on \f, \r, \u2028..., and the line numbers of spans would not match).
        self.source_lines = source.split("\n")
        # Where each comment goes, keyed by id() of the node (equal nodes may repeat).
        self.leading: dict[int, list[ast.Comment]] = {}  # own lines, before a statement
        self.trailing: dict[int, ast.Comment] = {}  # after a statement or a block's `}`
        self.opening: dict[int, ast.Comment] = {}  # after a block's `{`
        self.inner: dict[int, list[ast.Comment]] = {}  # own lines in a body (id(module) too)
        for c in sorted(module.comments, key=lambda c: c.line):
            self._place(c)
        self.out: list[str] = []

    # --- comments
    def _place(self, c: ast.Comment) -> None:
        line, container, children = c.line, None, self.module.items
        while True:
            child = None
            for ch in children:
                r = _lines(ch.span)
                if r is not None and r[0] <= line <= r[1]:
                    child = ch  # the last one containing the line
            if child is None:
                if container is not None and line == container.span.line:
                    self._put_single(self.opening, container, c)
                else:
                    key = id(container if container is not None else self.module)
                    self.inner.setdefault(key, []).append(c)
                return
            if isinstance(child, _CONTAINERS):
                if line == child.span.end_line:
                    self._put_single(self.trailing, child, c)
                    return
                container, children = child, _children(child)
                continue
            if line == child.span.end_line:
                self._put_single(self.trailing, child, c)
            else:
                self.leading.setdefault(id(child), []).append(c)
            return

    def _put_single(self, table, node, c) -> None:
        # One comment per source line, so each slot gets at most one; should a second
        # ever arrive, keep it on its own line rather than lose it.
        if id(node) in table:
            self.leading.setdefault(id(node), []).append(c)
        else:
            table[id(node)] = c

    def _trail(self, text: str, node) -> str:
        c = self.trailing.get(id(node))
        return text if c is None else f"{text}{TRAIL}{c.text}"

    # --- blank lines
    def _blank_between(self, a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
        """Whether the source has a blank line between two line ranges."""
        if a is None or b is None:
            return False
        for n in range(a[1] + 1, b[0]):
            if 1 <= n <= len(self.source_lines) and not self.source_lines[n - 1].strip():
                return True
        return False

    # --- output
    def emit(self, depth: int, text: str) -> None:
        self.out.append(INDENT * depth + text if text else "")

    def _entries(self, key: int, children) -> list[tuple[object, tuple[int, int] | None]]:
        """Own-line comments and children of a body, in source order, with line ranges."""
        comments = list(self.inner.get(key, ()))
        entries, i = [], 0
        for ch in children:
            r = _lines(ch.span)
            while i < len(comments) and r is not None and comments[i].line < r[0]:
                entries.append((comments[i], (comments[i].line, comments[i].line)))
                i += 1
            entries.append((ch, r))
        for c in comments[i:]:
            entries.append((c, (c.line, c.line)))
        return entries

    def module_text(self) -> str:
        entries = self._entries(id(self.module), self.module.items)
        for n, (entry, r) in enumerate(entries):
            if n:
                prev, prev_r = entries[n - 1]
                if self._blank_between(prev_r, r) or self._forced_blank(prev, entries[n:]):
                    self.emit(0, "")
            self._entry(0, entry)
        return "\n".join(self.out) + "\n" if self.out else ""

    @staticmethod
    def _forced_blank(prev, rest) -> bool:
        """Top-level items are separated by a blank line, consecutive imports aside.
        A comment between two items goes with the item after it."""
        if isinstance(prev, ast.Comment):
            return False
        following = next((e for e, _ in rest if not isinstance(e, ast.Comment)), None)
        if following is None:  # only comments remain
            return not isinstance(prev, ast.Import)
        return not (isinstance(prev, ast.Import) and isinstance(following, ast.Import))

    def _entry(self, depth: int, entry) -> None:
        if isinstance(entry, ast.Comment):
            self.emit(depth, entry.text)
            return
        for c in self.leading.get(id(entry), ()):
            self.emit(depth, c.text)
        if isinstance(entry, _CONTAINERS):
            self._container(depth, entry)
        else:
            self.emit(depth, self._trail(_simple(entry), entry))

    def _container(self, depth: int, node) -> None:
        head = _header(node)
        children = _children(node)
        opening = self.opening.get(id(node))
        inner = self.inner.get(id(node), ())
        if not children and opening is None and not inner:
            self.emit(depth, self._trail(head + " {}", node))
            return
        if self._one_line(depth, node, head, children, opening, inner):
            (only,) = children
            self.emit(depth, self._trail(f"{head} {{ {_simple(only)} }}", node))
            return
        self.emit(depth, head + " {" + (f"{TRAIL}{opening.text}" if opening else ""))
        entries = self._entries(id(node), children)
        for n, (entry, r) in enumerate(entries):
            if n and self._blank_between(entries[n - 1][1], r):
                self.emit(depth + 1, "")
            self._entry(depth + 1, entry)
        self.emit(depth, self._trail("}", node))

    def _one_line(self, depth, node, head, children, opening, inner) -> bool:
        if not isinstance(node, ast.Level) or len(children) != 1 or opening or inner:
            return False
        (only,) = children
        if node.span is None or node.span.line != node.span.end_line:
            return False
        if self.leading.get(id(only)) or id(only) in self.trailing:
            return False
        text = f"{INDENT * depth}{head} {{ {_simple(only)} }}"
        return len(text) <= WIDTH


def format_module(module: ast.Module, source: str = "") -> str:
    """The canonical text of a parsed module. `source` is the text it was parsed from:
    its blank lines are kept (collapsed) and its comments placed; spans and comments
    are taken from the module. A module built by hand (no spans) needs no source."""
    return _Formatter(module, source).module_text()


def format_text(text: str, file: str = "<text>", report: Report | None = None, quote: bool = True) -> str | None:
    """Parse and format. Returns None if parsing reported errors (a syntax error, a
    number out of range, an expression nested too deep); the diagnostics are then in
    `report` (pass one to see them). `quote=False`: a file that is not a spec, whose
    lines a diagnostic never shows."""
    from .parse import parse

    report = report if report is not None else Report()
    before = len(report.errors)
    module = parse(text, file, report, quote)
    if module is None or len(report.errors) > before:
        return None
    return format_module(module, text)
