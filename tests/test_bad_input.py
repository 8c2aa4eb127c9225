"""Hostile and odd input: every case ends in located diagnostics (an `NLError` with a
code) or checks clean, through the API and the command line; never a traceback."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl.compiler import parse as parse_mod
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler.driver import check

ROOT = Path(__file__).resolve().parent.parent

# A small model that checks clean; `{name}`-free so it can be embedded anywhere.
GOOD = """model m {
  vocab 256
  dim 64
  level mem every 16 tokens {
    memory M : linear(dim)
    flow k = l2norm(proj(x))
    flow v = proj(x)
    learn M : l2(k, v) by gd(lr: 0.1)
    out M(k)
  }
  level ffn outer { memory f : mlp(dim, hidden: 2 * dim) }
  block repeat 2 {
    h = rmsnorm(x)
    x = x + mem(h)
    x = x + ffn(rmsnorm(x))
  }
  objective next_token
  optimizer adam(lr: 1e-3)
}
"""


def errors(source) -> list:
    """The diagnostics `check` raises for `source` (text, or a Path); [] if it checks clean.
    Anything but NLError escaping fails the test."""
    try:
        check(source)
    except NLError as e:
        assert e.diagnostics, "NLError without diagnostics"
        for d in e.diagnostics:
            assert re.fullmatch(r"NL\d{3}", d.code), d
        assert str(e)  # renders
        return e.diagnostics
    return []


def codes(source) -> set[str]:
    return {d.code for d in errors(source) if d.severity == "error"}


def test_good_checks_clean():
    assert errors(GOOD) == []


# ------------------------------------------------------------------ empty-ish
@pytest.mark.parametrize("text", ["", " ", "\n\n\n", "\t \r\n \f", "# only a comment", "# one\n\n   # two\n",
                                  ";", "# no newline at the end"], ids=repr)
def test_empty_files_define_nothing(text):
    """An empty file (or only whitespace and comments) is a valid spec that defines nothing."""
    if text == ";":  # a separator belongs after a statement
        assert codes(text) == {"NL011"}
        return
    spec = check(text)
    assert spec.models == () and spec.optimizers == ()


# ------------------------------------------------------------------ binary
def _garbage(seed: int, n: int = 2000) -> bytes:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(n))
    return data[:10] + b"\x00\xff\xfe" + data[10:]


@pytest.mark.parametrize("seed", range(5))
def test_binary_garbage_file(tmp_path, seed):
    path = tmp_path / "garbage.nl"
    path.write_bytes(_garbage(seed))
    (d,) = errors(path)
    assert d.code == "NL001" and "binary" in d.message
    assert (d.span.file, d.span.line) == (str(path), 1)


def test_nul_and_control_characters_as_text():
    assert codes("model m {\x00}") == {"NL001"}
    assert codes("model m { dim 64 \x07 }") == {"NL010"}
    (d,) = errors("model m {\n  vocab 256\x1b[31m\n}")
    assert d.code == "NL010" and "U+001B" in d.message
    assert "\x1b" not in str(NLError([d], {d.span.file: "model m {\n  vocab 256\x1b[31m\n}"}))


def test_latin1_file(tmp_path):
    path = tmp_path / "latin1.nl"
    path.write_bytes("# café\nmodel m {}\n".encode("latin-1"))
    (d,) = errors(path)
    assert d.code == "NL001" and "UTF-8" in d.message and (d.span.line, d.span.col) == (1, 6)


def test_utf8_bom_and_crlf(tmp_path):
    assert errors("\ufeff" + GOOD) == []  # a byte-order mark is not part of the text
    (d,) = errors("\ufeffmodel m { dim $ }")
    assert (d.code, d.span.line, d.span.col) == ("NL010", 1, 15)
    path = tmp_path / "bom.nl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert errors(path) == []
    assert errors(GOOD.replace("\n", "\r\n")) == []
    (d,) = errors("model m {\r\n  dim $\r\n}\r\n")
    assert (d.code, d.span.line, d.span.col) == ("NL010", 2, 7)


def test_form_feed_does_not_shift_lines():
    text = "model m {\f\n  dim $\n}\n"
    (d,) = errors(text)
    assert (d.code, d.span.line, d.span.col) == ("NL010", 2, 7)
    assert "   2 |   dim $" in str(NLError([d], {d.span.file: text}))


# ------------------------------------------------------------------ unicode
@pytest.mark.parametrize("text", [
    "model módel {}", "model m { dim 64 }\nmodel 模型 {}", "model m { level 🧠 outer {} }",
    "model m { vocab 256 dim 64 # comments may say anything: é 🧠 模型\n }", "model m { dim ６４ }",
    "model m { dim 64\u00a0}", "model m { dim 64\u200b}", "import \"🧠.nl\"",
], ids=repr)
def test_unicode(text):
    found = errors(text)
    assert found
    for d in found:
        assert d.span is not None and d.span.line >= 1 and d.span.col >= 1


def test_unicode_identifier_is_pointed_at():
    (d,) = errors("model m {\n  level mémoire outer {}\n}")
    assert (d.code, d.span.line, d.span.col) == ("NL010", 2, 10)
    assert "ASCII" in d.help


def test_emoji_in_comment_is_fine():
    assert errors("# 🧠 nested learning, ünïcödé\n" + GOOD) == []


# ------------------------------------------------------------------ size
@pytest.fixture
def no_parser(monkeypatch):
    """By construction: a huge input must be turned away before the parser runs."""
    def refuse():
        raise AssertionError("the parser was reached")

    monkeypatch.setattr(parse_mod, "parser", refuse)


def test_ten_megabytes_as_text(no_parser):
    text = ("# padding " + "x" * 90 + "\n") * 100_000
    assert len(text) >= 10_000_000
    (d,) = errors(text)
    assert d.code == "NL001" and "at most" in d.message


def test_ten_megabytes_as_file(tmp_path, no_parser, monkeypatch):
    path = tmp_path / "huge.nl"
    with open(path, "wb") as fh:
        fh.truncate(10 * 1024 * 1024)  # sparse: ten megabytes of NUL without writing them
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    (d,) = errors(path)
    assert d.code == "NL001" and "bytes" in d.message and d.span.file == str(path)


def test_just_under_the_limit_is_parsed():
    text = GOOD + ("#" * 99 + "\n") * ((parse_mod.MAX_BYTES - len(GOOD)) // 100)
    assert len(text) <= parse_mod.MAX_BYTES
    assert errors(text) == []


# ------------------------------------------------------------------ depth
@pytest.mark.parametrize("text", [
    "model m { dim " + "(" * 10_000 + "64" + ")" * 10_000 + " }",
    "model m { dim " + "(" * 10_000 + " }",
    "{" * 10_000,
    "model m " + "{" * 10_000 + "}" * 10_000,
    "model m { dim " + "f(" * 10_000 + "1" + ")" * 10_000 + " }",
], ids=["parens", "unclosed parens", "braces", "model braces", "calls"])
def test_nesting_ten_thousand_deep(text):
    assert codes(text) == {"NL002"}


@pytest.mark.parametrize("op", ["+", "*", "-", "/", "**"])
def test_ten_thousand_term_expression(op):
    text = "model m { vocab 256 dim " + op.join(["1"] * 10_000) + " }"
    assert codes(text) == {"NL002"}


def test_ten_thousand_unary_minus():
    assert codes("model m { dim " + "-" * 10_000 + "1 }") == {"NL002"}


def test_deep_but_allowed():
    depth = parse_mod.MAX_DEPTH - 3  # inside `model {`, `level {` and `proj(`: exactly at the limit
    text = GOOD.replace("flow v = proj(x)", "flow v = proj(" + "(" * depth + "x" + ")" * depth + ")")
    assert errors(text) == []


def test_many_statements():
    body = "\n".join(f"  s{i} {i}" for i in range(20_000))
    assert errors(GOOD.replace("  vocab 256\n", "  vocab 256\n" + body + "\n")) == []


# ------------------------------------------------------------------ long lines
def test_very_long_line_checks_clean():
    one_line = " ".join(GOOD.split())
    settings = " ".join(f"s{i} {i};" for i in range(30_000))
    text = one_line.replace("vocab 256", "vocab 256 " + settings)
    assert "\n" not in text and len(text) > 300_000
    assert errors(text) == []


def test_very_long_line_error_is_located():
    pad = " " * 500_000
    (d,) = errors("model m {" + pad + "dim $ }")
    assert (d.code, d.span.line, d.span.col) == ("NL010", 1, 10 + len(pad) + 4)


def test_very_long_name():
    name = "n" * 200_000
    found = errors(GOOD.replace("flow k =", f"flow {name} = proj(x)\n    flow k ="))
    assert found == []
    found = errors(GOOD.replace("out M(k)", f"out M({name})"))
    assert [d.code for d in found] == ["NL100"]


def test_very_long_optimizer_and_import_names():
    assert codes(GOOD.replace("adam(", "a" * 5000 + "(")) == {"NL100"}
    assert codes('import "' + "a" * 5000 + '.nl"\n' + GOOD) == {"NL020"}
    assert codes('import "' + "a/" * 5000 + 'b.nl"\n' + GOOD) == {"NL020"}


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("number", ["1e999", "99999999999999999999999", "1e19", "2e18", "1e400G", "9" * 400,
                                    "1" + "0" * 5000], ids=lambda s: s[:30])
def test_number_out_of_range(number):
    assert codes(GOOD.replace("dim 64", f"dim {number}")) == {"NL160"}


@pytest.mark.parametrize("number, expected", [("0" * 5000 + "64", set()), ("0" * 5000 + "1K", set()),
                                              ("0" * 5000 + ".5", {"NL115"}), ("0" * 5000, {"NL115"})],
                         ids=["64", "1K", ".5", "0"])
def test_leading_zeros(number, expected):
    """Python's int() refuses strings over 4300 digits; leading zeros do not make a number large."""
    assert codes(GOOD.replace("dim 64", f"dim {number}")) == expected


