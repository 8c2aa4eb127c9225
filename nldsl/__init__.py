"""nldsl: write Nested Learning models as specs of levels, flows, periods and objectives."""
from .api import compile
from .compiler.driver import check, load

__all__ = ["check", "compile", "load"]
__version__ = "0.1.0"
