"""Syntax highlighting of `.nl` specs: a Pygments lexer and a TextMate grammar.

Both are built from the two sources of the language and keep no word list of their
own: the keywords, operators and the patterns of names, numbers, strings and comments
are the terminals of `grammar/nl.lark` (read with lark's grammar loader), the built-in
words are the tables of `nldsl/vocab.py`. A keyword directly followed by a NAME (or a
list of names) in one of the grammar's rules declares that name (`model NAME`,
`flow NAME`, `memory NAMES`), which is highlighted as such: there the language accepts
a keyword as a name, and so does the lexer.

The lexer is registered with Pygments by the entry point `pygments.lexers` (name "nl",
files *.nl), so Sphinx, MkDocs, Jupyter and `rich` find it once nldsl is installed.
`python -m nldsl.highlight --textmate` prints the TextMate grammar that
editors/vscode/syntaxes/nl.tmLanguage.json holds (tests/test_highlight.py keeps the
two equal).
"""
from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from importlib import resources

from lark.load_grammar import load_grammar
from pygments.lexer import RegexLexer, default
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text

from . import vocab

PUNCTUATION = set("{}()[],;:.")  # the other symbols are operators


@dataclass(frozen=True)
class Grammar:
    """What highlighting needs of grammar/nl.lark."""

    patterns: dict[str, str]  # NAME, NUMBER, STRING, COMMENT: their regular expressions
    keywords: tuple[str, ...]  # the string terminals spelled like names
    symbols: tuple[str, ...]  # the other string terminals, longest first
    declares: dict[str, bool]  # keyword -> whether the names it declares may be a list


@functools.cache
def grammar() -> Grammar:
    """The terminals of the grammar, the installed `nldsl.grammar` (grammar/nl.lark)."""
    text = resources.files("nldsl.grammar").joinpath("nl.lark").read_text(encoding="utf-8")
    loaded, _ = load_grammar(text, "nl.lark", None, False)
    terminals, rules, _ = loaded.compile(["start"], set())
    by_name = {t.name: t.pattern for t in terminals}
    strings = [p.value for p in by_name.values() if p.type == "str"]
    spelled_as_name = re.compile(by_name["NAME"].to_regexp()).fullmatch  # such a string terminal is a keyword
    expansions: dict[str, list] = {}
    for r in rules:
        expansions.setdefault(r.origin.name, []).append(r.expansion)

    def names_after(symbol) -> bool | None:
        """None if `symbol` is not a name; else whether it is a list of them (a rule whose
        every expansion starts with NAME and holds nothing but NAME and separators)."""
        if symbol.is_term:
            return False if symbol.name == "NAME" else None
        alts = expansions.get(symbol.name, [])
        firsts = alts and all(a and a[0].is_term and a[0].name == "NAME" for a in alts)
        return True if firsts else None

    declares: dict[str, bool] = {}
    for r in rules:
        for here, after in zip(r.expansion, r.expansion[1:]):
            if here.is_term and by_name[here.name].type == "str" and spelled_as_name(by_name[here.name].value):
                many = names_after(after)
                if many is not None:
                    declares[by_name[here.name].value] = declares.get(by_name[here.name].value, False) or many
    return Grammar(
        # a newline written as `\n`, as the grammar writes it: Python's and TextMate's regexes read it alike
        patterns={n: by_name[n].to_regexp().replace("\n", r"\n") for n in ("NAME", "NUMBER", "STRING", "COMMENT")},
        keywords=tuple(sorted(s for s in strings if spelled_as_name(s))),
        symbols=tuple(sorted((s for s in strings if not spelled_as_name(s)), key=lambda s: (-len(s), s))),
        declares=dict(sorted(declares.items())),
    )


@dataclass(frozen=True)
class Kind:
    """A class of words and how each highlighter shows it."""

    what: str
    words: tuple[str, ...]
    token: tuple  # Pygments' token type
    scope: str  # TextMate


@functools.cache
def kinds() -> tuple[Kind, ...]:
    """The classes of words, first first: a word in two classes reads as the first.
    Keywords come first, since a keyword in a statement's place reads as that statement."""
    hint_values = [v for values in vocab.HINTS.values() if isinstance(values, tuple) for v in values]
    return (
        Kind("keyword", grammar().keywords, Keyword, "keyword.control.nl"),
        Kind("predefined name", (*vocab.WORDS, *vocab.INPUTS), Name.Builtin.Pseudo, "variable.language.nl"),
        Kind("built-in function", (*vocab.FUNCTIONS, *vocab.OBJECTIVES, *vocab.RULES, *vocab.OUTER_OBJECTIVES),
             Name.Builtin, "support.function.nl"),
        Kind("memory kind", tuple(vocab.MEMORY_KINDS), Keyword.Type, "support.type.nl"),
        Kind("setting", (*vocab.SETTINGS, *vocab.TRAINING_SETTINGS), Name.Variable.Global,
             "variable.other.constant.nl"),
        Kind("option value", (*vocab.INITS, *vocab.ACTIVATIONS, *vocab.MEMORY_FLAGS, *vocab.RULE_FLAGS,
                              *vocab.OBJECTIVE_FLAGS, *vocab.OUTER_OBJECTIVE_FLAGS, *vocab.SELECTORS, *hint_values),
             Name.Constant, "constant.language.nl"),
        Kind("schedule hint", tuple(vocab.HINTS), Name.Property, "variable.other.property.nl"),
    )


@functools.cache
def word_classes() -> dict[str, Kind]:
    """Every built-in word and keyword -> its class."""
    found: dict[str, Kind] = {}
    for kind in kinds():
        for w in kind.words:
            found.setdefault(w, kind)
    return found


