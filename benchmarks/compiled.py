"""A compiled model's training step under `torch.compile` (inductor) against eager, both
on the fused path, and against the eager reference path (`fused=False`, the same
weights), alternated A B C A B C in one process after compiling (medians), at
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
from nldsl.run import parse_overrides, resolve_spec


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
    overrides = parse_overrides(args.set) or {}
    model = nldsl.compile(path, name=name, **overrides)
    reference = nldsl.compile(path, name=name, fused=False, **overrides)
    reference.load_state_dict(model.state_dict())
    context = int(model.settings["context"])
    tokens = torch.randint(0, int(model.settings["vocab"]), (args.batch, context + 1))
    compiled = torch.compile(model)

    def step(run, owner=model):
        owner.zero_grad(set_to_none=True)
        logits, _ = run(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in owner.parameters() if p.grad is not None]

    start = time.perf_counter()
    got = step(compiled)
    compile_s = time.perf_counter() - start
    want = step(model)
    # the compiled step computes what eager computes: the loss, and every gradient relative to its size
    grad_err = max((g - w).abs().max().item() / max(w.abs().max().item(), 1e-12) for g, w in zip(got[1], want[1]))
    step(reference, reference)
    runs = {"eager": (model, model), "torch.compile": (compiled, model), "eager, reference path": (reference, reference)}
    times = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, (run, owner) in runs.items():
            start = time.perf_counter()
            step(run, owner)
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.batch * context
    print(f"{model.name}, batch {args.batch} × {context} tokens, training step (forward and backward), "
          f"fused path; compiling took {compile_s:.0f} s")
    print(f"  compiled against eager: loss {got[0]:.6f} against {want[0]:.6f}, every parameter's gradient "
          f"within {grad_err:.1e} of its largest entry")
    for label, s in med.items():
        print(f"  {label:22s} {n / s:10,.0f} tok/s  {med['eager'] / s:5.2f}x eager  "
              f"{med['eager, reference path'] / s:5.2f}x the reference")


if __name__ == "__main__":
    main()
