"""benchmarks/compiled.py, the script behind docs/benchmarks.md's torch.compile rows and
`make gpu-check`'s CUDA-graphs step, runs end to end on a small titans.nl: it compiles,
holds the compiled step's gradients to eager's, sets every path against the matmul
peak measured in the same run, and parts a profiled step of each path by kind."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 40 s of compiling: `make test-slow`
def test_compiled_benchmark_checks_gradients_and_reports_the_peak(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compiled.py"), "titans", "--repeats", "1", "--batch", "1",
         "--set", "context=32", "--set", "dim=32", "--mode", "reduce-overhead", "--profile"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    error = float(re.search(r"gradient within (\S+) of its largest entry", out).group(1))
    assert error < 1e-4
    peaks = [float(p) for p in re.search(r"peak measured in this run (\S+) GFLOP/s before the timed steps, (\S+) after",
                                         out).groups()]
    assert min(peaks) > 0
    paths = re.findall(r"^  (.+?)\s+[\d,]+ tok/s .* (\S+)% of the peak$", out, re.M)
    assert [p for p, _ in paths] == ["eager", "torch.compile (reduce-overhead)", "eager, reference path"]
    assert all(0 < float(share) < 100 for _, share in paths)
    # the profile: a line for each path; the compiled step spends time in inductor's kernels, the eager paths none
    profiled = dict(re.findall(r"^  (.+?)\s+[\d.]+ ms: (.*)$", out, re.M))
    assert list(profiled) == [p for p, _ in paths]

    def ms(path, kind):
        return float(re.search(rf"{kind} ([\d.]+) \(", profiled[path]).group(1))
    assert ms("torch.compile (reduce-overhead)", "generated kernels") > 0
    assert ms("eager", "generated kernels") == ms("eager, reference path", "generated kernels") == 0
    assert ms("eager", "matmul") > 0 and ms("eager", "other aten ops") > 0
