"""Edits: overrides that change what a level is (compiler/edit.py). Each edit must give
the very model of the spec written with that change by hand: the same checked levels,
and the same logits from the same seed."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import cli
from nldsl.compare import parse_variant
from nldsl.compiler.diagnostics import NLError
from nldsl.compiler.driver import check
from nldsl.train import load_run, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dim=32, heads=2, depth=1, context=64)


def by_hand(old: str, new: str, spec: str = "hope.nl") -> str:
    text = (ROOT / "examples" / spec).read_text()
    assert text.count(old) == 1, old
    return text.replace(old, new)


CMS1 = """  level cms1 every 64 tokens {
    memory ffn : mlp(dim, hidden: 4 * dim)
    learn ffn : task by gd(lr: 1e-2)
  }"""
RULE = "learn k, v, mem, eta, alpha : l2(key, self(val)) by gd(lr: lr, decay: keep, per_token)"
CASES = {
    "outer": ({"cms1": "outer"}, by_hand(CMS1, "  level cms1 outer { memory ffn : mlp(dim, hidden: 4 * dim) }")),
    "period": ({"cms1": "every 16 tokens"}, by_hand("level cms1 every 64 tokens", "level cms1 every 16 tokens")),
    "none": ({"cms3": "none"},
             by_hand("  level cms3 every 16M tokens { memory ffn : mlp(dim, hidden: 4 * dim) }\n", "")
             .replace("    x = x + cms3(rmsnorm(x))\n", "")),
    "rule": ({"titans.rule": "gd(lr: lr, per_token, decay: 0.9)"},
             by_hand(RULE, RULE.replace("gd(lr: lr, decay: keep, per_token)", "gd(lr: lr, per_token, decay: 0.9)"))),
    "objective": ({"cms1.objective": "l2(x, x)"}, by_hand("learn ffn : task by", "learn ffn : l2(x, x) by")),
    "read": ({"titans.read": "within"}, "titans.nl",
             "learn M : l2(k, v) by momentum(lr: lr, beta: surprise_decay, decay: keep)",
             "learn M : l2(k, v) by momentum(lr: lr, beta: surprise_decay, decay: keep) read within"),
    "flow": ({"titans.lr": "0.02 * sigmoid(eta(x))"},
             by_hand("flow lr = 0.01 * sigmoid(eta(x))", "flow lr = 0.02 * sigmoid(eta(x))")),
    "memory": ({"titans.mem": "mlp(dim, hidden: 2 * dim, residual, heads: heads)"},
               by_hand("memory k, v, mem : mlp(dim, hidden: dim, residual, heads: heads)",
                       "memory k, v : mlp(dim, hidden: dim, residual, heads: heads)\n"
                       "    memory mem : mlp(dim, hidden: 2 * dim, residual, heads: heads)")),
}


@pytest.mark.parametrize("case", CASES)
def test_an_edit_is_the_spec_changed_by_hand(case):
    edits, *change = CASES[case]
    spec = ROOT / "examples" / (change[0] if len(change) == 3 else "hope.nl")
    text = by_hand(*change[1:], spec.name) if len(change) == 3 else change[0]
    edited = nldsl.graph(spec, **TINY, **edits)
    written = nldsl.graph(text, **TINY)
    assert edited.describe() == written.describe()
    assert check(spec, **edits).models[0].levels != check(spec).models[0].levels
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    logits = []
    for source, over in ((spec, edits), (text, {})):
        torch.manual_seed(0)
        model = nldsl.compile(source, **TINY, **over).double()
        logits.append(model(tokens)[0])
    assert torch.equal(logits[0], logits[1])


def test_edits_and_settings_together():
    spec = check(ROOT / "examples" / "hope.nl", dim=64, **{"cms2": "none", "cms3": "none", "cms1": "outer"})
    model = spec.models[0]
    assert [(lv.name, lv.period.kind) for lv in model.levels] == [("titans", "tokens"), ("cms1", "outer")]
    assert model.settings["dim"] == 64


def errors(argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    assert code == 1
    assert "Traceback" not in err.getvalue()
    return err.getvalue()


@pytest.mark.parametrize("item, says", [
    ("titanz=outer", "hope.nl:7:1: error[NL124]: override `titanz='outer'` names no level of this spec"),
    ("titanz.rule=gd(lr: 0.01)", "error[NL125]: edit `titanz.rule=gd(lr: 0.01)`: the spec has no level `titanz`\n"
                                 "  help: did you mean `titans`?"),
    ("titans.qq=x", "hope.nl:25:3: error[NL125]: edit `titans.qq=x`: level `titans` has no flow or memory `qq` "
                    "(did you mean `q`?)"),
    ("cms2.rule=gd(lr: 1)", "error[NL125]: edit `cms2.rule=gd(lr: 1)`: level `cms2` learns nothing"),
    ("cms1.read=after", "error[NL125]: `read` is `before` or `within`, not `after`"),
    ("titans.rule=gd(lr: ", "<titans.rule>:1:7: error[NL012]"),
    ("titans.rule=gd(lr: nope)", "<titans.rule>:1:8: error[NL100]: unknown name `nope`\n   1 | gd(lr: nope)\n"
                                 "              ^^^^"),
    ("cms1=every 16 hours", "<cms1>:1:10: error[NL011]"),
    ("dim=abc", "--set `dim=abc`: `abc` is not a number"),
    ("titans.rule=" + "x" * 1001, "must be one line of at most 1000 printable characters"),
])
def test_a_bad_edit_is_a_located_diagnostic(item, says):
    assert says in errors(["check", str(ROOT / "examples" / "hope.nl"), "--set", item])


def test_an_edit_that_makes_a_bad_model_is_checked_like_a_spec():
    # an outer level may not learn: the rule of a level made outer is gone with its learns
    out = errors(["stats", str(ROOT / "examples" / "hope.nl"), "--set", "cms1=outer", "--set", "cms1.rule=gd(lr: 1)"])
    assert "level `cms1` learns nothing" in out


def test_variants_split_at_commas_outside_brackets():
    v = parse_variant("conv=titans,titans.q=l2norm(conv(proj(x), 4), heads: heads),dim=64")
    assert v.own == {"titans.q": "l2norm(conv(proj(x), 4), heads: heads)", "dim": 64}


def test_a_run_keeps_its_edits(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    edits = {"cms3": "none", "titans.rule": "gd(lr: lr, decay: keep)"}
    common = dict(data=str(text), out_dir=tmp_path / "run", eval_batches=1, sample=0, quiet=True, device="cpu")
    train("hope", steps=2, overrides={**TINY, **edits}, eval_every=2, ckpt_every=2, **common)
    model, ckpt = load_run(tmp_path / "run", device="cpu")
    assert ckpt.overrides == {**TINY, **edits}
    state = {k: v.shape for k, v in model.state_dict().items()}
    assert state == {k: v.shape for k, v in nldsl.compile(ROOT / "examples" / "hope.nl", **TINY, **edits).state_dict().items()}
    assert state != {k: v.shape for k, v in nldsl.compile(ROOT / "examples" / "hope.nl", **TINY).state_dict().items()}
    # the run resumes with its edits, and refuses others
    train("hope", steps=3, resume=True, overrides={**TINY, **edits}, eval_every=3, ckpt_every=3, **common)
    with pytest.raises(Exception, match="--set"):
        train("hope", steps=4, resume=True, overrides={**TINY, "cms1": "frozen"}, eval_every=4, ckpt_every=4,
              **common)


def test_the_documented_ablations_check():
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    command = re.search(r"```sh\n(nldsl compare hope \\\n.*?)```", doc, re.S).group(1)
    variants = [a for a in shlex.split(command, comments=True) if "=hope," in a]
    assert len(variants) == 4
    for text in variants:
        v = parse_variant(text)
        check(ROOT / "examples" / "hope.nl", **v.own)