def test_many_errors_stay_linear():
    """Every error is reported; twenty thousand of them take seconds, not minutes."""
    text = GOOD.replace("vocab 256", "vocab 256\n" + "  vocab 256\n" * 20_000)
    found = errors(text)
    assert len(found) == 20_000 and {d.code for d in found} == {"NL101"}


@pytest.mark.parametrize("expr", ["2 ** 2000", "10 ** 10 ** 10", "1e18 * 1e18", "1 / 0", "0 ** -1", "(-8) ** 0.5",
                                  "1e-400", "-0", "0.0000001", "1e18 + 1e18"])
def test_computed_settings_out_of_range(expr):
    assert codes(GOOD.replace("dim 64", f"dim {expr}")) & {"NL160", "NL115"}


@pytest.mark.parametrize("expr", ["1e999", "1e18 * 1e18", "0.5", "0", "-1", "2 ** 30", "1 / 0", "dim / 0"])
@pytest.mark.parametrize("where", ["hidden: 2 * dim", "every 16 tokens", "repeat 2"])
def test_bad_sizes_periods_and_repeats(expr, where):
    word = where.split()[0]
    text = GOOD.replace(where, f"hidden: {expr}" if word == "hidden:" else f"every {expr} tokens"
                        if word == "every" else f"repeat {expr}")
    found = codes(text)
    assert found & {"NL160", "NL115", "NL120"} or (found == {"NL152"} and expr == "2 ** 30"), found  # a long period


