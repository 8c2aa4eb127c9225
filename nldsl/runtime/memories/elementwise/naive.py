"""An elementwise memory, the reference (design §10, docs/optimizers.md): θ holds one
tensor W shaped like the optimizer's parameter; M(k) = θ⊙k, or θ itself when keyless."""
from __future__ import annotations


def read(theta: dict, e=None):
    """`m` (e None): θ; applied, `m(k)`: θ⊙k."""
    return theta["W"] if e is None else theta["W"] * e


def grad(objective: str, theta, key, value):
    """∇θ of ℓ for M(k) = θ⊙k (θ itself when keyless): l2 ½‖M(k) − v‖², dot −⟨M(k), v⟩."""
    if objective == "dot":
        return -value if key is None else -value * key
    return theta - value if key is None else (theta * key - value) * key
