"""Peers: nldsl's levels against other implementations of the same memories, on this machine.

Run from the benchmark environment, which has the peers installed (they are never
dependencies of nldsl itself):

    benchmarks/setup.sh                                   # once: builds .bench-venv
    .bench-venv/bin/python benchmarks/peers.py            # everything, progress on stderr
    .bench-venv/bin/python benchmarks/peers.py --only titans --repeats 3 --json out.json

Two comparisons, each alternated A B C ... in one process (nldsl.bench.alternate), medians
of the repeats, peak memory in a fresh process per configuration (nldsl.bench.peak_memory):

1. titans: the `titans` level of examples/titans.nl (dim 128, 4 heads of 32, a residual
   MLP memory 32 -> 64 -> 32 per head, momentum, per-token rate, momentum and decay), run
   alone as a layer, against titans-pytorch's `NeuralMemory` configured to match (4 heads
   of 32, MemoryMLP depth 2 with expansion 2, momentum, max learning rate 0.1), at batch
   4, 512 tokens, chunk (period) 64 and 16. titans-pytorch by default takes every chunk's
   gradient at the sequence's initial weights (`batch_size=None`); with `batch_size` equal
   to the chunk it takes them at the weights the previous chunk left, as titans.nl does.
   Both are measured.
2. the delta rule at 2,048 tokens: the `delta` level of examples/gated_deltanet.nl, fused
   (chunk-parallel) against the reference backend's per-token loop; and the recurrence
   alone, nldsl's chunk-parallel form (nldsl.runtime.memories.linear.chunk.delta_rule) against
   flash-linear-attention's plain-torch references (naive_chunk_gated_delta_rule,
   naive_recurrent_gated_delta_rule) and its Triton kernel chunk_gated_delta_rule where
   it runs.
3. `--only gpu`, for a machine with a GPU (never part of the default run): the recurrence
   at batch 4, 4,096 tokens, 8 heads of 128 in bfloat16, nldsl's Triton kernel
   (kernels.gated_delta_rule) and its PyTorch chunked form against fla's Triton
   chunk_gated_delta_rule, after checking the kernel against the chunked form and against
   fla's kernel (the same rule: nldsl's with `decay_first`). `--small` tries it on a CPU under
   TRITON_INTERPRET=1 at tiny shapes.

A peer that is not installed or does not run here is reported, with the reason, and
skipped; nldsl's own rows are measured all the same.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
from pathlib import Path

import torch

import nldsl

from nldsl.bench import (Workload, alternate, console, fmt_mb, fmt_rate, header, level_workload, machine,
                         matmul_peak, peak_memory, resolve_spec)

HERE = Path(__file__).resolve()
BUILDERS = f"{HERE}"  # the memory probe imports this file's builders by path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def missing(package: str, module: str) -> str | None:
    """Why `package` cannot be used here, or None if it imports."""
    try:
        __import__(module)
    except Exception as e:  # not installed, or broken on this platform
        return (f"{package} is not usable in this environment ({type(e).__name__}: {e}); "
                "install the peers with benchmarks/setup.sh and run this script with .bench-venv/bin/python")
    return None


# --------------------------------------------------------------------- titans
def titans_source(period: int) -> str:
    """examples/titans.nl with its titans level learning every `period` tokens."""
    text = Path(resolve_spec("titans")[0]).read_text()
    new, n = re.subn(r"level titans every \d+ tokens", f"level titans every {period} tokens", text)
    assert n == 1, "examples/titans.nl no longer declares `level titans every N tokens`"
    return new


def nldsl_titans(chunk: int = 16, fused: bool = True, batch: int = 4, tokens: int = 512, dim: int = 128,
                 heads: int = 4, device: str = "cpu") -> Workload:
    return level_workload(titans_source(chunk), "titans", fused=fused, batch=batch, tokens=tokens,
                          settings=dict(dim=dim, heads=heads, context=tokens), device=device)


def titans_pytorch(chunk: int = 16, per_chunk: bool = False, batch: int = 4, tokens: int = 512, dim: int = 128,
                   heads: int = 4, device: str = "cpu", seed: int = 0) -> Workload:
    """titans-pytorch's NeuralMemory at titans.nl's sizes (see the module's docstring).
    `per_chunk`: weights updated after every chunk (batch_size = chunk), as in titans.nl."""
    from titans_pytorch import NeuralMemory
    torch.manual_seed(seed)
    mem = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim // heads,
                       default_model_kwargs=dict(depth=2, expansion_factor=2.0),  # 32 -> 64 -> 32, as mlp(dim, hidden: 2 * dim)
                       default_step_transform_max_lr=0.01,  # titans.nl: lr = 0.01 * sigmoid(proj(x))
                       batch_size=chunk if per_chunk else None).to(device)
    x = torch.randn(batch, tokens, dim, device=device).requires_grad_()
    upstream = torch.randn(batch, tokens, dim, device=device)

    def forward():
        with torch.no_grad():
            mem(x)

    def train():
        (mem(x)[0] * upstream).sum().backward()

    return Workload("titans-pytorch", batch * tokens, forward, train, [x, *mem.parameters()])


def titans_cases(chunk: int, args) -> dict[str, tuple[str, dict]]:
    """label -> (builder, kwargs) for one chunk size."""
    size = dict(chunk=chunk, batch=args.batch, tokens=512, dim=128, heads=4, device=args.device)
    cases = {"nldsl titans.nl level, fused": (f"{BUILDERS}:nldsl_titans", dict(size, fused=True)),
             "nldsl titans.nl level, reference": (f"{BUILDERS}:nldsl_titans", dict(size, fused=False))}
    why = missing("titans-pytorch", "titans_pytorch")
    if why:
        log(f"peers: {why}")
    else:
        cases["titans-pytorch NeuralMemory (default: grads at W0)"] = (f"{BUILDERS}:titans_pytorch", dict(size, per_chunk=False))
        cases["titans-pytorch NeuralMemory (batch_size=chunk)"] = (f"{BUILDERS}:titans_pytorch", dict(size, per_chunk=True))
    return cases


# --------------------------------------------------------------------- the delta rule
def nldsl_delta_level(fused: bool = True, batch: int = 4, tokens: int = 2048, dim: int = 128, heads: int = 2,
                      device: str = "cpu") -> Workload:
    return level_workload("gated_deltanet", "delta", fused=fused, batch=batch, tokens=tokens,
                          settings=dict(dim=dim, heads=heads, context=tokens), device=device)


def delta_inputs(batch: int, tokens: int, heads: int, head_dim: int, device: str, seed: int = 0, decay: bool = True,
                 dtype: str = "float32"):
    """q, k (unit per head), v, β = sigmoid, log α = logsigmoid, [B, T, H, ...], and an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.nn.functional.normalize(torch.randn(2, batch, tokens, heads, head_dim, generator=g), dim=-1)
    v = torch.randn(batch, tokens, heads, head_dim, generator=g)
    beta = torch.randn(batch, tokens, heads, generator=g).sigmoid()
    log_alpha = torch.nn.functional.logsigmoid(torch.randn(batch, tokens, heads, generator=g) + 4)  # α near 0.98
    if not decay:
        log_alpha = torch.zeros_like(log_alpha)
    upstream = torch.randn(batch, tokens, heads, head_dim, generator=g)
    dtype = getattr(torch, dtype)
    leaves = [t.to(device, dtype).requires_grad_() for t in (q, k, v, beta, log_alpha)]
    return leaves, upstream.to(device, dtype)


def delta_core(impl: str = "nldsl", batch: int = 4, tokens: int = 2048, heads: int = 2, head_dim: int = 64,
               device: str = "cpu", dtype: str = "float32") -> Workload:
    """The gated delta recurrence alone on the same inputs, S_t = α_t S_{t-1}(I − β_t k_t k_tᵀ)
    + β_t v_t k_tᵀ in every implementation (nldsl's with `decay_first`, as gated_deltanet.nl;
    checked by `check_delta_match`)."""
    (q, k, v, beta, log_alpha), upstream = delta_inputs(batch, tokens, heads, head_dim, device, dtype=dtype)
    fn = delta_fn(impl)

    def forward():
        with torch.no_grad():
            fn(q, k, v, beta, log_alpha)

    def train():
        (fn(q, k, v, beta, log_alpha) * upstream).sum().backward()

    return Workload(impl, batch * tokens, forward, train, [q, k, v, beta, log_alpha])


def delta_fn(impl: str):
    """(q, k, v, β, log α) [B, T, H, .] -> o [B, T, H, V] for each implementation, q unscaled."""
    if impl == "nldsl":
        from nldsl.runtime.memories.linear.chunk import delta_rule

        def run(q, k, v, beta, log_alpha):
            B, _, H, K = k.shape
            S0 = q.new_zeros(B, H, v.shape[-1], K)
            return delta_rule(S0, q, k, v, beta, log_alpha, period=1, tile=64, within=True, l2=True,
                              decay_first=True)[0]
        return run
    if impl == "nldsl triton":
        from nldsl.runtime.kernels import gated_delta_rule

        def run(q, k, v, beta, log_alpha):  # the kernel computes in float32 whatever it is given
            B, _, H, K = k.shape
            S0 = q.new_zeros(B, H, v.shape[-1], K, dtype=torch.float32)
            return gated_delta_rule(S0, q, k, v, beta, log_alpha, within=True, tile=64, decay_first=True)[0]
        return run
    from fla.ops.gated_delta_rule import (chunk_gated_delta_rule, naive_chunk_gated_delta_rule,
                                          naive_recurrent_gated_delta_rule)
    if impl == "fla naive_chunk":
        return lambda q, k, v, beta, g: naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, scale=1.0)[0]
    if impl == "fla naive_recurrent":
        return lambda q, k, v, beta, g: naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=1.0)[0]
    if impl == "fla chunk (Triton)":
        return lambda q, k, v, beta, g: chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0)[0]
    raise ValueError(impl)