@pytest.mark.parametrize("expr", ["1e999", "1e18 * 1e18", "1 / 0", "2 ** 2000", "dim / (dim - dim)"])
@pytest.mark.parametrize("where", ["lr: 0.1", "adam(lr: 1e-3", "flow v = proj(x)"])
def test_constant_out_of_range_anywhere(expr, where):
    new = {"lr: 0.1": f"lr: {expr}", "adam(lr: 1e-3": f"adam(lr: {expr}",
           "flow v = proj(x)": f"flow v = proj(x) * ({expr})"}[where]
    found = codes(GOOD.replace(where, new))
    assert found and found <= {"NL160", "NL100"}  # `dim` is not a name inside optimizer options


# ------------------------------------------------------------------ reserved names
RESERVED = ["class", "lambda", "def", "None", "True", "import", "return", "__init__", "__class__", "__dict__"]
POSITIONS = {
    "model": lambda n: GOOD.replace("model m", f"model {n}"),
    "level": lambda n: GOOD.replace("level ffn", f"level {n}").replace("ffn(rmsnorm", f"{n}(rmsnorm"),
    "memory": lambda n: GOOD.replace("memory f :", f"memory {n} :"),
    "memory list": lambda n: GOOD.replace("memory M :", f"memory M, {n} :").replace("learn M :", f"learn M, {n} :"),
    "flow": lambda n: GOOD.replace("flow v = proj(x)", f"flow {n} = proj(x)\n    flow v = {n}"),
    "setting": lambda n: GOOD.replace("vocab 256", f"vocab 256\n  {n} 3"),
    "block variable": lambda n: GOOD.replace("h = rmsnorm(x)", f"{n} = rmsnorm(x)\n    h = {n}"),
    "optimizer": lambda n: GOOD.replace("optimizer adam(lr: 1e-3)", f"optimizer {n}(lr: 1e-3)")
    + f"\noptimizer {n}(lr = 1e-3) {{ update W -= lr * g }}\n",
    "hyperparameter": lambda n: GOOD + f"\noptimizer o({n} = 1e-3) {{ update W -= {n} * g }}\n",
    "optimizer level": lambda n: GOOD + f"\noptimizer o(lr = 1) {{ level {n} every 1 step {{ memory b : elementwise\n"
    f"  learn b : dot(g) by gd(lr: 1) }}\n update W -= lr * b }}\n",
    "optimizer flow": lambda n: GOOD + f"\noptimizer o(lr = 1) {{ flow {n} = g\n update W -= lr * {n} }}\n",
}


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_everywhere(position, name):
    text = POSITIONS[position](name)
    assert text != GOOD
    found = codes(text)
    assert found, f"`{name}` accepted as a {position} name"
    if name in ("import",):  # a word of the grammar too: it may stop the parser first
        assert found <= {"NL102", "NL011", "NL012"}
    else:
        assert "NL102" in found
        (d,) = [d for d in errors(text) if d.code == "NL102"][:1]
        assert f"`{name}`" in d.message and d.help


