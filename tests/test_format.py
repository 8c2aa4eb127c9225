"""The canonical formatter (compiler/format.py): examples, round trips, comments."""
from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nldsl.compiler import ast
from nldsl.compiler.diagnostics import Report
from nldsl.compiler.format import format_expr, format_module, format_text
from nldsl.compiler.parse import parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("**/*.nl"))


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse(text: str, file: str = "t.nl") -> ast.Module:
    report = Report()
    module = parse(text, file, report)
    assert module is not None and not report.errors, [d.message for d in report.diagnostics]
    return module


def _fmt(text: str) -> str:
    out = format_text(text, "t.nl")
    assert out is not None
    return out


# ------------------------------------------------------------------ examples
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_example_round_trips(path):
    text = path.read_text()
    module = _parse(text, str(path))
    out = format_module(module, text)
    assert out.endswith("\n") and not out.endswith("\n\n")
    again = _parse(out, str(path))
    assert again.items == module.items
    assert [c.text for c in again.comments] == [c.text for c in module.comments]
    assert format_module(again, out) == out
    assert out == text  # the examples are written in canonical form


def test_trailing_comments_are_set_three_spaces_after_the_code():
    assert _fmt("model m {\n  vocab 256         # bytes\n}\n") == "model m {\n  vocab 256   # bytes\n}\n"


# --------------------------------------------------------------- expressions
@pytest.mark.parametrize("src, want", [
    ("a + b * c", None), ("(a + b) * c", None), ("a - (b - c)", None), ("(a - b) - c", "a - b - c"),
    ("a / (b / c)", None), ("a / b / c", None), ("a * (b / c)", None), ("a + (b + c)", None),
    ("a ** b ** c", None), ("a ** (b ** c)", "a ** b ** c"), ("(a ** b) ** c", None),
    ("-a ** b", None), ("-(a ** b)", "-a ** b"), ("(-a) ** b", None), ("a ** -b", None),
    ("-(a + b)", None), ("--a", None), ("- (-a)", "--a"), ("-f(x) * 2", None), ("(-a) * b", "-a * b"),
    ("-(a * b)", None), ("a.b ** 2", None), ("f(a, key: -1e-3, b -> c + 1)", None), ("f()", None),
    ("g(x -> (a + b) * c, k: (a),)", "g(x -> (a + b) * c, k: a)"), ("2 ** -x ** y", None),
    ("((x))", "x"), ("a*b+c/d-e", "a * b + c / d - e"), ("16M * 1.", None),
])
def test_expression_parentheses(src, want):
    text = f"model m {{ x {src} }}"
    out = _fmt(text)
    assert out.splitlines()[1] == f"  x {want or src}"
    assert _parse(out).items == _parse(text).items


def test_statements_canonical():
    src = """model   m{vocab 256;dim 128;;
level a every 1 tokens{memory k,v:mlp(dim,hidden:4*dim);flow q=l2norm(proj(x))
learn k , v : l2(key,self(val)) by gd(lr:lr,decay:keep) read within;out mem(q)}
level b every 2 step { out x } level c outer{out x}level d frozen{
out x }
block repeat depth{x=x+f(x)}block{}
objective next_token optimizer adamw(lr:3e-4)for matrices
schedule{titans.tile=16}}
optimizer o(lr=1e-3,beta1=0.9,){update W-=lr*g;flow u=g}
import "optim/adam.nl"
"""
    assert _fmt(src) == """model m {
  vocab 256
  dim 128
  level a every 1 token {
    memory k, v : mlp(dim, hidden: 4 * dim)
    flow q = l2norm(proj(x))
    learn k, v : l2(key, self(val)) by gd(lr: lr, decay: keep) read within
    out mem(q)
  }
  level b every 2 steps { out x }
  level c outer { out x }
  level d frozen {
    out x
  }
  block repeat depth {
    x = x + f(x)
  }
  block {}
  objective next_token
  optimizer adamw(lr: 3e-4) for matrices
  schedule {
    titans.tile = 16
  }
}

optimizer o(lr = 1e-3, beta1 = 0.9) {
  update W -= lr * g
  flow u = g
}

import "optim/adam.nl"
"""


