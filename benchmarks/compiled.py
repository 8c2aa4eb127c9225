"""A compiled model's training step under `torch.compile` (inductor) against eager, both
on the fused path, alternated A B A B in one process after compiling (medians), at
`nldsl bench`'s defaults (batch 4, the spec's context); the compile time is the first
compiled step's. Sizes matter: dynamo unrolls the loop over periods, so compile time
grows with the periods a call spans (docs/performance.md).

    .venv/bin/python benchmarks/compiled.py [SPEC] [--repeats 5] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import nldsl
from nldsl.bench import resolve_spec
from nldsl.train import parse_overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="titans", help="an example's name or a .nl file (default titans)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = ap.parse_args()
    nldsl.flush_subnormals()  # as `nldsl bench` does
    path, name = resolve_spec(args.spec)
    torch.manual_seed(0)
    model = nldsl.compile(path, name=name, **(parse_overrides(args.set) or {}))
    context = int(model.settings["context"])
    tokens = torch.randint(0, int(model.settings["vocab"]), (args.batch, context + 1))
    compiled = torch.compile(model)

    def step(run):
        model.zero_grad(set_to_none=True)
        logits, _ = run(tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).backward()

    start = time.perf_counter()
    step(compiled)
    compile_s = time.perf_counter() - start
    step(model)
    times = {"eager": [], "torch.compile": []}
    for _ in range(args.repeats):
        for label, run in (("eager", model), ("torch.compile", compiled)):
            start = time.perf_counter()
            step(run)
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.batch * context
    print(f"{model.name}, batch {args.batch} × {context} tokens, training step (forward and backward), "
          f"fused path; compiling took {compile_s:.0f} s")
    for label, s in med.items():
        print(f"  {label:14s} {n / s:10,.0f} tok/s  {med['eager'] / s:5.2f}x")


if __name__ == "__main__":
    main()
