"""The level graph and the hierarchy derived from it (semantics.md §1)."""
import dataclasses
import operator
from pathlib import Path

import networkx as nx
import pytest

from nldsl.compiler import passes
from nldsl.compiler.driver import check
from nldsl.compiler.ir import IRError, build, schedule_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.nl"))


def model(text: str):
    return check(text).models[0]


def tiers(spec):
    ir = passes.run(spec)
    return [(t["label"], sorted(t["levels"])) for t in ir.tiers]


HEAD = "vocab 10\ndim 8\nheads 2\ncontext 32\nbatch 4\n"
TAIL = "objective next_token\noptimizer adamw(lr: 1e-3)\n"


def level(name, period, lr="0.5"):
    return (f"level {name} {period} {{ memory M : linear(dim, heads: heads)\n"
            f"  flow q = proj(x)\n flow k = proj(x)\n flow v = proj(x)\n"
            f"  learn M : l2(k, v) by gd(lr: {lr})\n out M(q) }}\n")


def test_hope_hierarchy_is_the_papers_picture():
    ir = passes.run(check(ROOT / "examples/hope.nl").models[0])
    slowest_first = [(t["label"], t["levels"]) for t in reversed(ir.tiers)]
    assert slowest_first == [
        ("every 16M tokens", ["cms3"]),
        ("every 1M tokens", ["cms2"]),
        ("every 1 step", ["W"]),
        ("every 1 step", ["moments"]),
        ("every 64 tokens", ["cms1"]),
        ("every 16 tokens", ["titans"]),
    ]


def test_ownership_is_one_tree_rooted_at_the_optimizer():
    ir = passes.run(check(ROOT / "examples/hope.nl").models[0])
    owns = ir.of_kind("owns")
    assert nx.is_arborescence(owns)
    (root,) = [n for n in owns if owns.in_degree(n) == 0]
    assert root == "optimizer:adamw"
    # slower owns faster along the chain of periods
    chain = nx.shortest_path(owns, root, "level:titans")
    periods = [ir.graph.nodes[n]["tokens"] for n in chain if n.startswith("tier:")]
    assert periods == sorted(periods, reverse=True)


def test_equal_periods_with_a_dependency_are_ordered():
    # b reads a's output at the same token: b is the slower (outer) of the two
    spec = model(f"model m {{ {HEAD} {level('a', 'every 4 tokens')} {level('b', 'every 4 tokens')}"
                 f" block {{ x = x + a(rmsnorm(x))\n x = x + b(rmsnorm(x)) }} {TAIL} }}")
    t = [x for x in tiers(spec) if x[0] == "every 4 tokens"]
    assert t == [("every 4 tokens", ["a"]), ("every 4 tokens", ["b"])]


def test_equal_periods_without_a_dependency_share_a_level():
    spec = model(f"model m {{ {HEAD} {level('a', 'every 4 tokens')} {level('b', 'every 4 tokens')}"
                 f" block {{ h = rmsnorm(x)\n x = x + a(h) + b(h) }} {TAIL} }}")
    t = [x for x in tiers(spec) if x[0] == "every 4 tokens"]
    assert t == [("every 4 tokens", ["a", "b"])]


def test_cross_sequence_levels_are_slower_than_a_step():
    # one step = batch 4 x context 32 = 128 tokens
    spec = model(f"model m {{ {HEAD} level s every 16 tokens {{ memory f : mlp(dim) learn f : task by gd(lr: 1) }}"
                 f" level c every 1K tokens {{ memory f : mlp(dim) }}"
                 f" block {{ x = x + s(x)\n x = x + c(x) }} {TAIL} }}")
    labels = [x[0] for x in tiers(spec)]
    assert labels == ["every 16 tokens", "every 1 step", "every 1 step", "every 1K tokens"]
    scopes = {lv.name: lv.scope for lv in spec.levels}
    assert scopes == {"s": "sequence", "c": "cross"}


def test_outer_levels_belong_to_the_weights_tier():
    ir = passes.run(check(ROOT / "examples/transformer.nl").models[0])
    weights = next(t for t in ir.tiers if "W" in t["levels"])
    assert "ffn" in weights["levels"]


def test_optimizer_moments_are_faster_than_the_weights():
    ir = passes.run(check(ROOT / "examples/optim/m3.nl").optimizers[0])
    assert [(t["label"], t["levels"]) for t in ir.tiers] == [
        ("every 1 step", ["fast"]), ("every 1 step", ["W"]), ("every 4 steps", ["slow"])]


def test_verify_rejects_a_memory_in_two_levels():
    ir = build(check(ROOT / "examples/transformer.nl").models[0])
    ir.graph.add_edge("level:ffn", "memory:attn.kv", kind="member")
    with pytest.raises(IRError, match="belongs to 2 levels"):
        ir.verify()


def test_verify_rejects_two_owners():
    ir = passes.run(check(ROOT / "examples/transformer.nl").models[0])
    ir.graph.add_edge("tier:0", "weights", kind="owns")
    with pytest.raises(IRError, match="two owners"):
        ir.verify()


@pytest.mark.parametrize("name", passes.PASS_NAMES)
def test_print_after_each_pass(name):
    printed = []
    passes.run(check(ROOT / "examples/hope.nl").models[0], print_after=name, out=printed.append)
    assert len(printed) == 1 and printed[0].startswith("model hope")