def test_one_line_level_rule():
    long = "mlp(dim, hidden: 4 * dim, act: gelu, init: zeros, residual, heads: heads, extra: 1)"
    src = f"""model m {{
  level a outer {{ memory f : mlp(dim) }}
  level b outer {{
    memory f : mlp(dim)
  }}
  level c outer {{ memory f : {long} }}
  level d outer {{ memory f : mlp(dim); out f(x) }}
  level e outer {{ memory f : mlp(dim) }}   # trailing
  level g outer {{}}
}}
"""
    assert _fmt(src) == f"""model m {{
  level a outer {{ memory f : mlp(dim) }}
  level b outer {{
    memory f : mlp(dim)
  }}
  level c outer {{
    memory f : {long}
  }}
  level d outer {{
    memory f : mlp(dim)
    out f(x)
  }}
  level e outer {{ memory f : mlp(dim) }}   # trailing
  level g outer {{}}
}}
"""


def test_blank_lines():
    src = "\n\nimport \"a.nl\"\nimport \"b.nl\"\nmodel m {\n\n\n  dim 1\n\n \t\n\n  heads 2\n  depth 3\n\n}" \
          "\noptimizer o() {\n\n}\n\n\n"
    assert _fmt(src) == (
        'import "a.nl"\nimport "b.nl"\n\nmodel m {\n  dim 1\n\n  heads 2\n  depth 3\n}\n\n'
        "optimizer o() {}\n"
    )
    assert _fmt("") == ""
    assert _fmt("# only a comment") == "# only a comment\n"


def test_parse_failure_returns_none():
    report = Report()
    assert format_text("model {", "bad.nl", report) is None
    assert report.errors


# ------------------------------------------------------------------ comments
COMMENTED = """# file header 1
# file header 2

import "optim/adam.nl"   # trailing import
# before model
model m {   # after model brace
  # first in model
  vocab 256         # trailing setting

  # before level
  level a every 16 tokens {   # after level brace
    # first in level
    memory k : mlp(dim)   # trailing memory
    flow q = f(x,
      # inside a flow
      y)   # after the flow
    # last in level
  }   # after level close
  level b outer { out x }   # after one-line level
  block {
    x = x + 1   # trailing assign
    # last in block
  }
  schedule {
    # only in schedule
  }
  # last in model
}   # after model close
# between items

optimizer o(lr = 1,   # in params
  b = 2,   # more params
) {
  update W -= lr * g;   # trailing update
}
# end of file 1

# end of file 2
"""

COMMENTED_FORMATTED = """# file header 1
# file header 2

import "optim/adam.nl"   # trailing import

# before model
model m {   # after model brace
  # first in model
  vocab 256   # trailing setting

  # before level
  level a every 16 tokens {   # after level brace
    # first in level
    memory k : mlp(dim)   # trailing memory
    # inside a flow
    flow q = f(x, y)   # after the flow
    # last in level
  }   # after level close
  level b outer { out x }   # after one-line level
  block {
    x = x + 1   # trailing assign
    # last in block
  }
  schedule {
    # only in schedule
  }
  # last in model
}   # after model close

# between items

optimizer o(lr = 1, b = 2) {   # in params
  # more params
  update W -= lr * g   # trailing update
}

# end of file 1

# end of file 2
"""


def _comment_texts(text: str) -> list[str]:
    return [c.text for c in _parse(text).comments]


def test_comments_everywhere():
    out = _fmt(COMMENTED)
    assert out == COMMENTED_FORMATTED
    assert _comment_texts(out) == _comment_texts(COMMENTED)
    assert _comment_texts(out) == re.findall(r"#[^\n]*", COMMENTED)
    assert _parse(out).items == _parse(COMMENTED).items
    assert _fmt(out) == out


def test_comments_in_strings_and_odd_places():
    src = 'import "a#b.nl"   # real\nmodel m { dim 1; heads 2 # on two\n}\n'
    out = _fmt(src)
    assert out == 'import "a#b.nl"   # real\n\nmodel m {\n  dim 1\n  heads 2   # on two\n}\n'
    src = "model m {\n  level a every\n  # inside header\n  4 tokens {\n    out x\n  }\n  dim 1\n  ;   # semicolon line\n}\n"
    out = _fmt(src)
    assert _comment_texts(out) == _comment_texts(src)
    assert _fmt(out) == out
    src = "model m {\n  block { # opening\n  } # closing\n  block {} # after empty\n}\n"
    out = _fmt(src)
    assert out == "model m {\n  block {   # opening\n  }   # closing\n  block {}   # after empty\n}\n"
    assert _fmt(out) == out


