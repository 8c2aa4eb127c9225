"""HOPE's training step against variants of examples/hope.nl, each changing one thing,
all on the fused path at `nldsl bench`'s defaults (batch 4, hope.nl's context):
tokens/s alternated A B A B in one process (medians), and peak memory of a call in a
fresh process (nldsl.bench.peak_memory). What each variant removes shows what that
part of the model costs; `group` is the schedule hint of docs/performance.md.

    .venv/bin/python benchmarks/hope_variants.py [--repeats 5] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from nldsl import flush_subnormals
from nldsl.bench import MODES, alternate, fmt_mb, peak_memory, spec_workload
from nldsl.compiler.load import library_root

CMS1 = """level cms1 every 64 tokens {
    memory ffn : mlp(dim, hidden: 4 * dim)
    learn ffn : task by gd(lr: 1e-2)
  }"""
CMS1_OUTER = "level cms1 outer { memory ffn : mlp(dim, hidden: 4 * dim) }"

# name -> [(text in hope.nl, its replacement)]; applied in order
VARIANTS = {
    "hope.nl": [],
    "titans.group = off": [("titans.tile = 16", "titans.tile = 16\n    titans.group = off")],
    "cms1 first order (`detach`)": [(CMS1, CMS1.replace("4 * dim)", "4 * dim, detach)"))],
    "cms1 outer (no task level)": [(CMS1, CMS1_OUTER)],
    "cms1 outer, titans every 64": [(CMS1, CMS1_OUTER), ("titans every 16 tokens", "titans every 64 tokens"),
                                    ("titans.tile = 16", "titans.tile = 64")],
}


def variant(text: str, edits) -> str:
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"hope.nl no longer contains {old!r}: update benchmarks/hope_variants.py")
        text = text.replace(old, new)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default all)")
    args = ap.parse_args()
    flush_subnormals()  # as `nldsl bench` does
    text = (library_root() / "hope.nl").read_text()
    names = args.only or list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        specs = {}
        for i, name in enumerate(names):
            specs[name] = Path(tmp) / f"hope{i}.nl"
            specs[name].write_text(variant(text, VARIANTS[name]))
        workloads = {name: spec_workload(str(path)) for name, path in specs.items()}
        times = alternate(workloads, MODES, args.repeats, 1)
        memory = {name: peak_memory("nldsl.bench:spec_workload", {"spec": str(path)}) for name, path in specs.items()}
    tokens = next(iter(workloads.values())).tokens
    base = {m: statistics.median(times[names[0], m]) for m in MODES}
    print(f"{'variant (fused path)':30s} {'fwd tok/s':>10s} {'train tok/s':>12s} {'train s':>8s} {'train ×':>8s}"
          f" {'fwd MB':>7s} {'train MB':>9s}")
    for name in names:
        med = {m: statistics.median(times[name, m]) for m in MODES}
        print(f"{name:30s} {tokens / med['forward']:10,.0f} {tokens / med['train']:12,.0f} {med['train']:8.3f}"
              f" {base['train'] / med['train']:7.2f}x {fmt_mb(memory[name]['forward']):>7s}"
              f" {fmt_mb(memory[name]['train']):>9s}")


if __name__ == "__main__":
    main()
