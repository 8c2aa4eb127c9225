"""Shared test setup."""
import os
from pathlib import Path

import pytest

# Kernel tests run Triton kernels on the CPU; the switch must be set before triton is imported.
# NLDSL_TEST_DEVICE=cuda (make gpu-check) runs the kernel tests on the GPU instead, compiled.
DEVICE = os.environ.get("NLDSL_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# `make test` runs a pytest worker per core (pytest-xdist): each worker's torch, and the
# processes its tests start, take one thread, so that the workers do not fight for cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding `examples/` and `tests/`)."""
    return ROOT


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only add overhead (and the machine is shared)."""
    import torch  # here, not above: the Triton switch is set before anything imports torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
