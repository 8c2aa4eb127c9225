"""nldsl: write Nested Learning models as specs of levels, flows, periods and objectives."""
from .api import compile, compile_optimizer, flush_subnormals
from .compiler.driver import check, load

__all__ = ["check", "compile", "compile_optimizer", "flush_subnormals", "load"]
__version__ = "0.1.0"