# ------------------------------------------------------------- random trees
KEYWORDS = {
    "import", "model", "level", "every", "outer", "frozen", "token", "tokens", "step", "steps",
    "memory", "flow", "learn", "by", "read", "before", "within", "out", "block", "repeat",
    "objective", "optimizer", "for", "schedule", "update",
}
NUMBER_TEXTS = ["0", "1", "2", "16", "256", "1e-3", "3e-4", "0.5", "0.999", "1M", "16M", "2K",
                "1G", ".5", "1.", "2E+3", "1e0", "1.5K", "007"]


@functools.cache
def _number(text: str) -> ast.Number:
    return _parse(f"model m {{ x {text} }}").items[0].body[0].value


names = st.from_regex(r"[a-dfghW_][a-dfghW_0-9]{0,2}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
numbers = st.sampled_from(NUMBER_TEXTS).map(_number)
leaves = st.one_of(
    numbers,
    names.map(ast.Name),
    st.builds(ast.Member, names, names),
)


def _extend(inner):
    arg = st.one_of(
        st.builds(ast.Arg, inner),
        st.builds(ast.Arg, inner, names),
        st.builds(lambda s, d: ast.Arg(ast.Arrow(s, d)), inner, inner),
    )
    return st.one_of(
        st.builds(ast.BinOp, st.sampled_from(["+", "-", "*", "/", "**"]), inner, inner),
        st.builds(ast.Neg, inner),
        st.builds(ast.Call, names, st.lists(arg, max_size=3).map(tuple)),
        st.builds(ast.Vector, st.lists(inner, max_size=3).map(tuple)),
    )


exprs = st.recursive(leaves, _extend, max_leaves=10)
name_lists = st.lists(names, min_size=1, max_size=3).map(tuple)

periods = st.one_of(
    st.builds(lambda c, u: ast.Period("every", c, u), exprs, st.sampled_from(["tokens", "steps"])),
    st.just(ast.Period("outer")),
    st.just(ast.Period("frozen")),
)
level_stmts = st.one_of(
    st.builds(ast.Memory, name_lists, exprs),
    st.builds(ast.Flow, names, exprs),
    st.builds(ast.Learn, name_lists, exprs, st.none() | exprs, st.sampled_from([None, "before", "within"])),
    st.builds(ast.Out, exprs),
)
levels = st.builds(ast.Level, names, periods, st.lists(level_stmts, max_size=3).map(tuple))
model_stmts = st.one_of(
    st.builds(ast.Setting, names, exprs),
    levels,
    st.builds(ast.Block, st.none() | exprs, st.lists(st.builds(ast.Assign, names, exprs), max_size=3).map(tuple)),
    st.builds(ast.Objective, exprs),
    st.builds(ast.OptimizerUse, exprs, st.none() | names),
    st.builds(ast.Schedule, st.lists(st.builds(ast.Hint, names, names, exprs), max_size=2).map(tuple)),
)
models = st.builds(ast.Model, names, st.lists(model_stmts, max_size=5).map(tuple))
optimizer_stmts = st.one_of(
    levels,
    st.builds(ast.Update, names, st.sampled_from(["=", "-=", "+=", "*="]), exprs),
    st.builds(ast.Flow, names, exprs),
)
optimizers = st.builds(
    ast.OptimizerDef, names,
    st.lists(st.builds(ast.Param, names, exprs), max_size=3).map(tuple),
    st.lists(optimizer_stmts, max_size=4).map(tuple),
)
imports = st.builds(ast.Import, st.from_regex(r'[a-z/._#-]{1,12}', fullmatch=True))
modules = st.builds(ast.Module, st.just("gen.nl"), st.lists(st.one_of(imports, models, optimizers), max_size=4).map(tuple))


@FAST
@given(exprs)
def test_random_expressions_round_trip(e):
    text = f"model m {{ x {format_expr(e)} }}"
    assert _parse(text).items[0].body[0].value == e


@FAST
@given(modules)
def test_random_modules_round_trip(module):
    text = format_module(module)
    assert text == "" or (text.endswith("\n") and not text.endswith("\n\n"))
    parsed = _parse(text, "gen.nl")
    assert parsed.items == module.items
    assert format_module(parsed, text) == text


# ------------------------------------------------------------- perturbations
_TOKEN = re.compile(
    r'"[^"\n]*"|->|\*\*|[-+*]=|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?[KMG]?|[A-Za-z_][A-Za-z0-9_]*|\S'
)
_WORDISH = re.compile(r'[A-Za-z0-9_."]')


def _split_comment(line: str) -> tuple[str, str]:
    in_str = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_str = not in_str
        elif ch == "#" and not in_str:
            return line[:i], line[i:]
    return line, ""


def _needs_space(left: str, right: str) -> bool:
    a, b = left[-1], right[0]
    return bool(_WORDISH.match(a) and _WORDISH.match(b)) or (a in "-+*" and b in "=*>")


def _perturb(text: str, rng: random.Random) -> str:
    """Same tokens, same comments, same blank-line structure; different spacing,
    line breaks inside lines, `;` separators and statements joined onto one line."""
    lines = text.splitlines()
    out = []
    for n, line in enumerate(lines):
        code, comment = _split_comment(line)
        toks = _TOKEN.findall(code)
        if not toks and not comment:  # a blank line: one or more, any whitespace
            out.append("\n".join(rng.choice(["", " ", "\t", "  \t "]) for _ in range(rng.randint(1, 3))) + "\n")
            continue
        one_line_block = "{" in toks and toks[-1] == "}"
        may_break = not comment and not one_line_block
        if one_line_block and len(toks) >= 2 and toks[-2] != "{" and rng.random() < 0.5:
            toks = toks[:-1] + [";" * rng.randint(1, 2), "}"]
        piece = rng.choice(["", " ", "    ", "\t"])
        for i, tok in enumerate(toks):
            if i:
                gaps = [" ", "  ", "\t"]
                if not _needs_space(toks[i - 1], tok):
                    gaps.append("")
                if may_break:
                    gaps += ["\n", "\n   ", " \n\t"]
                piece += rng.choice(gaps)
            piece += tok
        if toks and toks[-1] not in "{}" and rng.random() < 0.3:
            piece += rng.choice([";", " ;", ";;"])
        if comment:
            piece += rng.choice(["" if toks else "", " ", "\t", "      "]) + comment
        nxt = lines[n + 1] if n + 1 < len(lines) else ""
        nxt_code, _ = _split_comment(nxt)
        join = (toks and not comment and toks[-1] != "{" and nxt_code.strip()
                and rng.random() < 0.3)
        piece += rng.choice([" ", "  "]) if join else rng.choice(["", " ", "\t"]) + "\n"
        out.append(piece)
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.randoms(use_true_random=False))
def test_perturbed_examples_format_alike(path, rng):
    text = path.read_text()
    perturbed = _perturb(text, rng)
    assert _parse(perturbed).items == _parse(text).items
    assert _fmt(perturbed) == _fmt(text)


