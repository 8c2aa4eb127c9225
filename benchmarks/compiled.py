"""A compiled model's training step under `torch.compile` (inductor) against eager, both
on the fused path, and against the eager reference path (`fused=False`, the same
weights), alternated A B C A B C in one process after compiling (medians), at
`nldsl bench`'s defaults (batch 4, the spec's context); the compile time is the first
compiled step's. Each path's FLOP rate (the eager step's matmul FLOPs) is set against
the fp32 matmul peak measured in the same run, before and after the timed steps. The
whole model by default: dynamo unrolls the loop over periods, so compile time grows
with the periods a call spans. With `--regional`, the period steps
alone (nldsl.runtime.regions, what `nldsl train --compile` does): compiled once for
every length. `--contexts` measures each length in a fresh process with an empty
inductor cache (a new `TORCHINDUCTOR_CACHE_DIR`), so each compile time is a cold one
(docs/performance.md). Regions compile with `regions.INDUCTOR_OPTIONS` (scalar C++
loops); `--vectorize` with inductor's defaults, to compare. `--profile` then runs one
more step of each path under torch.profiler and says where its time went: matmul
kernels, inductor's generated kernels, other aten ops, the Python inductor writes to
call its kernels, the autograd engine and dynamo's guards, and what no event covers
(the model's own Python, on the eager paths).

    .venv/bin/python benchmarks/compiled.py [SPEC] [--repeats 5] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/compiled.py hope --regional --contexts 256,1024,4096 --threads 1 [--vectorize]
    .venv/bin/python benchmarks/compiled.py hope --regional --level titans --threads 1  # one level alone
    .venv/bin/python benchmarks/compiled.py titans --device cuda --mode reduce-overhead  # with CUDA graphs
    .venv/bin/python benchmarks/compiled.py hope --repeats 3 --profile  # where each path's step goes
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import nldsl
from nldsl.bench import alternate, count_flops, level_workload, matmul_peak
from nldsl.run import device as run_device, parse_overrides, resolve_spec
from nldsl.runtime import regions
from nldsl.runtime.regions import regional


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="titans", help="an example's name or a .nl file (default titans)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE")
    ap.add_argument("--regional", action="store_true", help="compile the period steps, not the whole model")
    ap.add_argument("--contexts", help="lengths, comma-separated, each in a fresh process with a cold cache")
    ap.add_argument("--threads", type=int, help="torch's threads (default: its own)")
    ap.add_argument("--level", help="regional: time this level alone as a layer (nldsl.bench.level_workload)")
    ap.add_argument("--vectorize", action="store_true",
                    help="regional: inductor's vectorized C++ (its default), not regions.INDUCTOR_OPTIONS")
    ap.add_argument("--device", default="cpu", help="cpu (the default), cuda or cuda:N")
    ap.add_argument("--mode", help="torch.compile's mode for the whole model: reduce-overhead records CUDA graphs")
    ap.add_argument("--profile", action="store_true", help="then one more step of each path under torch.profiler")
    args, argv = ap.parse_args(), sys.argv[1:]
    if args.contexts:
        at = argv.index("--contexts")
        rest = argv[:at] + argv[at + 2:]
        for context in args.contexts.split(","):
            with tempfile.TemporaryDirectory() as cache:
                subprocess.run([sys.executable, __file__, *rest, "--set", f"context={context}"], check=True,
                               env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vectorize:
        regions.INDUCTOR_OPTIONS = {}
    if args.profile:  # inductor's kernels then show as profiler events of their own (on the CPU)
        torch._inductor.config.cpp.enable_kernel_profile = True
    nldsl.flush_subnormals()  # as `nldsl bench` does
    path, name = resolve_spec(args.spec)
    torch.manual_seed(0)
    overrides = parse_overrides(args.set) or {}
    if args.level:
        return level(path, args, overrides)
    device = run_device(args.device)
    model = nldsl.compile(path, name=name, **overrides).to(device)
    reference = nldsl.compile(path, name=name, fused=False, **overrides).to(device)
    reference.load_state_dict(model.state_dict())
    context = int(model.settings["context"])
    tokens = torch.randint(0, int(model.settings["vocab"]), (args.batch, context + 1), device=device)
    if args.regional:  # a second model with the same weights, its period steps compiled
        compiled = regional(nldsl.compile(path, name=name, **overrides).to(device))
        compiled.load_state_dict(model.state_dict())
        owner, label = compiled, "regional compile" + (" (vectorized)" if args.vectorize else "")
    else:
        if args.mode:  # say why a graph is not recorded, if one is not
            torch._logging.set_logs(cudagraphs=True)
        compiled, owner = torch.compile(model, mode=args.mode), model
        label = "torch.compile" + (f" ({args.mode})" if args.mode else "")

    def step(run, owner=model):
        owner.zero_grad(set_to_none=True)
        logits, _ = run(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in owner.parameters() if p.grad is not None]

    want = step(model)  # first: the memory a step of this length touches is then the process's
    start = time.perf_counter()
    got = step(compiled, owner)
    compile_s = time.perf_counter() - start
    # the compiled step computes what eager computes: the loss, and every gradient relative to its size
    grad_err = max((g - w).abs().max().item() / max(w.abs().max().item(), 1e-12) for g, w in zip(got[1], want[1]))
    step(reference, reference)
    flops = count_flops(lambda: step(model))  # the eager step's matmul FLOPs: the work, whichever path runs it
    runs = {"eager": (model, model), label: (compiled, owner), "eager, reference path": (reference, reference)}
    times = {label: [] for label in runs}
    peaks = [matmul_peak(device.type)]  # the peak in this run, before and after the timed steps: the higher one
    for _ in range(args.repeats):
        for what, (run, by) in runs.items():
            start = time.perf_counter()
            step(run, by)
            times[what].append(time.perf_counter() - start)
    peaks.append(matmul_peak(device.type))
    peak = max(peaks)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.batch * context
    where = f"{torch.get_num_threads()} thread(s)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{model.name}, batch {args.batch} × {context} tokens, training step (forward and backward), "
          f"fused path, {where}; {label}: the first step (compiling) took {compile_s:.1f} s", flush=True)
    print(f"  compiling alone: about {compile_s - med[label]:.1f} s (the first step less a compiled one's median); "
          f"{counters['stats']['unique_graphs']} graph(s) compiled")
    if args.mode == "reduce-overhead" and device.type == "cuda":
        skips = counters["inductor"]["cudagraph_skips"]
        print(f"  CUDA graphs: {'recorded' if not skips else f'{skips} graph(s) not recorded (the reason above)'}")
    print(f"  compiled against eager: loss {got[0]:.6f} against {want[0]:.6f}, every parameter's gradient "
          f"within {grad_err:.1e} of its largest entry")
    print(f"  {flops / 1e9:.1f} GFLOP a step (matmul-level ops, as `nldsl bench` counts them); fp32 matmul peak "
          f"measured in this run {peaks[0]:.0f} GFLOP/s before the timed steps, {peaks[1]:.0f} after")
    width = max(map(len, med))
    for what, s in med.items():
        print(f"  {what:{width}s} {n / s:10,.0f} tok/s  {med['eager'] / s:5.2f}x eager  "
              f"{med['eager, reference path'] / s:5.2f}x the reference  "
              f"{flops / s / 1e9:6.1f} GFLOP/s  {100 * flops / s / 1e9 / peak:4.1f}% of the peak")
    if args.profile:
        print("  under torch.profiler, one step each (the profiler's own cost per op inflates the paths of many "
              "small ops): ms, and share of the profiled step")
        for what, (run, by) in runs.items():
            print(f"  {what:{width}s} " + profile(lambda: step(run, by), device))


MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::_scaled_mm"}


def profile(fn, device) -> str:
    """One call of `fn` under torch.profiler, its time parted by the kind of event that
    spent it (each event's self time, so nothing counts twice). On a GPU these are the
    host's times: what launching costs, not what the kernels take on the device."""
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    kinds = ("matmul", "generated kernels", "other aten ops", "generated wrappers", "engine")
    parts, calls = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0)
    for e in prof.key_averages():
        if e.key in MATMULS:
            kind = "matmul"
        elif "cpp_fused" in e.key or e.key.startswith(("triton_", "cpp_")):
            kind = "generated kernels"
        elif e.key.startswith("aten::"):
            kind = "other aten ops"
        elif e.key.startswith("## Call CompiledFxGraph"):  # the Python inductor writes to call its kernels
            kind = "generated wrappers"
        else:  # the autograd engine, dynamo's guards, the compiled functions' own runtime
            kind = "engine"
        parts[kind] += e.self_cpu_time_total / 1e6
        calls[kind] += e.count
    parts["Python, untracked"] = max(wall - sum(parts.values()), 0.0)
    return f"{wall * 1e3:7.1f} ms: " + ", ".join(
        f"{k} {v * 1e3:.1f} ({100 * v / wall:.0f}%" + (f", {calls[k]:,} calls)" if calls.get(k) else ")")
        for k, v in parts.items())


def level(path, args, overrides: dict) -> None:
    """One level alone, eager against its period steps compiled (the same weights and
    input: each workload is built from the same seed), after a first compiled step."""
    context = int(overrides.get("context", nldsl.compile(path).settings["context"]))
    runs = {what: level_workload(str(path), args.level, batch=args.batch, tokens=context, settings=overrides,
                                 regional=regional)
            for what, regional in (("eager", False), ("regional compile", True))}
    runs["eager"].train()
    start = time.perf_counter()
    runs["regional compile"].train()
    compile_s = time.perf_counter() - start
    times = alternate(runs, modes=("train",), repeats=args.repeats, warmup=0)
    med = {what: statistics.median(times[what, "train"]) for what in runs}
    print(f"level `{args.level}` of {path.name} alone, batch {args.batch} × {context} tokens, training "
          f"(forward and backward), {torch.get_num_threads()} thread(s); the first compiled step took "
          f"{compile_s:.1f} s")
    for what, s in med.items():
        print(f"  {what:22s} {s * 1e3:8.1f} ms a step  {med['eager'] / s:5.2f}x eager")


if __name__ == "__main__":
    main()