def test_ordinary_names_in_every_position_check_clean():
    for position, make in POSITIONS.items():
        assert errors(make("fine_name")) == [], position


# ------------------------------------------------------------------ the command line
CLI_CASES = {
    "empty.nl": b"",
    "comments.nl": b"# nothing here\n   \n# at all\n",
    "garbage.nl": _garbage(0),
    "nul.nl": b"model m {\x00}",
    "latin1.nl": "model m { # café\n}".encode("latin-1"),
    "emoji.nl": "model 🧠 {}".encode(),
    "deep_parens.nl": ("model m { dim " + "(" * 10_000 + "1" + ")" * 10_000 + " }").encode(),
    "deep_braces.nl": b"{" * 10_000,
    "long_sum.nl": ("model m { dim " + "+".join(["1"] * 10_000) + " }").encode(),
    "long_line.nl": ("model m {" + " " * 200_000 + "dim $ }").encode(),
    "big_number.nl": GOOD.replace("dim 64", "dim 1e999").encode(),
    "huge_int.nl": GOOD.replace("dim 64", "dim 99999999999999999999999").encode(),
    "keyword.nl": GOOD.replace("level ffn", "level class").replace("ffn(rmsnorm", "class(rmsnorm").encode(),
    "dunder.nl": GOOD.replace("memory M :", "memory __class__, M :").encode(),
    "hyper.nl": (GOOD + "optimizer o(__init__ = 1) { update W -= __init__ * g }").encode(),
}


def test_cli_never_tracebacks(tmp_path):
    for name, data in CLI_CASES.items():
        (tmp_path / name).write_bytes(data)
    big = tmp_path / "big.nl"
    with open(big, "wb") as fh:
        fh.truncate(10 * 1024 * 1024)
    names = list(CLI_CASES) + ["big.nl"]
    r = subprocess.run([sys.executable, "-m", "nldsl", "check", *names], cwd=tmp_path, capture_output=True,
                       text=True, errors="replace", timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 1
    ok = {"empty.nl", "comments.nl"}
    for name in names:
        if name in ok:
            assert f"{name}: ok (nothing defined)" in r.stdout
        else:
            assert re.search(rf"^{re.escape(name)}:\d+:\d+: error\[NL\d{{3}}\]", r.stderr, re.M), name
    for name, code in [("garbage.nl", "NL001"), ("nul.nl", "NL001"), ("latin1.nl", "NL001"), ("big.nl", "NL001"),
                       ("emoji.nl", "NL010"), ("deep_parens.nl", "NL002"), ("deep_braces.nl", "NL002"),
                       ("long_sum.nl", "NL002"), ("long_line.nl", "NL010"), ("big_number.nl", "NL160"),
                       ("huge_int.nl", "NL160"), ("keyword.nl", "NL102"), ("dunder.nl", "NL102"),
                       ("hyper.nl", "NL102")]:
        assert re.search(rf"^{re.escape(name)}:\d+:\d+: error\[{code}\]", r.stderr, re.M), (name, code)


def test_cli_each_bad_file_alone_exits_1(tmp_path):
    for name in ("garbage.nl", "deep_braces.nl", "keyword.nl"):
        (tmp_path / name).write_bytes(CLI_CASES[name])
        r = subprocess.run([sys.executable, "-m", "nldsl", "check", "--error-format", "json", name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert '"code": "NL' in r.stdout


def test_cli_missing_file_and_directory(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nldsl", "check", "nope.nl", "."], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("error[NL001]") == 2