def check_delta_match(device: str, ours: str = "nldsl", theirs: str = "fla naive_recurrent",
                      dtype: str = "float32", heads: int = 2, head_dim: int = 32) -> str:
    """One of nldsl's gated delta rules against one of fla's, on the same inputs."""
    (q, k, v, beta, log_alpha), _ = delta_inputs(1, 256, heads, head_dim, device, dtype=dtype)
    with torch.no_grad():
        a = delta_fn(ours)(q, k, v, beta, log_alpha).float()
        b = delta_fn(theirs)(q, k, v, beta, log_alpha).float()
    return f"max |o {ours} - o {theirs}|, 256 tokens, {dtype}: {(a - b).abs().max().item():.2e}"


def triton_runs(device: str) -> str | None:
    """Why fla's Triton kernel cannot run here, or None if a tiny call works."""
    try:
        (q, k, v, beta, g), _ = delta_inputs(1, 64, 1, 16, device)
        with torch.no_grad():
            delta_fn("fla chunk (Triton)")(q, k, v, beta, g)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {msg[:200]}"
    return None


def delta_cases(args) -> tuple[dict, dict]:
    level = dict(batch=args.batch, tokens=2048, dim=128, heads=2, device=args.device)
    levels = {"nldsl gated_deltanet.nl delta level, fused": (f"{BUILDERS}:nldsl_delta_level", dict(level, fused=True)),
              "nldsl gated_deltanet.nl delta level, reference": (f"{BUILDERS}:nldsl_delta_level", dict(level, fused=False))}
    core = dict(batch=args.batch, tokens=2048, heads=2, head_dim=64, device=args.device)
    cores = {"nldsl chunked.delta_rule": (f"{BUILDERS}:delta_core", dict(core, impl="nldsl"))}
    why = missing("flash-linear-attention", "fla.ops.gated_delta_rule")
    if why:
        log(f"peers: {why}")
    else:
        log(f"peers: delta rule check, {check_delta_match(args.device)}")
        cores["fla naive_chunk_gated_delta_rule"] = (f"{BUILDERS}:delta_core", dict(core, impl="fla naive_chunk"))
        cores["fla naive_recurrent_gated_delta_rule"] = (f"{BUILDERS}:delta_core", dict(core, impl="fla naive_recurrent"))
        why = triton_runs(args.device)
        if why:
            log(f"peers: fla chunk_gated_delta_rule (Triton) does not run on {args.device} here: {why}")
        else:
            cores["fla chunk_gated_delta_rule (Triton)"] = (f"{BUILDERS}:delta_core", dict(core, impl="fla chunk (Triton)"))
    return levels, cores


