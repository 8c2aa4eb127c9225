"""When the Triton kernels run, and what they share. The kernels live beside their
memories' PyTorch references:

- `gated_delta_rule` (memories/linear/triton.py): a linear memory on l2 with gd and
  period 1, chunk parallel, forward and backward in Triton;
- `mlp_period_update` (memories/mlp/triton.py): one period of a 2-layer mlp memory
  (read, gradient and gd step) fused into one program per sequence and head,
  forward and backward in Triton.

Both are reached through this module, which the fused path (runtime/fused.py) calls.
Triton is imported only when a kernel is first used, so importing this module never
fails without it; `available` says whether a kernel may run on a tensor. The
kernels are built (compiled or interpreted) at that first use, so TRITON_INTERPRET
must be set before it to run them on the CPU.

Which runs is the compile option `kernels` (`MODES`): "auto" uses them on CUDA
tensors, "triton" wherever `available` says they can run, "torch" never.
"""
from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["MODES", "available", "check_mode", "gated_delta_rule", "mlp_period_update",
           "mlp_period_update_reference"]

_WHERE = {"gated_delta_rule": ".memories.linear.triton", "mlp_period_update": ".memories.mlp.triton",
          "mlp_period_update_reference": ".memories.mlp.triton"}


def _has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


MODES = ("auto", "triton", "torch")


def check_mode(mode: str) -> str:
    """The `kernels` option as given, or a ValueError naming the allowed values."""
    if mode not in MODES:
        raise ValueError(f"kernels={mode!r}: expected one of {', '.join(map(repr, MODES))}")
    return mode


def available(t: torch.Tensor) -> bool:
    """Whether a kernel can run on t: triton is installed, and t is on a GPU or the
    Triton interpreter is on (TRITON_INTERPRET=1, CPU tensors)."""
    if not _has_triton():
        return False
    return bool(t.is_cuda) or os.environ.get("TRITON_INTERPRET") == "1"


def differentiate(reference, inputs, needs, grads) -> tuple:
    """A kernel's backward by its PyTorch reference: recompute `reference(*inputs)` and
    take its vector-Jacobian product with `grads`, for the inputs that `needs` marks.
    Under create_graph (grad mode on inside a backward: a task level above takes a
    gradient through the kernel) the inputs stay connected and the products are
    differentiable, so the second derivative through a kernel is its reference's."""
    create = torch.is_grad_enabled()
    if not create:
        inputs = [x.detach().requires_grad_(need) if torch.is_tensor(x) else x for x, need in zip(inputs, needs)]
    wanted = [x for x, need in zip(inputs, needs) if need and x is not None]
    with torch.enable_grad():
        outs = reference(*inputs)
        got = iter(torch.autograd.grad(outs, wanted, grads, create_graph=create, allow_unused=True))
    return tuple(next(got) if need and x is not None else None for x, need in zip(inputs, needs))


def __getattr__(name: str):
    # the kernel modules import triton: load them on first use only
    if name in _WHERE:
        module = importlib.import_module(_WHERE[name], __package__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
