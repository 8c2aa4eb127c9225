"""Highlighting of `.nl` (nldsl/highlight.py) against the language it highlights: the
terminals of grammar/nl.lark, enumerated here by lark's own grammar loader, and the
tables of nldsl/vocab.py. The Pygments lexer and the TextMate grammar of
editors/vscode must read every example as the compiler does and agree with each other,
and the committed TextMate grammar must be what the generator writes now."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lark import Lark
from pygments import lex
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename, guess_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, String

from nldsl import highlight, vocab
from nldsl.highlight import NLLexer

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammar" / "nl.lark"
TEXTMATE = ROOT / "editors" / "vscode" / "syntaxes" / "nl.tmLanguage.json"
EXAMPLES = sorted((ROOT / "examples").rglob("*.nl"))


def grammar_terminals():
    return Lark(GRAMMAR.read_text(encoding="utf-8"), parser="lalr").terminals


def grammar_words() -> list[str]:
    """The string terminals of the grammar spelled as its NAME terminal spells names."""
    terminals = grammar_terminals()
    name = next(t for t in terminals if t.name == "NAME").pattern.to_regexp()
    words = [t.pattern.value for t in terminals if t.pattern.type == "str" and re.fullmatch(name, t.pattern.value)]
    assert len(words) > 10  # the grammar's keywords, not an empty list
    return words


def tokens(text: str) -> list[tuple]:
    """(token type, text) of `text`, whitespace left out."""
    return [(t, v) for t, v in lex(text, NLLexer()) if v.strip()]


def token_of(text: str, word: str):
    found = [t for t, v in tokens(text) if v == word]
    assert found, f"{word!r} not a token of {text!r}"
    return found[0]


@pytest.mark.parametrize("word", grammar_words())
def test_every_word_of_the_grammar_is_a_keyword(word):
    assert tokens(word) == [(Keyword, word)]
    # inside a statement too
    assert token_of(f"model m {{ level l every 4 tokens {{ out x }} }} {word}", word) is Keyword


def test_only_the_grammar_words_are_keywords():
    keywords = {v for f in EXAMPLES for t, v in tokens(f.read_text(encoding="utf-8")) if t is Keyword}
    assert keywords and keywords <= set(grammar_words())


def test_where_the_grammar_takes_a_name_a_keyword_is_a_name():
    spec = "model step { level frozen outer { memory token, f : linear(dim)\n flow steps = f(x) } }"
    assert token_of(spec, "step") is Name.Class
    assert token_of(spec, "frozen") is Name.Namespace
    assert token_of(spec, "token") is Name.Variable
    assert token_of(spec, "f") is Name.Variable  # the second name of a list
    assert token_of(spec, "steps") is Name.Variable
    assert token_of(spec, "outer") is Keyword  # the period after the level's name
    assert token_of(spec, "linear") is Keyword.Type


@pytest.mark.parametrize("table, token", [
    (vocab.FUNCTIONS, Name.Builtin), (vocab.OBJECTIVES, Name.Builtin), (vocab.RULES, Name.Builtin),
    (vocab.OUTER_OBJECTIVES, Name.Builtin), (vocab.MEMORY_KINDS, Keyword.Type),
    (vocab.SETTINGS, Name.Variable.Global), (vocab.TRAINING_SETTINGS, Name.Variable.Global),
    (vocab.INPUTS, Name.Builtin.Pseudo), (vocab.WORDS, Name.Builtin.Pseudo),
    (vocab.SELECTORS, Name.Constant), (vocab.INITS, Name.Constant), (vocab.MEMORY_FLAGS, Name.Constant),
])
def test_the_vocabulary_is_highlighted(table, token):
    keywords, functions = set(grammar_words()), set(vocab.FUNCTIONS) | set(vocab.OBJECTIVES)
    for word in table:
        if word in keywords:  # `step`, an input, is also a unit: the keyword reads first
            continue
        if token is Name.Constant and word in functions:  # `silu`, an activation, is a function
            continue
        assert token_of(f"flow y = {word}", word) is token, word


def test_keyword_arguments_and_literals():
    spec = 'import "optim/adam.nl" # a comment\nflow y = gd(lr: 1.5e-3, decay: 4K)'
    assert token_of(spec, '"optim/adam.nl"') in String
    assert token_of(spec, "# a comment") in Comment
    assert token_of(spec, "lr") is Name.Attribute
    assert token_of(spec, "1.5e-3") in Number and token_of(spec, "4K") in Number


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_lexes_without_errors(path):
    text = path.read_text(encoding="utf-8")
    found = list(lex(text, NLLexer()))
    assert [v for t, v in found if t in Error] == []
    assert "".join(v for _, v in found) == text + ("" if text.endswith("\n") else "\n")


def test_pygments_finds_the_lexer_by_its_entry_point():
    assert type(get_lexer_by_name("nl")) is NLLexer
    assert type(get_lexer_by_name("nldsl")) is NLLexer
    assert type(get_lexer_for_filename("hope.nl")) is NLLexer  # *.nl is also newLISP's
    assert type(guess_lexer_for_filename("hope.nl", EXAMPLES[0].read_text(encoding="utf-8"))) is NLLexer


# ------------------------------------------------------------------ TextMate

def test_the_textmate_grammar_is_what_the_generator_writes():
    fresh = subprocess.run([sys.executable, "-m", "nldsl.highlight", "--textmate"], capture_output=True,
                           text=True, check=True).stdout
    assert TEXTMATE.read_text(encoding="utf-8") == fresh, (
        "editors/vscode/syntaxes/nl.tmLanguage.json is stale: run `make editors`")


class TextMate:
    """The part of a TextMate tokenizer that the grammar uses: single-line `match`
    patterns, `include`s of the repository and `captures` with patterns of their own.
    At each position the pattern matching earliest wins, the first listed on a tie."""

    def __init__(self, grammar: dict):
        self.grammar = grammar

    def expand(self, patterns):
        for p in patterns:
            if "include" in p:
                yield from self.expand(self.grammar["repository"][p["include"].lstrip("#")]["patterns"])
            else:
                yield p

    def scopes(self, line: str, patterns=None, offset=0) -> dict[tuple[int, int], str]:
        found, pos = {}, 0
        patterns = list(self.expand(self.grammar["patterns"] if patterns is None else patterns))
        while pos < len(line):
            best = None
            for p in patterns:
                m = re.compile(p["match"]).search(line, pos)
                if m and m.end() > m.start() and (best is None or m.start() < best[0].start()):
                    best = (m, p)
            if best is None:
                break
            m, p = best
            if "name" in p:
                found[(offset + m.start(), offset + m.end())] = p["name"]
            for group, capture in p.get("captures", {}).items():
                at = m.start(int(group))
                if "name" in capture:
                    found[(offset + at, offset + m.end(int(group)))] = capture["name"]
                if "patterns" in capture:
                    found.update(self.scopes(m.group(int(group)), capture["patterns"], offset + at))
            pos = m.end()
        return found


def test_textmate_and_pygments_agree_on_every_example():
    """Each word, number, string and comment the lexer classes gets the TextMate scope of
    that class; names the lexer leaves plain get none."""
    scope_of = {k.token: k.scope for k in highlight.kinds()}
    scope_of.update({t: s for t, s in highlight.DECLARED.values()})
    scope_of.update({highlight.VARIABLE[0]: highlight.VARIABLE[1],
                     highlight.KEYWORD_ARGUMENT[0]: highlight.KEYWORD_ARGUMENT[1],
                     Number: highlight.NUMBER, String.Double: highlight.STRING,
                     Comment.Single: highlight.COMMENT})
    textmate = TextMate(json.loads(TEXTMATE.read_text(encoding="utf-8")))
    checked = 0
    for path in EXAMPLES:
        for line in path.read_text(encoding="utf-8").splitlines():
            scopes, at = textmate.scopes(line), 0
            for token, value in lex(line, NLLexer()):
                if token in scope_of:
                    assert scopes.get((at, at + len(value))) == scope_of[token], (path.name, line, value, token)
                    checked += 1
                elif token is Name:
                    assert (at, at + len(value)) not in scopes, (path.name, line, value)
                at += len(value)
    assert checked > 1000


def test_the_vscode_extension_names_what_it_ships():
    """package.json's contributions point at the files of editors/vscode and agree with
    the grammar and the client; the client needs only the packages package.json declares."""
    folder = TEXTMATE.parent.parent
    package = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    (language,) = package["contributes"]["languages"]
    (grammar,) = package["contributes"]["grammars"]
    assert language["extensions"] == [".nl"] and grammar["language"] == language["id"]
    assert grammar["scopeName"] == json.loads(TEXTMATE.read_text(encoding="utf-8"))["scopeName"]
    assert (folder / grammar["path"]).resolve() == TEXTMATE
    config = json.loads((folder / language["configuration"]).read_text(encoding="utf-8"))
    assert config["comments"]["lineComment"] == "#"  # the grammar's COMMENT
    assert re.fullmatch(grammar_comment(), "# a comment")
    client = (folder / package["main"]).read_text(encoding="utf-8")
    required = {m.split("/")[0] for m in re.findall(r'require\("([^"]+)"\)', client)}
    assert required - {"vscode"} <= set(package["dependencies"])
    assert f'language: "{language["id"]}"' in client
    settings = package["contributes"]["configuration"]["properties"]
    assert settings["nldsl.server.command"]["default"] == "nldsl"
    assert settings["nldsl.server.args"]["default"] == ["lsp"]
    assert not (folder / "node_modules").exists()


def grammar_comment() -> str:
    return next(t for t in grammar_terminals() if t.name == "COMMENT").pattern.to_regexp()
