"""Fuzzing the front end: nothing but `NLError` ever escapes `check(text)`, and whatever
checks clean goes through the IR passes and the Graphviz backend without raising.

Four sources of input: (a) mutations of the example specs, (b) random strings over the
language's characters, (c) random sequences of the grammar's tokens, (d) generated
specs that parse, built from the language's statements with random choices, so the
checker's deeper stages are reached. Fuzzed text is checked from an empty working
folder, so an `import` it happens to contain finds nothing of this repository's
(imports fall back to nldsl's own library, which is harmless to read).

Budget: a few thousand inputs, well under a minute on two cores.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nldsl.compiler import passes
from nldsl.compiler.backends.graphviz import to_dot
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler.driver import check

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.relative_to(ROOT / "examples").as_posix(): p.read_text() for p in sorted((ROOT / "examples").rglob("*.nl"))}

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                  HealthCheck.large_base_example, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("fuzz_cwd"))


def front_end(text: str) -> str:
    """Check `text`; run the back half on what checks clean. Returns "ok" or the error codes."""
    try:
        spec = check(text)
    except NLError as e:
        assert e.diagnostics and all(re.fullmatch(r"NL\d{3}", d.code) for d in e.diagnostics)
        assert any(d.severity == "error" for d in e.diagnostics)
        str(e)  # renders
        return " ".join(sorted({d.code for d in e.diagnostics}))
    for s in list(spec.models) + list(spec.optimizers):
        ir = passes.run(s)
        assert isinstance(to_dot(ir), str)
    return "ok"


def test_examples_check_clean_here():
    for name, text in EXAMPLES.items():
        assert front_end(text) == "ok", name


# ------------------------------------------------------------ the language's pieces
KEYWORDS = ["import", "model", "optimizer", "for", "objective", "block", "repeat", "schedule", "level", "every",
            "outer", "frozen", "token", "tokens", "step", "steps", "memory", "flow", "learn", "by", "read", "before",
            "within", "out", "update"]
PUNCT = ["{", "}", "(", ")", ",", ":", ";", "=", ".", "+", "-", "*", "/", "**", "->", "-=", "+=", "*=", "#", '"']
NAMES = ["x", "g", "W", "step", "self", "dim", "vocab", "heads", "depth", "context", "batch", "k", "v", "q", "M", "m",
         "s", "ffn", "mem", "attn", "fast", "slow", "lr", "beta", "decay", "hidden", "act", "residual", "bias", "init",
         "fixed", "detach", "window", "linear", "mlp", "elementwise", "attention", "l2", "dot", "task", "gd",
         "momentum", "implicit", "append", "next_token", "proj", "conv", "l2norm", "rmsnorm", "learned", "silu",
         "gelu", "sigmoid", "softplus", "sqrt", "max", "min", "select", "newton_schulz", "rows", "cols", "zeros",
         "ones", "normal", "identity", "adam", "adamw", "sgd", "muon", "all", "matrices", "vectors", "rest", "tile",
         "kernel", "true", "false", "class", "__init__", "a", "b", "h"]
NUMBERS = ["0", "1", "2", "3", "4", "8", "16", "64", "0.5", "1e-3", "1e18", "1e19", "1e999", "1M", "1G", "16M",
           "99999999999999999999", ".5", "2.", "1e-400"]
STRINGS = ['"optim/adam.nl"', '"nope.nl"', '""', '"."', '"optim"', '"/etc/passwd"', '"../x.nl"', '"/dev/zero"',
           '"/proc/self/status"', '"optim/../../nldsl/__init__.py"']
TOKENS = KEYWORDS + PUNCT + NAMES + NUMBERS + STRINGS
ALPHABET = sorted(set("".join(EXAMPLES.values())) | set("{}()[],:;=.+-*/#\"<>!@$%^&|~`'?\\_\t\r\n\f\x00") | {"é", "🧠"})
_TOKEN_RE = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?[KMG]?'
                       r"|\*\*|->|[-+*]=|.", re.S)


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


# ------------------------------------------------------------ (a) mutations of the examples
@st.composite
def mutated(draw):
    text = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "char_delete",
                                     "char_duplicate", "char_insert", "char_swap", "truncate"]))
        if kind.startswith("char_") or kind == "truncate":
            if not text:
                break
            i = draw(st.integers(0, len(text) - 1))
            if kind == "truncate":
                text = text[:i]
            elif kind == "char_delete":
                text = text[:i] + text[i + 1:]
            elif kind == "char_duplicate":
                text = text[:i] + text[i] + text[i:]
            elif kind == "char_insert":
                text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i:]
            else:
                j = draw(st.integers(0, len(text) - 1))
                chars = list(text)
                chars[i], chars[j] = chars[j], chars[i]
                text = "".join(chars)
            continue
        toks = [t for t in tokens(text)]
        words = [i for i, t in enumerate(toks) if not t.isspace() and not t.startswith("#")]
        if not words:
            break
        i = draw(st.sampled_from(words))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i] + " ")
        elif kind == "swap":
            j = draw(st.sampled_from(words))
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "replace":
            toks[i] = draw(st.sampled_from(TOKENS))
        else:
            toks.insert(i, " " + draw(st.sampled_from(TOKENS)) + " ")
        text = "".join(toks)
    return text


@settings(max_examples=1500, **FUZZ)
@given(mutated())
@example("model m { vocab 256 dim 64 level a every 16 tokens { memory M : linear(dim) } "
         "block repeat 0 { x = x + a(x) } objective next_token optimizer adam(lr: 1e-3) }")
@example(EXAMPLES["titans.nl"].replace("lr: lr,", "lr: 1 / 0,"))
@example(EXAMPLES["cms.nl"].replace("init: mid.ffn", "init: mid.nope"))
@example(EXAMPLES["hope.nl"].replace('import "optim/adamw.nl"', 'import "' + "a" * 300 + '.nl"'))
@example(EXAMPLES["titans.nl"].replace("adamw(", "a" * 300 + "("))
@example(EXAMPLES["hope.nl"].replace('import "optim/adamw.nl"', 'import "/etc/passwd"'))
@example(EXAMPLES["hope.nl"].replace('import "optim/adamw.nl"', 'import "../../../../../../../../proc/self/status.nl"'))
@example(EXAMPLES["titans.nl"].replace("lr: lr,", "lr: exp(1000) * sqrt(0 - 1),"))
def test_mutated_examples(text):
    front_end(text)


# ------------------------------------------------------------ (b) random strings
@settings(max_examples=800, **FUZZ)
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=300))
@example("\x00.nl")  # no newline and ends in `.nl`: the driver takes it for a path
@example("model m {\f dim $ }")
@example("}" * 3 + "{")
def test_random_strings(text):
    front_end(text)


# ------------------------------------------------------------ (c) random token sequences
NUMBER_TEXT = st.from_regex(r"0{0,5}(\d{1,25}(\.\d{0,5})?|\.\d{1,5})([eE][-+]?\d{1,4})?[KMG]?", fullmatch=True)


@settings(max_examples=800, **FUZZ)
@given(st.lists(st.sampled_from(TOKENS) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
                | st.integers(-10, 10**20).map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
                | NUMBER_TEXT | NUMBER_TEXT.map(lambda n: "0" * 5000 + n), max_size=80),
       st.sampled_from([" ", "\n", ";", ""]))
@example(["model", "m", "{", "}", "block"], " ")
@example(["model", "m", "{", "dim", "0" * 5000 + "64", "}"], " ")  # int() refuses over 4300 digits
@example(["optimizer", "o", "(", ")", "{", "update", "W", "=", "1", "/", "0", "}"], " ")
def test_random_token_sequences(toks, sep):
    front_end(sep.join(toks))


# ------------------------------------------------------------ (d) generated specs that parse
def pick(draw, valid: list[str], invalid: list[str] = ()) -> str:
    """Mostly a valid choice; now and then a mistake, so both sides of each check are reached."""
    if invalid and draw(st.integers(0, 11)) == 5:  # not 0: hypothesis favours the ends of a range
        return draw(st.sampled_from(list(invalid)))
    return draw(st.sampled_from(valid))


@functools.lru_cache(maxsize=None)
def expr_strategy(names: tuple[str, ...], depth: int = 2):
    atoms = st.sampled_from(names) | st.sampled_from(["0", "1", "2", "0.5", "1e-3", "4", "dim", "heads", "1e18"])
    if depth == 0:
        return atoms
    sub = expr_strategy(names, depth - 1)
    return st.one_of(
        atoms,
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/", "**"]), sub).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        sub.map(lambda e: f"-({e})"),
        st.tuples(st.sampled_from(["proj", "conv", "l2norm", "rmsnorm", "silu", "sigmoid", "softplus", "learned", "max",
                                   "select", "rows", "newton_schulz", "M", "k", "self", "nope"]),
                  st.lists(sub, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
    )


@st.composite
def model_level(draw, name: str, others: list[str]):
    scope = draw(st.sampled_from(["sequence", "sequence", "token", "token", "cross", "outer", "frozen"]))
    period = {"sequence": pick(draw, ["every 8 tokens", "every 16 tokens", "every 32 tokens", "every 64 tokens"],
                               ["every 3 steps", "every 0 tokens", "every 1.5 tokens", "every dim tokens"]),
              "token": "every 1 token", "cross": pick(draw, ["every 1M tokens", "every 4096 tokens"]),
              "outer": "outer", "frozen": "frozen"}[scope]
    heads = pick(draw, ["", ", heads: heads"], [", heads: 3", ", head: 2"])
    init = pick(draw, [""] * 3 + [f", init: {o}.M" for o in others], [", init: nope.M", ", init: ones", ", init: mid.Q"])
    kind = pick(draw, [f"linear(dim{heads}{init})", f"mlp(dim, hidden: 2 * dim{heads}{init})",
                       f"mlp(dim, residual{init})", f"linear(dim, fixed{init})"]
                + ["attention(heads: heads)"] * (3 if scope in ("token", "sequence") else 0),
                ["elementwise", "mlpp(dim)", "mlp(dim -> 32, residual)", "linear(dim, dim)", "attention(dim)",
                 "mlp(dim, act: nope)", "linear(dim, init: identity)", "mlp(dim, hidden: 1G)",
                 "linear(dim, heads: 2, heads: 4)", "mlp(dim, residual, residual: false)"])
    attention = kind.startswith("attention")
    lines = [f"memory M : {kind}"]
    if draw(st.booleans()):
        lines.append(f"memory {pick(draw, ['E'], ['M', 'x', 'class'])} : {pick(draw, ['linear(dim)', 'mlp(dim)'])}")
    lines += ["flow q = " + pick(draw, ["proj(x)", "l2norm(proj(x))", "silu(conv(proj(x), 4))"], ["proj(x, 32)", "q"]),
              "flow k = " + pick(draw, ["l2norm(proj(x))", "proj(x)"], ["M(x)", "proj(x, 3)", "k2"]),
              "flow v = " + pick(draw, ["proj(x)", "silu(proj(x))"], ["M(q)", "conv(x)"]),
              "flow rate = " + pick(draw, ["sigmoid(proj(x, heads))", "0.1"], ["proj(x)", "rate"])]
    if draw(st.integers(0, 4)) == 3:
        lines.append(f"flow extra = {draw(expr_strategy(('x', 'q', 'k', 'v', 'M', 'rate'), 2))}")
    rule = pick(draw, [" by gd(lr: 0.1)", " by gd(lr: rate, decay: rate)", " by momentum(lr: 0.1, beta: 0.9)",
                       " by implicit(lr: 0.5)"],
                [" by momentum(lr: 1)", " by append", " by gd(0.1)", " by gd(lr: 1 / 0)", " by nope(lr: 1)",
                 " by gd(lr: q)", " by gd(rate: 1)", " by gd(lr: 0.1, lr: 0.2)"])
    read = pick(draw, ["", " read before", " read within"], [" read within"])
    if attention:
        lines.append("learn M : " + pick(draw, ["l2(k, v)"], ["task", "dot(k, v)", "l2(k)"])
                     + pick(draw, ["", " by append"], [" by gd(lr: 1)"]) + read)
    elif scope in ("sequence", "token"):
        lines.append("learn M : " + pick(draw, ["l2(k, v)", "dot(k, v)", "task", "l2(k, self(v))"],
                                         ["l3(k, v)", "l2(k, v, q)", "task(1)", "dot(k: 1)"])
                     + rule + pick(draw, ["", " read before"] + ([" read within"] if scope == "token" else []),
                                   [" read within"]))
    elif scope == "cross":
        lines.append("learn M : " + pick(draw, ["task"], ["task by gd(lr: 1)", "l2(k, v) by gd(lr: 1)"]))
    elif draw(st.integers(0, 9)) == 5:
        lines.append("learn M : task by gd(lr: 0.1)")
    if any(l.startswith("memory E") for l in lines):
        if scope in ("sequence", "token"):
            lines.append("learn E : l2(k, v) by gd(lr: 0.1)")
        lines.append("out " + pick(draw, ["proj(M(q)) + E(q)" if attention else "M(q) + E(q)"], ["M(q)"]))
    elif attention or draw(st.booleans()):
        lines.append("out " + pick(draw, ["proj(M(q))", "M(q)" if not attention else "proj(M(q))"],
                                   ["M(q, q)", "proj(q, 32)", "M", "x.y", "select(x, q, q)"]))
    if draw(st.integers(0, 9)) == 5:
        lines.append(draw(st.sampled_from(["out M(q)", "learn M : l2(k, v) by gd(lr: 0.1)", "memory M : linear(dim)"])))
    body = "\n    ".join(draw(st.permutations(lines)))
    return f"  level {name} {period} {{\n    {body}\n  }}"


@st.composite
def model_text(draw):
    settings = ["vocab 256", "dim 64", "heads 4", "context 128"]
    settings += draw(st.lists(st.sampled_from(["depth 2", "batch 4", "extra 3", "lr_scale 0.5"]), max_size=2, unique=True))
    if draw(st.integers(0, 7)) == 5:
        settings.remove(draw(st.sampled_from(settings)))
    if draw(st.integers(0, 7)) == 3:
        settings.append(draw(st.sampled_from(["dim 0", "vocab 1.5", "dim 1e9", "heads 3", "dim 64", "x 1",
                                              "class 1", "context 1 / 0"])))
    names = draw(st.lists(st.sampled_from(["fast", "slow", "mid"]), min_size=0, max_size=3, unique=True))
    parts = [f"  {s}" for s in settings] + [draw(model_level(n, [o for o in names if o != n])) for n in names]
    block = [f"x = x + {n}(rmsnorm(x))" for n in draw(st.permutations(names))]
    if draw(st.integers(0, 5)) == 3:
        block.insert(draw(st.integers(0, len(block))), pick(draw, ["h = rmsnorm(x)", "x = x * learned(1)"],
                                                               ["x = proj(x, 32)", "h = nope(x)", "x = x + fast(x)",
                                                                f"h = {draw(expr_strategy(('x', 'h'), 2))}"]))
    repeat = pick(draw, ["", "repeat depth ", "repeat 2 "], ["repeat 0 ", "repeat x "])
    if draw(st.integers(0, 9)) != 5:
        parts.append(f"  block {repeat}{{\n    " + "\n    ".join(block) + "\n  }")
    parts.append("  objective " + pick(draw, ["next_token"], ["next_token(1)", "nope", "l2(x, x)"]))
    parts += pick(draw, [("  optimizer adam(lr: 1e-3)",), ("  optimizer adamw(lr: 3e-3, weight_decay: 0.1)",),
                         ("  optimizer muon(lr: 0.02) for matrices", "  optimizer adam(lr: 1e-3) for rest"),
                         ("  optimizer m3(lr: 1e-3)",), ("  optimizer dmgd(lr: 1e-2)",)],
                  [("  optimizer o(lr: 1)",), ("  optimizer adam(lr: 1 / 0)",), ("  optimizer adam(lr: 1e-3) for nope",),
                   ("  optimizer adam(3)",), ("  optimizer adam(lr: 1e-3) for all", "  optimizer sgd(lr: 1) for rest"),
                   ("  optimizer adam(lr: 1e-3, nope: 1)",), ()])
    if names and draw(st.integers(0, 3)) == 2:
        n = draw(st.sampled_from(names))
        parts.append("  schedule { " + pick(draw, [f"{n}.tile = 16", f"{n}.kernel = triton"],
                                            [f"{n}.tile = 0", "nope.tile = 2", f"{n}.kernel = cuda", f"{n}.x = 1"])
                     + " }")
    return "model m {\n" + "\n".join(draw(st.permutations(parts))) + "\n}\n"


@st.composite
def optimizer_text(draw):
    params = ["lr = 1e-3", "beta = 0.9", "k_every = 2"]
    if draw(st.integers(0, 5)) == 3:
        params.append(draw(st.sampled_from(["g = 1", "lr = 1 / 0", "class = 1", "lr = 2", "eps = lr * 1e-3"])))
    levels = draw(st.lists(st.sampled_from(["fast", "slow"]), max_size=2, unique=True))
    parts, mems = [], []
    for n in levels:
        mem = "m" if n == "fast" else "s"
        mems.append(mem)
        period = pick(draw, ["every 1 step", "every 2 steps", "every k_every steps"],
                      ["every 4 tokens", "outer", "every 0 steps", "every beta steps"])
        kind = pick(draw, ["elementwise", "mlp(1, hidden: 8, residual)", "linear(1)"],
                    ["mlp(dim)", "attention", "linear(2)", "elementwise(init: fast.m)", "elementwise(init: ones)"])
        other = draw(st.sampled_from(["g", "g", "m", "s", "u", "g * m", "s * s"]))  # memories are shared by levels
        learn = pick(draw, [f"learn {mem} : dot(g) by gd(lr: 1 - beta, decay: beta)",
                            f"learn {mem} : dot({other}) by gd(lr: 0.1)", f"learn {mem} : dot(g) by gd(lr: {other})",
                            f"learn {mem} : dot(g, g) by gd(lr: 0.1)", f"learn {mem} : l2(g, g) by gd(lr: 0.1)"],
                     [f"learn {mem} : task by gd(lr: 1)", f"learn {mem} : dot(g)", "learn zz : dot(g) by gd(lr: 1)",
                      f"learn {mem} : dot(g) by gd(lr: g)", "out g"])
        parts.append(f"  level {n} {period} {{\n    memory {mem} : {kind}\n    {learn}\n  }}")
    terms = [f"{m}(g)" if draw(st.booleans()) else m for m in mems] or ["g"]
    parts.append("  update W -= lr * " + pick(draw, [" + ".join(terms), f"newton_schulz({terms[0]}, 5)"],
                                               [draw(expr_strategy(("g", "W", "step", "lr", "m", "s"), 2))]))
    if draw(st.integers(0, 3)) == 2:
        parts.append("  " + pick(draw, ["flow u = g * beta", "update W *= 1 - lr", "flow u = m * g", "flow u = s + g"],
                                 ["update V -= g", "flow g = W", "flow u = u", "update W -= x"]))
    return f"optimizer o({', '.join(params)}) {{\n" + "\n".join(draw(st.permutations(parts))) + "\n}\n"


@settings(max_examples=700, **FUZZ)
@given(st.lists(model_text() | optimizer_text(), min_size=1, max_size=2).map("\n".join))
@example("model m {\n vocab 256\n dim 64\n level fast every 8 tokens {\n memory M : mlp(dim, init: slow.M)\n"
         " learn M : task by gd(lr: 0.1)\n }\n level slow every 12 tokens {\n memory M : mlp(dim)\n"
         " learn M : task by gd(lr: 0.1)\n }\n block { x = x + fast(rmsnorm(x))\n x = x + slow(rmsnorm(x)) }\n"
         " objective next_token\n optimizer adam(lr: 1e-3)\n}\n")
@example("optimizer o(lr = 1) {\n level a every 1 step { memory m : elementwise\n learn m : dot(s) by gd(lr: 1) }\n"
         " level b every 1 step { memory s : elementwise\n learn s : dot(m) by gd(lr: 1) }\n update W -= m + s\n}\n")
def test_generated_specs(text):
    front_end(text)
