"""Shared test setup."""
import os
from pathlib import Path

import pytest

# Kernel tests run Triton kernels on the CPU; the switch must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding `examples/` and `tests/`)."""
    return ROOT