def gpu_cases(args) -> tuple[dict, str]:
    """The GPU comparison: the recurrence at batch 4, 4,096 tokens, 8 heads of 128 in bfloat16
    (`--small`: 1 × 64 tokens, 2 heads of 16, to try this script on a CPU under
    TRITON_INTERPRET=1): nldsl's Triton kernel and its PyTorch chunked form against fla's
    Triton chunk_gated_delta_rule."""
    shape = dict(batch=1, tokens=64, heads=2, head_dim=16) if args.small else \
        dict(batch=args.batch, tokens=4096, heads=8, head_dim=128)
    core = dict(shape, device=args.device, dtype="bfloat16")
    # the PyTorch form solves triangular systems, which torch has in float32 and float64 only
    base = "nldsl chunked.delta_rule (PyTorch, float32 inputs)"
    cases = {"nldsl kernels.gated_delta_rule (Triton)": (f"{BUILDERS}:delta_core", dict(core, impl="nldsl triton")),
             base: (f"{BUILDERS}:delta_core", dict(core, impl="nldsl", dtype="float32"))}
    check = dict(heads=shape["heads"], head_dim=shape["head_dim"])
    log(f"peers: {check_delta_match(args.device, 'nldsl triton', 'nldsl', **check)}")
    why = missing("flash-linear-attention", "fla.ops.gated_delta_rule") or triton_runs(args.device)
    if why:
        log(f"peers: fla chunk_gated_delta_rule (Triton) does not run on {args.device} here: {why}")
    else:
        log(f"peers: {check_delta_match(args.device, 'nldsl triton', 'fla chunk (Triton)', dtype='bfloat16', **check)}")
        base = "fla chunk_gated_delta_rule (Triton)"
        cases[base] = (f"{BUILDERS}:delta_core", dict(core, impl="fla chunk (Triton)"))
    return cases, base


