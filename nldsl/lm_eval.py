"""`python -m nldsl.lm_eval ARGS`: the harness's command line (`lm_eval ARGS`, the same
arguments) with nldsl's model registered as `nldsl` (nldsl/harness.py), for harness
versions that know only the models imported before their command line runs. A harness
that reads the `lm_eval.models` entry points finds `nldsl` without it (pyproject.toml).
The user's mistakes (a run folder that is not one, a bad model arg) are one `error:`
line, as in `nldsl eval`."""
from __future__ import annotations

import sys


def main() -> int:
    from .cli import _fail, _report_errors
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        return _fail("the lm-evaluation-harness is not installed: it is nldsl's `eval` extra, "
                     "pip install 'nldsl[eval]'")

    from . import harness  # noqa: F401  (registers the model `nldsl`)
    from .api import flush_subnormals
    from .compiler.diagnostics import NLError
    from .train import user_errors
    flush_subnormals()  # as every nldsl command that runs a model (docs/performance.md)
    try:
        cli_evaluate()
    except NLError as e:  # the spec stored in the run (or given as spec=FILE) has errors
        return _report_errors(e, "text")
    except user_errors() as e:
        return _fail(str(e))
    finally:
        flush_subnormals(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
