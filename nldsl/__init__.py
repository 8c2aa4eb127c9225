"""nldsl: write Nested Learning models as specs of levels, flows, periods and objectives."""
from __future__ import annotations

import importlib

__all__ = ["check", "compile", "compile_optimizer", "flush_subnormals", "graph", "load", "stats"]
__version__ = "0.1.0"

# The API and the compiler load on first use, not here: a model emitted as source
# imports nldsl.runtime, which must not need the compiler (tests/test_emit.py).
_WHERE = {"compile": ".api", "compile_optimizer": ".api", "flush_subnormals": ".api", "graph": ".api", "stats": ".api",
          "check": ".compiler.driver", "load": ".compiler.driver"}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value  # found once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
