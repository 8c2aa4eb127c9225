"""The schedule the level graph states is the one the runtime keeps: for every model
example, the tokens after which each level copy applies its inner rule, as the runtime
reports them (every inner update is followed by its finiteness check, which names the
level copy and the token), equal `passes.update_tokens` for that level. Attention
memories (`append`) keep a cache with no finiteness check to report them: their
schedule is held by the attention tests of test_semantics.py, not here."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl.compiler import passes
from nldsl.compiler.driver import check
from nldsl.runtime.level import LevelState

ROOT = Path(__file__).resolve().parent.parent
MODELS = [(f, m.name) for f in sorted((ROOT / "examples").glob("*.nl")) for m in check(f).models]
T = 72  # not a multiple of 16 or 64: the last period of some levels is cut short


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("file, name", MODELS, ids=[name for _, name in MODELS])
def test_the_runtime_updates_each_level_where_the_graph_says(file, name, fused, monkeypatch):
    spec = next(m for m in check(file, dim=16, heads=2, depth=2, context=T).models if m.name == name)
    ir = passes.run(spec, out=lambda *_: None)
    stated = {d["name"]: passes.update_tokens(ir, n, T) for n, d in ir.graph.nodes(data=True)
              if d["kind"] == "level" and "/" not in n and {l.rule for l in d["spec"].learns} != {"append"}}
    assert stated
    seen = defaultdict(set)
    check_state = LevelState.check

    def traced(self, f, pos=None):
        seen[self.name].add(self.pos if pos is None else pos)
        return check_state(self, f, pos)

    monkeypatch.setattr(LevelState, "check", traced)
    torch.manual_seed(0)
    model = nldsl.compile(file, name=name, dim=16, heads=2, depth=2, context=T, fused=fused)
    with torch.no_grad():
        model(torch.randint(0, 256, (2, T)))
    for level, tokens in stated.items():
        copies = [c for c in seen if c.split(".")[0] == level]
        for copy in copies or [level]:
            got = sorted(seen.get(copy, ()))
            if fused and got and tokens:  # a fused span checks once, at its end
                assert set(got) <= set(tokens) and got[-1] == tokens[-1], (copy, got, tokens)
            else:
                assert got == tokens, (copy, got, tokens)
