"""HOPE with the alike memories of its self-modifying Titans level stacked into one
batched call per read and learn (`schedule { titans.group = on }`) against one call per
memory (the default), both on the fused path, at `nldsl bench`'s defaults (batch 4,
hope.nl's context): tokens/s alternated A B A B in one process, medians, and peak
memory of a call in a fresh process (nldsl.bench.peak_memory).

    .venv/bin/python benchmarks/grouping.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from nldsl.bench import MODES, alternate, examples_dir, fmt_mb, peak_memory, spec_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    text = (examples_dir() / "hope.nl").read_text()
    hinted = text.replace("titans.tile = 16", "titans.tile = 16\n    titans.group = on")
    assert hinted != text, "hope.nl's schedule block changed: update this script"
    with tempfile.TemporaryDirectory() as tmp:
        specs = {"one call per memory": str(examples_dir() / "hope.nl"), "grouped": str(Path(tmp) / "hope.nl")}
        Path(specs["grouped"]).write_text(hinted)
        workloads = {label: spec_workload(spec) for label, spec in specs.items()}
        times = alternate(workloads, MODES, args.repeats, 1)
        memory = {label: peak_memory("nldsl.bench:spec_workload", {"spec": spec}) for label, spec in specs.items()}
    base = {m: statistics.median(times["one call per memory", m]) for m in MODES}
    tokens = next(iter(workloads.values())).tokens
    print(f"{'hope.nl, fused path':24s} {'fwd tok/s':>10s} {'train tok/s':>12s} {'fwd ×':>6s} {'train ×':>8s}"
          f" {'fwd MB':>7s} {'train MB':>9s}")
    for label in specs:
        med = {m: statistics.median(times[label, m]) for m in MODES}
        print(f"{label:24s} {tokens / med['forward']:10,.0f} {tokens / med['train']:12,.0f}"
              f" {base['forward'] / med['forward']:5.2f}x {base['train'] / med['train']:7.2f}x"
              f" {fmt_mb(memory[label]['forward']):>7s} {fmt_mb(memory[label]['train']):>9s}")


if __name__ == "__main__":
    main()