# --------------------------------------------------------------------- measuring and printing
def measure(title: str, cases: dict[str, tuple[str, dict]], baseline: str, args) -> dict:
    """Alternate the cases, then probe each one's memory; print and return the table."""
    from nldsl.bench import load_builder
    log(f"peers: {title}")
    workloads = {label: load_builder(b)(**kw) for label, (b, kw) in cases.items()}
    times = alternate(workloads, repeats=args.repeats, warmup=args.warmup, device=args.device,
                      progress=lambda s: log(f"  {title}: {s}"))
    tokens = {label: w.tokens for label, w in workloads.items()}
    del workloads
    gc.collect()
    memory = {}
    for label, (b, kw) in cases.items():
        log(f"  {title}: peak memory of {label} (fresh process)")
        memory[label] = peak_memory(b, kw, threads=args.threads) if not args.no_memory else {}
    rows = []
    for label in cases:
        med = {m: statistics.median(times[label, m]) for m in ("forward", "train")}
        rows.append(dict(label=label, tokens=tokens[label], seconds={m: times[label, m] for m in med},
                         tokens_per_s={m: tokens[label] / med[m] for m in med}, memory=memory[label]))
    show(title, rows, baseline)
    return dict(title=title, baseline=baseline, rows=rows)


def show(title: str, rows: list[dict], baseline: str) -> None:
    from rich.table import Table
    base = next((r for r in rows if r["label"] == baseline), None)
    t = Table(title=title, title_justify="left")
    for col in ("implementation", "tokens", "fwd tok/s", "train tok/s", "fwd ×base", "train ×base", "fwd MB", "train MB"):
        t.add_column(col, justify="left" if col == "implementation" else "right")
    for r in rows:
        ratio = {m: r["tokens_per_s"][m] / base["tokens_per_s"][m] if base else None for m in ("forward", "train")}
        t.add_row(r["label"] + (" (base)" if r is base else ""), f"{r['tokens']:,}",
                  fmt_rate(r["tokens_per_s"]["forward"]), fmt_rate(r["tokens_per_s"]["train"]),
                  *(f"{ratio[m]:.2f}x" if ratio[m] else "" for m in ("forward", "train")),
                  fmt_mb(r["memory"].get("forward")), fmt_mb(r["memory"].get("train")))
    console().print(t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nldsl's levels against titans-pytorch and flash-linear-attention")
    p.add_argument("--only", choices=("titans", "delta", "gpu"),
                   help="one comparison only; `gpu` (never part of the default run) is the bfloat16 "
                        "delta rule at 4,096 tokens against fla's Triton kernel")
    p.add_argument("--small", action="store_true", help="with --only gpu: tiny shapes, to try it on a CPU")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    nldsl.flush_subnormals()  # as `nldsl bench` does: for every implementation alike
    peak = matmul_peak(args.device)
    console().print(header(machine(args.device), peak, 2048), highlight=False)
    results = {"machine": machine(args.device), "matmul_peak_gflops": peak, "tables": []}
    if args.only in (None, "titans"):
        for chunk in (64, 16):
            results["tables"].append(measure(f"titans layer, batch {args.batch} × 512 tokens, dim 128, chunk {chunk}",
                                             titans_cases(chunk, args),
                                             "titans-pytorch NeuralMemory (default: grads at W0)", args))
    if args.only in (None, "delta"):
        levels, cores = delta_cases(args)
        results["tables"].append(measure(f"gated delta rule level, batch {args.batch} × 2,048 tokens, dim 128, 2 heads",
                                         levels, "nldsl gated_deltanet.nl delta level, reference", args))
        results["tables"].append(measure(f"gated delta recurrence alone, batch {args.batch} × 2,048 tokens, 2 heads of 64",
                                         cores, "fla naive_recurrent_gated_delta_rule", args))
    if args.only == "gpu":
        cases, base = gpu_cases(args)
        title = "gated delta recurrence, bfloat16, " + ("small shapes" if args.small else
                                                         f"batch {args.batch} × 4,096 tokens, 8 heads of 128")
        results["tables"].append(measure(title, cases, base, args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        log(f"peers: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