def test_parameter_count_matches_a_count_by_hand():
    spec = model(f"model m {{ {HEAD} depth 2 {level('a', 'every 4 tokens')}"
                 f" block repeat depth {{ x = x + a(rmsnorm(x)) }} {TAIL} }}")
    ir = passes.run(spec)
    embed = head = 10 * 8
    final_norm = 8
    per_layer = 3 * 8 * 8 + 2 * 4 * 4 + 8  # q, k, v projections; θ₀ of 2 heads of 4x4; the block's rmsnorm
    assert ir.graph.nodes["weights"]["params"] == embed + head + final_norm + 2 * per_layer


def test_memory_nodes_carry_the_rules_flags():
    """`nldsl ir` shows how each memory steps: `steps=per token` for `per_token` (HOPE's
    titans level), `order=decay first` for `decay_first` (Gated DeltaNet)."""
    hope = passes.run(check(ROOT / "examples/hope.nl").models[0]).graph.nodes
    assert (hope["memory:titans.mem"]["rule"], hope["memory:titans.mem"].get("steps")) == ("gd", "per token")
    assert hope["memory:cms1.ffn"].get("steps") is None
    gdn = passes.run(check(ROOT / "examples/gated_deltanet.nl").models[0]).graph.nodes
    assert gdn["memory:delta.S"]["order"] == "decay first" and gdn["memory:delta.S"].get("steps") is None


def test_printing_after_a_step_pass_shows_what_it_did():
    """`--print-after` shows the chunk steps from `lower` on: after `group_memories`
    titans' alike memories are read in one call, before it (after `share_common`) not."""
    spec = check(ROOT / "examples/hope.nl").models[0]
    before, after = [], []
    passes.run(spec, print_after="share_common", out=before.append)
    passes.run(spec, print_after="group_memories", out=after.append)
    assert "step of level:titans:" in before[0] and "segment of the model:" in before[0]
    assert "read_many" not in before[0] and "st.read_many(('k', 'v', 'mem')" in after[0]
    assert "schedule=stacked k+v+mem; stacked eta+alpha" in after[0]


def test_the_torch_backend_builds_what_the_graph_says():
    """The backend reads the annotated graph, not the spec: a description or a step
    changed on the graph is what the model runs."""
    import torch

    import nldsl
    from nldsl.compiler.backends.fx import build_model

    spec = check(ROOT / "examples/gated_deltanet.nl", dim=32, context=16, vocab=64).models[0]
    ir = passes.run(spec)
    node = ir.graph.nodes["level:delta"]
    node["desc"] = dataclasses.replace(node["desc"], tile=8)
    out = next(n for n in node["step"].nodes if n.op == "output")
    with node["step"].inserting_before(out):  # the level's output, doubled
        doubled = node["step"].call_function(operator.mul, (out.args[0], 2.0))
    out.args = (doubled,)
    torch.manual_seed(0)
    changed = build_model(ir)
    torch.manual_seed(0)
    plain = nldsl.compile(ROOT / "examples/gated_deltanet.nl", dim=32, context=16, vocab=64)
    assert {lv.desc.tile for lv in changed.levels() if lv.desc.name == "delta"} == {8}
    assert {lv.desc.tile for lv in plain.levels()} == {64}
    tokens = torch.randint(0, 64, (1, 16))
    assert not torch.allclose(changed(tokens)[0], plain(tokens)[0])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_model_and_the_diagram_share_one_schedule(path):
    """What `nldsl graph --schedule` draws for each level is the description the
    compiled model runs with (whole periods at once, stacks, tile, kernel)."""
    import nldsl
    from nldsl.compiler.backends.graphviz import to_dot

    for spec in check(path).models:
        ir = passes.run(spec)
        model = nldsl.compile(path, name=spec.name)
        dot = to_dot(ir, schedule=True)
        for lv in model.levels():
            d = ir.graph.nodes[f"level:{lv.desc.name}"]
            assert lv.desc == d["desc"]
            for line in schedule_of(d):
                assert f"▸ {line}" in dot


def test_the_fused_path_runs_each_memory_in_the_form_the_graph_chose(monkeypatch):
    """`choose_forms` decides how a parallel level's memories run (the diagram says it);
    the runtime follows: the chunk-parallel delta rule for gated_deltanet.nl's S, a period
    as one node for titans.nl's M. With the forms taken off the graph, the same models
    run period by period and compute the same logits."""
    import torch

    from nldsl.compiler.backends.fx import build_model
    from nldsl.runtime import fused

    ran = []
    real_delta, real_loop = fused.delta_rule, fused.Span._mlp_loop
    monkeypatch.setattr(fused, "delta_rule", lambda *a, **k: ran.append("chunk") or real_delta(*a, **k))
    monkeypatch.setattr(fused.Span, "_mlp_loop", lambda *a, **k: ran.append("mlp") or real_loop(*a, **k))
    for name, form in (("gated_deltanet", "chunk"), ("titans", "mlp")):
        spec = check(ROOT / f"examples/{name}.nl", dim=32, context=32, vocab=64).models[0]
        tokens = torch.randint(0, 64, (1, 32))
        outs = []
        for keep in (True, False):
            ir = passes.run(spec)
            for node, d in ir.graph.nodes(data=True):
                if "desc" in d and d["kind"] == "level" and not keep:
                    mems = tuple(dataclasses.replace(m, form=None, triton=None) for m in d["desc"].memories)
                    d["desc"] = dataclasses.replace(d["desc"], memories=mems)
            assert (form in {m.form for n, d in ir.graph.nodes(data=True) if "desc" in d and d["kind"] == "level"
                             for m in d["desc"].memories}) == keep
            torch.manual_seed(0)
            ran.clear()
            with torch.no_grad():
                outs.append(build_model(ir)(tokens)[0])
            assert (form in ran) == keep and len(set(ran)) <= 1
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