def _sprinkle_comments(text: str, rng: random.Random) -> str:
    """Comments on their own lines and after code, anywhere a line can hold one:
    inside statements broken over lines, after `{`, after `}`, between items."""
    out, n = [], 0
    for line in text.split("\n"):
        if rng.random() < 0.2:
            out.append(rng.choice(["", "  ", "\t"]) + f"# own {n}")
            n += 1
        if line.strip() and not _split_comment(line)[1] and rng.random() < 0.3:
            line += rng.choice(["", " ", "   "]) + f"# after {n}"
            n += 1
        out.append(line)
    return "\n".join(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.randoms(use_true_random=False))
def test_random_comments_kept_in_order(path, rng):
    text = path.read_text()
    source = _sprinkle_comments(_perturb(text, rng), rng)
    out = _fmt(source)
    assert _comment_texts(out) == _comment_texts(source)
    assert _parse(out).items == _parse(text).items
    assert _fmt(out) == out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules, st.randoms(use_true_random=False))
def test_random_modules_perturbed(module, rng):
    text = format_module(module)
    assert _fmt(_perturb(text, rng)) == text
    source = _sprinkle_comments(_perturb(text, rng), rng)
    out = _fmt(source)
    assert _comment_texts(out) == _comment_texts(source)
    assert _parse(out).items == module.items
    assert _fmt(out) == out
