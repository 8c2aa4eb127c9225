"""nldsl/vocab.py, the one table of the language's built-in words, against what
implements and documents them: every function's runtime op and every activation
exist in nldsl.runtime, every size rule has its typing in the checker, and
docs/language.md's tables list exactly the vocabulary's rows."""
from __future__ import annotations

import inspect

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl import vocab
from nldsl.compiler import fold
from nldsl.compiler.check import functions
from nldsl.runtime import ops

LANGUAGE = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text()


def table(heading: str) -> list[list[str]]:
    """The cells of the table that follows `heading` in docs/language.md, header left out."""
    after = LANGUAGE[LANGUAGE.index(heading + "\n"):]
    lines = [l for l in after.split("\n")[1:] if l.strip()]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[2:]  # the header and its rule


def words(cell: str) -> set[str]:
    """The names a table cell shows in code: `proj(e)`, `proj(e, n)` -> proj; `silu gelu` -> silu, gelu."""
    out = set()
    for code in re.findall(r"`([^`]*)`", cell):
        heads = re.findall(r"([a-z_][a-z0-9_]*)\(", code)
        out.update(heads or code.split())
    return out


def test_every_function_runs_an_op_of_the_runtime():
    from nldsl.runtime.level import Carry
    for f in vocab.FUNCTIONS.values():
        assert callable(getattr(ops, f.op, None)), f"{f.name}: nldsl.runtime.ops has no `{f.op}`"
        if f.state:  # lowered to a method of the state a call carries
            assert callable(getattr(Carry, f.op, None)), f"{f.name}: the level state has no `{f.op}`"
        for option in f.options:  # passed by name, as a constant of its type
            assert option in vocab.OPTION_TYPES, f"{f.name}: `{option}` has no type"
            assert option in inspect.signature(getattr(Carry if f.state else ops, f.op)).parameters, (f.name, option)


def test_every_activation_is_one_of_the_runtime():
    assert set(vocab.ACTIVATIONS) <= set(ops.ACT)
    assert vocab.DEFAULT_ACTIVATION in vocab.ACTIVATIONS


def test_every_size_rule_is_typed_by_the_checker():
    assert {f.size for f in vocab.FUNCTIONS.values()} <= set(vocab.SIZES)
    assert set(functions.OF_CONSTANTS) | set(functions.OF_SIZE) == set(vocab.SIZES)
    assert not set(functions.OF_CONSTANTS) & set(functions.OF_SIZE)


def test_functions_are_well_formed():
    for f in vocab.FUNCTIONS.values():
        lo, hi = f.arity
        assert 1 <= lo <= hi, f.name
        assert f.model or f.optimizer, f"{f.name} is allowed nowhere"
        assert not (f.params and f.optimizer), f"{f.name}: an optimizer's functions create no parameters"


def test_constants_fold_the_vocabulary_functions():
    """fold.FUNCS computes on numbers what the runtime op computes on tensors; a constant
    calls a function with a fixed number of arguments (checker and backend fold alike)."""
    assert set(fold.FUNCS) <= set(vocab.FUNCTIONS)
    for name in fold.FUNCS:
        lo, hi = vocab.FUNCTIONS[name].arity
        assert lo == hi, name
        args = [0.5] * hi
        assert fold.apply(name, *args) == pytest.approx(float(getattr(ops, vocab.FUNCTIONS[name].op)(*args))), name


def test_memory_kinds_and_rules_are_consistent():
    options = {o for k in vocab.MEMORY_KINDS.values() for o in k.options}
    assert set(vocab.MEMORY_FLAGS) <= options
    for k in vocab.MEMORY_KINDS.values():
        assert k.init in k.inits and set(k.inits) <= set(vocab.INITS), k.name
        assert k.rule is None or k.rule in vocab.RULES, k.name
    for r in vocab.RULES.values():
        assert set(r.flags) <= set(r.optional) and not set(r.required) & set(r.optional), r.name
    rule_options = {o for r in vocab.RULES.values() for o in r.required + r.optional}
    assert set(vocab.RATES) | set(vocab.RULE_FLAGS) == rule_options and not set(vocab.RATES) & set(vocab.RULE_FLAGS)


def test_the_function_table_documents_exactly_the_functions():
    documented = {}
    for cells in table("### Built-in functions"):
        for name in words(cells[0]):
            documented[name] = (cells[1] == "yes", cells[2] == "yes")
    assert set(documented) == set(vocab.FUNCTIONS), "docs/language.md, Built-in functions"
    for name, f in vocab.FUNCTIONS.items():
        assert documented[name] == (f.model, f.optimizer), f"{name}: where docs/language.md says it is allowed"


def test_the_tables_of_kinds_rules_and_activations_document_the_vocabulary():
    assert {w for cells in table("### Kinds") for w in words(cells[0])} == set(vocab.MEMORY_KINDS)
    assert {w for cells in table("### Rules") for w in words(cells[0])} == set(vocab.RULES)
    assert {w for cells in table("### Objectives") for w in words(cells[0])} == set(vocab.OBJECTIVES)
    act = next(cells for cells in table("### Options") if cells[0] == "`act`")
    assert words(act[2]) == set(vocab.ACTIVATIONS) and words(act[3]) == {vocab.DEFAULT_ACTIVATION}


def test_the_vocabulary_needs_no_torch():
    code = "import sys, nldsl.vocab; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
