"""Parse: `.nl` text -> `ast.Module`, or located diagnostics.

The grammar is `grammar/nl.lark`, shipped inside the package as `nldsl.grammar`.
Before lark sees the text, cheap guards turn hostile input (binary, huge, absurdly
nested) into diagnostics rather than hangs or recursion errors.
"""
from __future__ import annotations

import functools
import math
import unicodedata
from importlib import resources

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .diagnostics import Report, Span
from .fold import MAX_NUMBER

MAX_BYTES = 1 << 20  # a spec is a page of text; a megabyte is a mistake
MAX_DEPTH = 64  # brackets, and operators within one expression
BOM = "\ufeff"  # some editors start UTF-8 files with it

_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9}

# How each terminal reads in an error message.
_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a quoted path like "optim/adam.nl"',
    "$END": "the end of the file",
}


@functools.cache
def parser() -> Lark:
    grammar = resources.files("nldsl.grammar").joinpath("nl.lark").read_text()
    # `expr` and `period` also start a parse: an edit's value is one of them (compiler/edit.py)
    return Lark(grammar, parser="lalr", strict=True, propagate_positions=True, maybe_placeholders=True,
                start=["start", "expr", "period"])


def _describe(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    try:
        pattern = parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"`{pattern.value}`" if pattern.type == "str" else terminal.lower()


def _expected(names) -> str:
    words = sorted({_describe(n) for n in names if not n.startswith("_")})
    if len(words) > 6:
        words = words[:6] + ["…"]
    return ", ".join(words)


class _Builder(Transformer_NonRecursive):
    """lark tree -> ast nodes. Non-recursive, so deep input cannot blow the stack."""

    def __init__(self, file: str, report: Report):
        super().__init__()
        self.file, self.report = file, report
        self.depth: dict[int, int] = {}

    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, t: Token) -> Span:
        return Span(self.file, t.line, t.column, t.end_line, t.end_column)

    def _expr(self, node, *children):
        d = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        self.depth[id(node)] = d
        if d == MAX_DEPTH + 1:
            self.report.error("NL002", f"expression nested more than {MAX_DEPTH} deep", node.span,
                              "split it into named flows")
        return node

    # --- expressions
    @v_args(meta=True)
    def number(self, meta, children):
        (tok,) = children
        text = str(tok)
        scale = _SUFFIX.get(text[-1], 1)
        body = text[:-1] if scale != 1 else text
        value = float(body) * scale
        if value.is_integer() and "." not in body and "e" not in body.lower():
            value = int(body.lstrip("0") or "0") * scale  # leading zeros: int() refuses over 4300 digits
        node = ast.Number(value, text, self._span(meta))
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            self.report.error("NL160", f"number `{text}` is out of range", node.span,
                              f"numbers must be finite and at most {MAX_NUMBER:.0e}")
        return self._expr(node)

    @v_args(meta=True)
    def name(self, meta, children):
        return self._expr(ast.Name(str(children[0]), self._span(meta)))

    @v_args(meta=True)
    def member(self, meta, children):
        return self._expr(ast.Member(str(children[0]), str(children[1]), self._span(meta)))

    @v_args(meta=True)
    def call(self, meta, children):
        func, args = children
        args = tuple(args or ())
        return self._expr(ast.Call(str(func), args, self._span(meta)), *(a.value for a in args))

    def _binary(op):
        @v_args(meta=True)
        def build(self, meta, children):
            left, right = children
            return self._expr(ast.BinOp(op, left, right, self._span(meta)), left, right)

        return build

    add, sub, mul, div, pow = _binary("+"), _binary("-"), _binary("*"), _binary("/"), _binary("**")
    del _binary

    @v_args(meta=True)
    def neg(self, meta, children):
        return self._expr(ast.Neg(children[0], self._span(meta)), children[0])

    def args(self, children):
        return tuple(c for c in children if c is not None)

    def elements(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def vector(self, meta, children):
        items = children[0] or ()
        return self._expr(ast.Vector(tuple(items), self._span(meta)), *items)

    @v_args(meta=True)
    def positional(self, meta, children):
        return ast.Arg(children[0], None, self._span(meta))

    @v_args(meta=True)
    def keyword(self, meta, children):
        return ast.Arg(children[1], str(children[0]), self._span(meta))

    @v_args(meta=True)
    def arrow(self, meta, children):
        src, dst = children
        return ast.Arg(self._expr(ast.Arrow(src, dst, self._span(meta)), src, dst), None, self._span(meta))

    # --- statements
    def names(self, children):
        return tuple(children)

    def _named(self, toks):
        return tuple(str(t) for t in toks), tuple(self._tok_span(t) for t in toks)

    @v_args(meta=True)
    def setting(self, meta, c):
        return ast.Setting(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def every(self, meta, c):
        count, unit = c
        word = str(unit.children[0])
        return ast.Period("every", count, word if word.endswith("s") else word + "s", self._span(meta))

    @v_args(meta=True)
    def outer(self, meta, c):
        return ast.Period("outer", span=self._span(meta))

    @v_args(meta=True)
    def frozen(self, meta, c):
        return ast.Period("frozen", span=self._span(meta))

    @v_args(meta=True)
    def memory(self, meta, c):
        names, spans = self._named(c[0])
        return ast.Memory(names, c[1], self._span(meta), spans)

    @v_args(meta=True)
    def flow(self, meta, c):
        return ast.Flow(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def learn(self, meta, c):
        names, spans = self._named(c[0])
        read = str(c[3].children[1]) if c[3] is not None else None
        return ast.Learn(names, c[1], c[2], read, self._span(meta), spans)

    @v_args(meta=True)
    def out(self, meta, c):
        return ast.Out(c[0], self._span(meta))

    @v_args(meta=True)
    def level(self, meta, c):
        return ast.Level(str(c[0]), c[1], tuple(c[2:]), self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, c):
        return ast.Assign(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def block(self, meta, c):
        return ast.Block(c[0], tuple(c[1:]), self._span(meta))

    @v_args(meta=True)
    def objective(self, meta, c):
        return ast.Objective(c[0], self._span(meta))

    @v_args(meta=True)
    def optimizer_use(self, meta, c):
        return ast.OptimizerUse(c[0], str(c[1]) if c[1] is not None else None, self._span(meta))

    @v_args(meta=True)
    def hint(self, meta, c):
        return ast.Hint(str(c[0]), str(c[1]), c[2], self._span(meta))

    @v_args(meta=True)
    def schedule(self, meta, c):
        return ast.Schedule(tuple(c), self._span(meta))

    @v_args(meta=True)
    def model(self, meta, c):
        return ast.Model(str(c[0]), tuple(c[1:]), self._span(meta))

    @v_args(meta=True)
    def param(self, meta, c):
        return ast.Param(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def update(self, meta, c):
        return ast.Update(str(c[0]), str(c[1].children[0]), c[2], self._span(meta))

    @v_args(meta=True)
    def optimizer_def(self, meta, c):
        name, rest = str(c[0]), c[1:]
        params = tuple(p for p in rest if isinstance(p, ast.Param))
        body = tuple(s for s in rest if s is not None and not isinstance(s, ast.Param))
        return ast.OptimizerDef(name, params, body, self._span(meta))

    @v_args(meta=True)
    def import_(self, meta, c):
        return ast.Import(str(c[0])[1:-1], self._span(meta))

    def start(self, children):
        return tuple(children)


def _guard(text: str, file: str, report: Report) -> bool:
    """Reject what no spec looks like before lark spends time on it."""
    def at(line, col):
        return Span(file, line, col, line, col + 1)

    if len(text) > MAX_BYTES:
        report.error("NL001", f"file is {len(text):,} characters; a spec is at most {MAX_BYTES:,}", at(1, 1))
        return False
    depth, line, col, comment = 0, 1, 0, False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment = line + 1, 0, False
        elif comment:
            continue
        elif ch == "#":
            comment = True
        elif ch == "\x00":
            report.error("NL001", "file contains a NUL byte; is it a binary file?", at(line, col))
            return False
        elif ch in "({[":
            depth += 1
            if depth > MAX_DEPTH:
                report.error("NL002", f"brackets nested more than {MAX_DEPTH} deep", at(line, col))
                return False
        elif ch in ")}]":
            depth = max(0, depth - 1)
    return True


def parse(text: str, file: str, report: Report, quote: bool = True) -> ast.Module | None:
    """Parse one file's text. On error, records diagnostics and returns None.
    `quote=False` keeps the text out of the diagnostics (a file that is not a spec)."""
    text = text.removeprefix(BOM)  # not part of the text: columns count from what follows it
    items = _build(text, file, report, "start", quote)
    return None if items is None else ast.Module(file, items, _comments(text))


def fragment(text: str, start: str, file: str, report: Report):
    """One expression (`start="expr"`) or period (`"period"`) written outside a spec, as
    its AST node, or None after a diagnostic. `file` names where it came from (an
    edit's key, `<titans.rule>`): its diagnostics point into it as into a file."""
    return _build(text, file, report, start, True)


def _build(text: str, file: str, report: Report, start: str, quote: bool):
    if quote:
        report.sources[file] = text
    if not _guard(text, file, report):
        return None
    try:
        tree = parser().parse(text, start=start)
    except UnexpectedInput as e:
        code, message, span, hint = _syntax_error(e, text, file)
        if not quote:  # say where, never what is written there
            message, hint = "syntax error: this file is not a spec", "a spec's name ends in `.nl`; its text is not shown"
        report.error(code, message, span, hint)
        return None
    return _Builder(file, report).transform(tree)


def _comments(text: str) -> tuple[ast.Comment, ...]:
    """`#` comments with their lines, for the formatter. Strings are one-line paths,
    the only place a `#` is not a comment."""
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        in_str = False
        for i, ch in enumerate(line):
            if ch == '"':
                in_str = not in_str
            elif ch == "#" and not in_str:
                out.append(ast.Comment(line[i:].rstrip(), n))
                break
    return tuple(out)


def _syntax_error(e: UnexpectedInput, text: str, file: str):
    line, col = max(getattr(e, "line", 1), 1), max(getattr(e, "column", 1), 1)
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        what = f"character {ch!r}" if ch.isprintable() else f"character U+{ord(ch):04X}"
        hint = "names are ASCII letters, digits and `_`" if not ch.isascii() else None
        if not ch.isascii() and unicodedata.category(ch) == "Nd":  # e.g. a fullwidth or Arabic-Indic digit
            hint = f"numbers are written with the digits 0-9: write `{_ascii_digits(text, e.pos_in_stream)}`"
        return "NL010", f"unexpected {what}", Span(file, line, col, line, col + 1), hint
    expected = _accepts(e)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = text.rstrip().split("\n")  # the parser counts lines at "\n" only
        last = len(lines)
        span = Span(file, last, len(lines[-1]) + 1, last, len(lines[-1]) + 2)
        return "NL012", "unexpected end of file", span, _unclosed(text) or f"expected {_expected(expected)}"
    tok = e.token
    span = Span(file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
    hint = _curated(e, expected, text) or f"expected {_expected(expected)}"
    what = {"NAME": "name", "NUMBER": "number", "STRING": "string"}.get(tok.type)
    return "NL011", f"unexpected {f'{what} `{tok}`' if what else _describe(tok.type)}", span, hint


def _ascii_digits(text: str, start: int) -> str:
    """The run of digits of any script at `start`, in ASCII digits."""
    end = start
    while end < len(text) and unicodedata.category(text[end]) == "Nd":
        end += 1
    return "".join(str(unicodedata.digit(c)) for c in text[start:end])


def _accepts(e: UnexpectedInput) -> set[str]:
    """The terminals that could come next. LALR merges the lookaheads of states shared
    by several rules (expressions, levels), so `e.expected` may offer tokens that this
    place does not take; the interactive parser tries each one."""
    try:
        return set(e.interactive_parser.accepts())
    except Exception:  # no interactive parser for this error: fall back to the table
        return set(getattr(e, "expected", ()) or ())


def _unclosed(text: str) -> str | None:
    """For an unexpected end of file: the innermost bracket never closed, if any."""
    stack = []
    for n, line in enumerate(text.split("\n"), 1):
        in_str = False
        for ch in line:
            if ch == '"':
                in_str = not in_str
            elif in_str:
                continue
            elif ch == "#":
                break
            elif ch in _CLOSE:
                stack.append((ch, n))
            elif ch in _CLOSE.values() and stack:
                stack.pop()
    if not stack:
        return None
    ch, n = stack[-1]
    return f"the `{ch}` on line {n} is never closed; add `{_CLOSE[ch]}`"


_CLOSE = {"(": ")", "{": "}", "[": "]"}


def _curated(e: UnexpectedToken, exp: set[str], text: str) -> str | None:
    """Advice for mistakes people make, keyed on what the parser expected."""
    if e.token.type == "EQUAL" and "COLON" in exp:
        return "options are written `name: value`"
    if exp == {"COLON", "COMMA"}:
        return "write the names, then `:` and what they are, e.g. `memory k, v : mlp(dim)`"
    if "UNIT" in exp or {"TOKEN", "TOKENS", "STEP", "STEPS"} & exp:
        return "a period reads `every 16 tokens` or `every 1 step`"
    if "MODEL" in exp and e.token.type in ("NAME", "LEVEL", "BLOCK", "OBJECTIVE", "SCHEDULE", "FLOW", "UPDATE"):
        if "}" in text[:e.token.start_pos]:
            return f"`{e.token}` is outside any model or optimizer: is there one `}}` too many above?"
        return "a spec holds `import`s, `model NAME { ... }` and `optimizer NAME(...) { ... }`"
    return None
