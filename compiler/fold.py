"""Constant folding: arithmetic and elementwise functions on plain numbers and on
constant vectors (tuples of numbers: `[0.9, 0.99]`, `range(heads)`).

The checker folds every constant part of a spec (`2 * dim`, `exp(-3)`, `1 / 0`,
`1 - 2 ** (-5 - range(4))`) to report, where it is written, one that has no value in
range (NL160); the torch backend folds the same parts with the same function. So a
spec that checks clean never meets an overflow, a division by zero or a NaN while it
is built. Plain `math`: the checker does not import torch.
"""
from __future__ import annotations

import math
import operator

MAX_NUMBER = 1e18  # beyond this a number is a typo; its square still fits a float32


class FoldError(ArithmeticError):
    """A constant with no value in range. `str(e)` completes a sentence about the
    expression ("divides by zero", "is out of range", ...); `help` says what is allowed."""

    def __init__(self, reason: str, help: str | None = None):
        super().__init__(reason)
        self.help = help


def _out_of_range() -> FoldError:
    return FoldError("is out of range", f"a constant must be finite and at most {MAX_NUMBER:.0e} in size")


def _sigmoid(x):
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)  # the same value, without math.exp(-x) overflowing for very negative x
    return z / (1 + z)


def _pow(a, b):
    v = float(a) ** b
    if isinstance(v, complex):
        raise FoldError("raises a negative number to a fractional power")
    if isinstance(a, int) and isinstance(b, int) and b >= 0 and abs(v) <= MAX_NUMBER:
        return a ** b  # exact, and small: the float result bounds it
    return v


BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": _pow}

# The functions a constant may call (their arity is in nldsl/vocab.py). Their values on
# numbers agree with nldsl.runtime.ops on tensors.
FUNCS = {
    "silu": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
    "relu": lambda x: max(x, 0.0),
    "tanh": math.tanh,
    "sigmoid": _sigmoid,
    "softplus": lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "abs": abs,
    "sign": lambda x: float((x > 0) - (x < 0)),
    "max": max,
    "min": min,
    "select": lambda cond, a, b: a if cond else b,
}


# Functions whose value is a constant vector: `range(n)` is 0, 1, ..., n - 1 (n a count the checker allowed).
VECTORS = {"range": lambda n: tuple(range(int(n)))}


def negate(v):
    """Unary minus of a number or, elementwise, of a vector."""
    return tuple(-x for x in v) if isinstance(v, tuple) else -v


def apply(op: str, *args):
    """`op` (`+`, `-`, `*`, `/`, `**` or a name of FUNCS) applied to numbers, or
    elementwise to vectors of one size and numbers (broadcast, as is a vector of one number);
    the result is finite and at most MAX_NUMBER in size, or FoldError says why not (and at
    which element)."""
    args = [a[0] if isinstance(a, tuple) and len(a) == 1 else a for a in args]
    sizes = {len(a) for a in args if isinstance(a, tuple)}
    if sizes:
        if len(sizes) > 1:  # the checker reports NL130 before folding such operands
            raise ValueError(f"vectors of sizes {sorted(sizes)} do not broadcast")
        out = []
        for i in range(sizes.pop()):
            try:
                out.append(apply(op, *(a[i] if isinstance(a, tuple) else a for a in args)))
            except FoldError as e:
                raise FoldError(f"{e} (at element {i}, counting from 0)", e.help) from None
        return tuple(out)
    fn = BINARY[op] if op in BINARY else FUNCS[op]
    try:
        v = fn(*args)
    except ZeroDivisionError:
        raise FoldError("divides by zero") from None
    except OverflowError:
        raise _out_of_range() from None
    except ValueError:  # a math domain error: only sqrt has one among FUNCS
        raise FoldError("takes the square root of a negative number") from None
    if not math.isfinite(v) or abs(v) > MAX_NUMBER:
        raise _out_of_range()
    return v
