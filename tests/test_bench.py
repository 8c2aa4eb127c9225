"""`nldsl bench` runs and prints its columns on a tiny configuration. Nothing here
times anything or asserts on speed: the numbers are the benchmark's business."""
import json

import torch

from nldsl.bench import Workload, peak_memory
from nldsl.cli import main

COLUMNS = ["spec", "path", "tokens", "fwd tok/s", "train tok/s", "fwd ×ref", "train ×ref", "fwd GFLOP/s",
           "fwd %peak", "train GFLOP/s", "train %peak", "fwd MB", "train MB"]


def test_bench_prints_its_columns(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(["bench", "linear_attention", "--batch", "1", "--context", "8", "--set", "dim=16",
                   "--repeats", "1", "--warmup", "0", "--no-memory", "--scaling-tokens", "", "--matmul-size", "64",
                   "--json", str(out)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "fp32 matmul peak, measured now:" in printed.out
    for col in COLUMNS:
        assert col in printed.out, col
    lines = [line for line in printed.out.splitlines() if "linear_attention" in line]
    assert len(lines) == 2 and "fused" in lines[0] and "reference" in lines[1]
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["fused", "reference"] and all(r["flops"]["train"] > 0 for r in rows)


def test_bench_unknown_spec_is_one_error_line(capsys):
    assert main(["bench", "no_such_spec", "--no-memory"]) == 1
    assert capsys.readouterr().err.startswith("error: no spec `no_such_spec`")


def tiny(mb: int = 8, device: str = "cpu") -> Workload:
    """Two live tensors of `mb` MiB in a forward call."""
    n = mb * 2 ** 20 // 4

    def forward():
        x = torch.ones(n)
        return x + 1

    return Workload("tiny", 1, forward, forward)


def many(count: int = 2048, kib: int = 16, device: str = "cpu") -> Workload:
    """`count` live tensors of `kib` KiB each in a forward call."""

    def forward():
        return [torch.ones(kib * 256) for _ in range(count)]

    return Workload("many", 1, forward, forward)


def chain(mb: int = 8, device: str = "cpu") -> Workload:
    """Three tensors of `mb` MiB made one from another, each freed once the next is made,
    with a view and an in-place op on the way."""
    n = mb * 2 ** 20 // 4

    def forward():
        a = torch.ones(n)
        b = a.view(-1, 4) * 2
        del a
        b.add_(1)
        return b + 1

    return Workload("chain", 1, forward, forward)


def test_memory_probe_counts_only_what_is_alive():
    peak = peak_memory(f"{__file__}:chain", {}, modes=("forward",))["forward"]
    assert 16 * 2 ** 20 <= peak < 16 * 2 ** 20 + 4096  # never more than two of the three at once


def test_memory_probe_sees_many_small_tensors():
    """Small tensors count too: heap blocks freed by the warm-up call must not hide them
    (the resident set size, measured once, missed HOPE's 16-64 KiB per-head tensors)."""
    peak = peak_memory(f"{__file__}:many", {}, modes=("forward",))["forward"]
    assert 32 * 2 ** 20 <= peak < 32 * 2 ** 20 + 4096


def test_memory_probe_sees_live_tensors():
    """The probe runs in a fresh process and reports the call's extra resident memory."""
    peak = peak_memory(f"{__file__}:tiny", {"mb": 8}, modes=("forward",))["forward"]
    assert 16 * 2 ** 20 <= peak < 16 * 2 ** 20 + 4096  # two tensors of 8 MiB (and a scalar or two)
