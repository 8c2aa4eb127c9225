"""Check: resolve names, evaluate sizes, type flows, and rule out acausal specs.

Input: a loaded `Program` (ASTs of the root file, its imports and the library
optimizers it uses by name). Output: a `ProgramSpec` of concrete, validated models
and optimizers, or diagnostics. Every error found in a file is reported, not just
the first. The words of the language are nldsl/vocab.py's; each concern is a module
of this package, and `Checker` only walks the program's files.
"""
from __future__ import annotations

from ...vocab import (ACTIVATIONS, ELEMENTWISE, HINTS, INITS, MEMORY_KINDS, MODEL_FUNCS, OBJECTIVES,
                      OPTIMIZER_FUNCS, RULE_FLAGS, RULES, SELECTORS, SETTINGS, WORDS)
from ...vocab import OUTER_OBJECTIVES as OBJECTIVE_STMTS
from .. import ast
from ..diagnostics import Report
from ..load import Program
from ..spec import OptimizerSpec, ProgramSpec
from .consts import MAX_SIZE
from .context import Context, Env
from .models import model
from .optimizers import optimizer, visible
from .settings import unknown_overrides


class Checker(Context):
    """Checks every optimizer definition of every file, and the root file's models."""

    def run(self) -> ProgramSpec:
        models, optimizers = [], []
        root = self.program.modules.get(self.program.root)
        unknown_overrides(self, [i for i in root.items if isinstance(i, ast.Model)] if root else [])
        for file, module in self.program.modules.items():
            defs = [(i.name, i.span) for i in module.items if isinstance(i, (ast.Model, ast.OptimizerDef))]
            self.unique(defs, "definition")
            for item in module.items:
                if isinstance(item, ast.OptimizerDef):
                    spec = self.optimizer(item, file, {})
                    if spec and module is root:
                        optimizers.append(spec)
                elif isinstance(item, ast.Model) and module is root:
                    spec = model(self, item, file)
                    if spec:
                        models.append(spec)
        return ProgramSpec(file=self.program.root, models=tuple(models), optimizers=tuple(optimizers))

    def visible_optimizers(self, file: str):
        """The optimizers `file` may use by name: its own and those of its direct imports."""
        return visible(self, file)

    def optimizer(self, o: ast.OptimizerDef, file: str, hp: dict) -> OptimizerSpec | None:
        """One optimizer definition checked with the hyperparameters `hp` in place of its defaults."""
        return optimizer(self, o, file, hp)


def check_program(program: Program, report: Report, overrides: dict | None = None) -> ProgramSpec | None:
    spec = Checker(program, report, overrides).run()
    return None if report.errors else spec


__all__ = ["ACTIVATIONS", "ELEMENTWISE", "HINTS", "INITS", "MAX_SIZE", "MEMORY_KINDS", "MODEL_FUNCS", "OBJECTIVES",
           "OBJECTIVE_STMTS", "OPTIMIZER_FUNCS", "RULE_FLAGS", "RULES", "SELECTORS", "SETTINGS", "WORDS", "Checker",
           "Env", "check_program"]