# How a declared name shows, by the keyword that declares it; any other keyword's
# names are variables. Keys that the grammar does not declare with are ignored.
DECLARED = {
    "model": (Name.Class, "entity.name.type.class.nl"),
    "optimizer": (Name.Function, "entity.name.function.nl"),
    "level": (Name.Namespace, "entity.name.namespace.nl"),
}
VARIABLE = (Name.Variable, "variable.other.definition.nl")
KEYWORD_ARGUMENT = (Name.Attribute, "variable.parameter.nl")  # `lr:` in `gd(lr: 0.1)`
OPERATOR, NUMBER, STRING, COMMENT = "keyword.operator.nl", "constant.numeric.nl", "string.quoted.double.nl", \
    "comment.line.number-sign.nl"
NOT_IN_WORD = "(?![A-Za-z0-9_])"


def _word(otherwise, keywords: bool = True):
    """A lexer callback: a NAME shows as its class of word, else as `otherwise`. Where the
    grammar declares a name (keywords=False), a keyword is that name, not a keyword."""
    def callback(lexer, match):
        kind = word_classes().get(match.group())
        if kind is None or (not keywords and kind.what == "keyword"):
            yield match.start(), otherwise, match.group()
        else:
            yield match.start(), kind.token, match.group()
    return callback


def _tokens() -> dict[str, list]:
    g = grammar()
    name = g.patterns["NAME"]
    space = [(r"\s+", Text.Whitespace), (g.patterns["COMMENT"], Comment.Single)]
    tokens: dict[str, list] = {}
    declaring = []
    for keyword, many in g.declares.items():
        # after the keyword, a state of its own reads the name(s) it declares
        state, more = f"names of {keyword}", f"more names of {keyword}"
        declaring.append((rf"{re.escape(keyword)}{NOT_IN_WORD}", Keyword, state))
        token = DECLARED.get(keyword, VARIABLE)[0]
        tokens[state] = [*space, (name, _word(token, keywords=False), ("#pop", more) if many else "#pop"),
                         default("#pop")]
        if many:  # a list: `, NAME` goes on
            tokens[more] = [*space, (",", Punctuation, ("#pop", state)), default("#pop")]
    tokens["root"] = [
        *space,
        (g.patterns["STRING"], String.Double),
        (g.patterns["NUMBER"], Number),
        *declaring,
        (rf"{name}(?=\s*:)", KEYWORD_ARGUMENT[0]),
        (name, _word(Name)),
        *((re.escape(s), Punctuation if s in PUNCTUATION else Operator) for s in g.symbols),
    ]
    return tokens


class NLLexer(RegexLexer):
    """Pygments lexer for `.nl` specs of Nested Learning models and optimizers."""

    name = "nl"
    aliases = ["nl", "nldsl"]
    filenames = ["*.nl"]
    mimetypes = ["text/x-nldsl"]
    priority = 0.5  # *.nl is also newLISP's: without the text to go by, prefer this one
    tokens = _tokens()

    @staticmethod
    def analyse_text(text):
        # a level with its period, or a model's opening: nothing else reads like that
        if re.search(r"\blevel\s+\w+\s+(every|outer|frozen)\b|\bmodel\s+\w+\s*\{", text):
            return 0.9
        return 0.0


# ---------------------------------------------------------------- TextMate

def _alternatives(words) -> str:
    return "|".join(sorted(map(re.escape, words), key=lambda w: (-len(w), w)))


def textmate() -> dict:
    """The TextMate grammar of `.nl` (VS Code, and editors that read TextMate grammars),
    from the same terminals and word classes as the lexer."""
    g = grammar()
    name = g.patterns["NAME"]
    classes = word_classes()
    words = {k.what: [w for w, c in classes.items() if c is k] for k in kinds()}
    builtins = [{"match": rf"\b(?:{_alternatives(words[k.what])})\b", "name": k.scope}
                for k in kinds() if k.what != "keyword"]
    declarations = []
    for keyword, many in g.declares.items():
        names = rf"{name}(?:\s*,\s*{name})*" if many else name
        scope = DECLARED.get(keyword, VARIABLE)[1]
        declarations.append({
            "match": rf"\b({re.escape(keyword)})\s+({names})",
            "captures": {"1": {"name": "keyword.control.nl"},
                         "2": {"patterns": [{"include": "#builtins"}, {"match": name, "name": scope}]}},
        })
    operators = [s for s in g.symbols if s not in PUNCTUATION]
    return {
        "name": "nl",
        "scopeName": "source.nl",
        "fileTypes": ["nl"],
        "comment": "Generated by `python -m nldsl.highlight --textmate` from grammar/nl.lark and "
                   "nldsl/vocab.py: do not edit.",
        "patterns": [
            {"match": g.patterns["COMMENT"], "name": COMMENT},
            {"match": g.patterns["STRING"], "name": STRING},
            {"match": rf"(?<![A-Za-z0-9_]){g.patterns['NUMBER']}", "name": NUMBER},
            *declarations,
            {"match": rf"\b{name}(?=\s*:)", "name": KEYWORD_ARGUMENT[1]},
            {"match": rf"\b(?:{_alternatives(words['keyword'])})\b", "name": "keyword.control.nl"},
            {"include": "#builtins"},
            {"match": _alternatives(operators), "name": OPERATOR},
        ],
        "repository": {"builtins": {"patterns": builtins}},
    }


def textmate_json() -> str:
    return json.dumps(textmate(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--textmate"]:
        print("usage: python -m nldsl.highlight --textmate > editors/vscode/syntaxes/nl.tmLanguage.json",
              file=sys.stderr)
        return 2
    sys.stdout.write(textmate_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
