"""Regional compilation (docs/performance.md, "torch.compile"): `torch.compile` on the
period step of a level, traced once with the period's fixed shapes and reused for every
period of every call, while the loops over periods and segments stay eager. Compile
time then depends on the levels, not on the context (a whole-model `torch.compile`
unrolls every period of a call into one graph).

Two regions are compiled:

- a level's chunk step over one whole period (`period_step`), for levels whose periods
  run one at a time (`scan`'s loop; a self-modifying level such as HOPE's Titans). The
  step's calls into the level state (reads, records, conv tails) are traced with it.
  A step that reads its tokens' positions (rope, a position table, an attention
  memory), or one written out as source, runs eagerly.
- the algebra of one period of an MLP memory (memories/mlp/period.py), for levels whose
  runs of whole periods go to one span (`run_span`, titans.nl's level): its forward, and
  its backward when no gradient is taken of it again.

A region compiled on its own (AOTAutograd) cannot be differentiated twice. A task level
(`learn M : task`) takes a gradient inside the forward (create_graph) through its own
reads and through every level that runs after it in the segment, and the outer backward
differentiates that gradient again: those levels' period steps run eagerly while the
outer gradient is wanted (`ModelState.under_task`), and the MLP period's backward runs
its eager form whenever autograd records it (`torch.is_grad_enabled()` inside backward).
Both regions run compiled only while the model trains (`enter` decides it once a
segment): a task level's inner gradient turns autograd on in evaluation too, and
evaluation runs eagerly, as it would without regions, to the last bit.
Models whose task levels have several periods (`Model.holds_given`) keep the state a
traced graph cannot follow, so `regional` leaves them eager, as `torch.compile` of the
whole model does.
"""
from __future__ import annotations

import weakref

import torch
import torch.utils._pytree as pytree

_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # level copy -> its compiled chunk step

# Inductor's options for a region. A region's tensors are one period's (16 tokens × a
# head's 32 features in hope.nl): its products are library calls, and its elementwise
# loops are too short for SIMD to pay. Scalar C++ loops compile in two thirds of the
# time of vectorized ones (hope.nl: 36 s cold against 57 s) and run as fast
# (docs/benchmarks.md, "Regional compilation"). The options name C++ code only; on a GPU
# inductor writes Triton and ignores them.
INDUCTOR_OPTIONS = {"cpp.simdlen": 1}


def _compile(fn, backend):
    options = dict(INDUCTOR_OPTIONS) if backend == "inductor" and INDUCTOR_OPTIONS else None
    return torch.compile(fn, backend=backend, dynamic=False, options=options)


def regional(model, enabled: bool = True, backend: str = "inductor"):
    """Run `model` (a compiled nldsl model) with its period steps compiled, from its
    next call; `enabled=False` runs it eagerly again. Returns the model."""
    model.options["regional"] = backend if enabled and not model.holds_given() else None
    for level in model.levels():
        _steps.pop(level, None)
    return model


def period_step(level, x: torch.Tensor, ls, state) -> torch.Tensor:
    """`level.step(x, ls)` over one whole period: compiled when the model runs regionally,
    trains (the outer gradient is wanted) and no gradient will be taken through it twice;
    eager otherwise (evaluation and generation run as they would without). A sequence's
    first period runs eagerly too: it starts the conv tails, so compiled it would be a
    graph of its own (as long to compile as the rest) for one period in many."""
    if (not ls.compile or torch.compiler.is_compiling() or ls.period is None or x.shape[1] != ls.period
            or ls.pos == 0 or getattr(state, "under_task", False)):
        return level.step(x, ls)
    step = _steps.get(level)
    if step is None:
        step = _steps[level] = False if _reads_position(level) else _compile(level.step, ls.compile)
    if step is False:
        return level.step(x, ls)
    return step(x.contiguous(), ls)  # a period cut from a segment has its segment's strides


def _reads_position(level) -> bool:
    """Whether a level's step reads the position of its tokens (rope, a position table, an
    attention memory's cache): compiled with fixed shapes, every period would be a graph
    of its own. Such a step runs eagerly."""
    if any(m.kind == "attention" for m in level.desc.memories):
        return True
    graph = getattr(level.step, "graph", None)  # a GraphModule; a method in emitted source has none
    return graph is None or any(n.op == "call_method" and n.target in ("rope", "positional") for n in graph.nodes)


def enter(level, ls, state) -> None:
    """Called as a level copy starts its part of a segment: sets the backend its regions
    may compile with in it (`ls.compile`; None: eager), the model's while it trains. From a
    task level on whose inner gradient is exact (differentiated again by the outer
    backward), every level run in the segment lies under that gradient."""
    training = getattr(state, "outer_grad", False)
    ls.compile = ls.options.get("regional") if training else None
    if not training:  # no outer gradient: the inner ones are first order
        return
    if any(m.objective == "task" and not m.detach for m in level.desc.memories) and level.desc.scope == "sequence":
        state.under_task = True


_compiled: dict = {}


def compiled(fn, backend: str):
    """A pure tensor function (a period's algebra), compiled with fixed shapes, once per
    backend. Its tensors are passed contiguous: a period cut from a span (or the gradient
    of one) has strides that depend on the span's length, and each new stride would
    compile the region again."""
    got = _compiled.get((fn, backend))
    if got is None:
        run = _compile(fn, backend)

        def got(*args):
            return run(*pytree.tree_map_only(torch.Tensor, torch.Tensor.contiguous, args))
        _compiled[fn, backend] = got
    return got
