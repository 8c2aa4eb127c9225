"""What the runtime needs to know of a level or an optimizer: plain, literal data.

The backend fills these from the checked spec; emitted source writes them as
literals, so a standalone model file needs nothing but torch and this runtime."""
from __future__ import annotations

from dataclasses import dataclass

from ..vocab import DEFAULT_ACTIVATION


@dataclass(frozen=True)
class MemoryDesc:
    name: str
    kind: str  # linear | mlp | attention
    heads: int = 1
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # θ's tensors, one copy: (("W2", (h, k, i)), ...)
    act: str = DEFAULT_ACTIVATION
    residual: bool = False
    norm: bool = False  # a layer norm per head on the output, its scale and bias outer parameters (memories/norm.py)
    init: str = "normal"  # zeros | ones | normal | identity
    constant: bool = False  # θ₀ is a buffer (`fixed`, or a frozen level), not an outer parameter
    source: str | None = None  # nested CMS: `level.memory` whose state this one starts from
    detach: bool = False
    window: int | None = None
    alibi: bool = False  # attention: ALiBi's bias, −m_h · (t − s), on each score
    items: int = 1  # attention: items each token appends (its key and value cut in `items` parts)
    segment: bool = False  # attention: a query sees only the items of its own period
    objective: str | None = None  # l2 | dot | task; None: never learns
    rule: str | None = None  # gd | momentum | implicit | append
    decay_first: bool = False  # gd: each token's gradient at α_t S_{t-1}, the decayed state (Gated DeltaNet)
    per_token: bool = False  # gd, momentum: a step at every token, the gradients at the period's start (Titans)
    read: str = "before"
    # how the fused path runs it over whole periods of a parallel level (the pass `choose_forms`):
    # "chunk", the chunk-parallel delta rule; "mlp", a period as one node; None, period by period
    form: str | None = None
    triton: str | None = None  # the Triton kernel that may run that form (kernels.py), on CUDA or when asked


@dataclass(frozen=True)
class LevelDesc:
    name: str
    scope: str  # sequence | cross | outer | frozen | optimizer
    period: int | None  # tokens, for every level with a period (steps, for an optimizer's)
    memories: tuple[MemoryDesc, ...] = ()
    parallel: bool = False  # no learning memory's read feeds an item: whole periods run in one step call
    tile: int = 64  # the tile of chunk-parallel memories (a schedule choice; results do not depend on it)
    kernel: str | None = None  # the `kernel` hint: auto | torch | triton, in place of the compile option
    group: bool = True  # the `group` hint: stack alike memories into one batched call (fused path)
    stacks: tuple[tuple[str, ...], ...] = ()  # alike memories that learn together: held stacked when grouped


@dataclass(frozen=True)
class OptimizerDesc:
    """An optimizer as its compiled per-parameter step runs: its hyperparameters (the
    parameter groups' defaults, which the step reads from its group), those of them fixed
    in the step, and its levels (periods in steps) with their memories."""
    name: str
    hparams: dict[str, float]  # the spec's defaults, replaced where the use site or the caller said
    levels: tuple[LevelDesc, ...] = ()
    fixed: tuple[str, ...] = ()  # constants of the step (they shape it): a group may not change them
