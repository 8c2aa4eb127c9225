"""`nldsl bench`: tokens per second, peak memory and achieved FLOP rate of compiled specs,
the fused path against the reference path (docs/benchmarks.md).

How it measures, and why:

- Every comparison is alternated A B A B in one process (fused, reference, fused, ...),
  after warm-up calls, so that drift of a shared machine hits both sides alike; medians
  of the repeats are reported, and every ratio is taken between medians of one run.
- The FLOP rate is set against this machine's fp32 matmul peak, measured in the same run
  with torch's threads as configured (the best of a few large square matmuls).
- FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one call: matmul-level
  ops only (mm, addmm, bmm, baddbmm and the einsums that lower to them, convolutions,
  scaled-dot-product attention); elementwise ops, reductions, triangular solves and
  everything else count zero.
- Peak memory is measured in a fresh process per configuration (`python -m nldsl.bench
  --probe ...`): the most bytes of tensor storage a call made and held at once. On CPU
  a dispatch mode counts every op's new storages until their last tensor dies (the
  resident set size, tried first, hid small tensors in heap blocks the warm-up call
  had freed); on CUDA `torch.cuda.max_memory_allocated` over the allocation before.
  The model, its inputs and one warm-up call are in the baseline; the call's activations,
  saved tensors, gradients and temporaries are in the peak.

Only torch and this package are used, so peers' benchmarks (benchmarks/peers.py) can
build on it from another environment.
"""
from __future__ import annotations

import datetime
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .run import resolve_spec

EXAMPLES = ["hope", "titans", "gated_deltanet", "linear_attention", "transformer", "hope_attention", "cms"]
SCALING_SPECS = ["gated_deltanet", "titans", "hope"]
SCALING_TOKENS = [512, 2048, 8192]
MODES = ("forward", "train")
MB = 2 ** 20


class BenchError(Exception):
    """A user's mistake in what to measure (an unknown spec, a bad size)."""


# --------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """One thing to measure: `forward` (under no_grad) and `train` (forward and
    backward), each processing `tokens` tokens per call."""
    name: str
    tokens: int
    forward: Callable[[], object]
    train: Callable[[], object]
    grads: list = field(default_factory=list)  # tensors whose .grad a train call fills

    def zero_grad(self) -> None:
        for t in self.grads:
            t.grad = None


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spec_workload(spec: str, fused: bool = True, batch: int = 4, context: int | None = None,
                  settings: dict | None = None, device: str = "cpu", seed: int = 0, stream: int | None = None) -> Workload:
    """A whole compiled model on random bytes: `model(tokens)` and `model.loss(tokens).backward()`.
    With `stream`, the forward feeds the context in calls of that many tokens, carrying
    the fast state from one call to the next."""
    import nldsl
    path, name = resolve_spec(spec)
    overrides = dict(settings or {})
    if context:
        overrides["context"] = context
    with torch.random.fork_rng(devices=[]):  # the same weights for both paths; the caller's RNG untouched
        torch.manual_seed(seed)
        model = nldsl.compile(path, name=name, fused=fused, **overrides).to(device)
    context = int(model.settings["context"])
    tokens = torch.randint(0, int(model.settings["vocab"]), (batch, context + 1), generator=_generator(seed)).to(device)

    def forward():
        with torch.no_grad():
            if not stream:
                model(tokens[:, :-1])
                return
            state = None
            for piece in tokens[:, :-1].split(stream, 1):
                _, state = model(piece, state)

    def train():
        model.loss(tokens).backward()

    return Workload(model.name, batch * context, forward, train, list(model.parameters()))


def level_workload(source: str, level: str, fused: bool = True, batch: int = 4, tokens: int = 512,
                   settings: dict | None = None, device: str = "cpu", seed: int = 0,
                   regional: bool = False) -> Workload:
    """One level of a model alone, as a layer: its first copy run over x [batch, tokens, dim]
    (RMS-normalised, as a block's `level(rmsnorm(x))` would feed it) from fresh fast state;
    `train` back-propagates a fixed random gradient of the output into x and the level's
    outer parameters. `source` is a spec's path or text. `regional`: its period steps
    compiled while it trains (runtime/regions.py, `nldsl train --compile`)."""
    import nldsl
    from torch.nn.functional import rms_norm
    from .runtime import regions
    from .runtime.level import scan
    from .runtime.model import ModelState

    if "\n" not in source:  # a spec's path or an example's name, not its text
        source = resolve_spec(source)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nldsl.compile(source, fused=fused, **dict(settings or {})).to(device)
    if level not in model.slots:
        raise BenchError(f"model `{model.name}` has no level `{level}` (it has: {', '.join(model.slots)})")
    layer = getattr(model, model.slots[level])[0]
    if regional:
        regions.regional(model)
    dim = int(model.settings["dim"])
    x = torch.randn(batch, tokens, dim, generator=_generator(seed)).to(device).requires_grad_()
    upstream = torch.randn(batch, tokens, dim, generator=_generator(seed + 1)).to(device)

    def run():
        state = ModelState(model, batch)
        state.outer_grad = torch.is_grad_enabled()  # as the model's forward says: whether it trains
        return scan(layer, rms_norm(x, (dim,)), state)

    def forward():
        with torch.no_grad():
            run()

    def train():
        (run() * upstream).sum().backward()

    return Workload(f"{model.name}.{level}", batch * tokens, forward, train, [x, *layer.parameters()])


def load_builder(ref: str) -> Callable[..., Workload]:
    """`module:function` or `path/to/file.py:function` -> the function."""
    where, _, fn = ref.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, fn)


# --------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 8) -> float:
    """This machine's fp32 matmul rate in GFLOP/s: the best of `repeats` n×n products
    (the best, since a peak is what the hardware can reach, not what a noisy moment gives)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up: threads, library initialisation
    best = min(time_call(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as FlopCounterMode counts them (matmul-level ops only)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def alternate(workloads: dict[str, Workload], modes=MODES, repeats: int = 5, warmup: int = 1,
              device: str = "cpu", progress: Callable[[str], None] | None = None) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of each workload and mode, the workloads taken in turn
    (A B A B ...) so that a slow moment of the machine is shared between them."""
    times = {(label, mode): [] for label in workloads for mode in modes}
    for mode in modes:
        for r in range(warmup + repeats):
            for label, w in workloads.items():
                w.zero_grad()
                t = time_call(getattr(w, mode), device)
                if r >= warmup:
                    times[label, mode].append(t)
            if progress:
                progress(f"{mode} {r + 1}/{warmup + repeats}" + (" (warm-up)" if r < warmup else ""))
    for w in workloads.values():
        w.zero_grad()
    return times


# --------------------------------------------------------------------- peak memory (fresh process)
class _Held(TorchDispatchMode):
    """Counts the bytes of tensor storage made while it is on and still alive, and their
    peak: every op's outputs are seen (forward and backward), a storage counts from the
    op that made it until the last tensor on it dies. Views and in-place results of a
    storage made before do not count. (torch.profiler's memory events give the same
    figures but held 19 GB of events for a per-token loop's backward.)"""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}  # storage -> [live tensors on it, bytes]
        self.held = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        before = None  # the inputs' storages, found only when an output's storage is not counted yet
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            entry = self.refs.get(key)
            if entry is None:
                if before is None:
                    before = {x.untyped_storage()._cdata for x in tree_leaves((args, kwargs))
                              if isinstance(x, torch.Tensor)}
                if key in before:
                    continue  # a view or an in-place result of a storage this count never saw made
                entry = self.refs[key] = [0, t.untyped_storage().nbytes()]
                self.held += entry[1]
                self.peak = max(self.peak, self.held)
            entry[0] += 1
            weakref.finalize(t, self._drop, key)
        return out

    def _drop(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self.refs[key]
            self.held -= entry[1]


def _peak_held(fn) -> int:
    """The most bytes of tensor storage that fn() made and held at once."""
    with _Held() as count:
        fn()
    return count.peak


def _probe(builder: str, kwargs: dict, modes, threads: int | None) -> dict[str, int]:
    """In a fresh process: the extra memory one call of each mode needs."""
    if threads:
        torch.set_num_threads(threads)
    w = load_builder(builder)(**kwargs)
    device = kwargs.get("device", "cpu")
    cuda = str(device).startswith("cuda")
    out = {}
    for mode in modes:
        fn = getattr(w, mode)
        if cuda:
            fn()  # warm-up: lazy initialisation belongs to no call
        else:
            _peak_held(fn)  # warm-up, the count's own too
        w.zero_grad()
        gc.collect()
        if cuda:
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            sync(device)
            out[mode] = torch.cuda.max_memory_allocated(device) - base
        else:
            out[mode] = _peak_held(fn)
        w.zero_grad()
        gc.collect()
    return out


def peak_memory(builder: str, kwargs: dict, modes=MODES, threads: int | None = None) -> dict[str, int | None]:
    """Peak extra memory of one call of each mode, in bytes, measured in a fresh process
    (None where the probe failed: the reason is printed)."""
    cmd = [sys.executable, "-m", "nldsl.bench", "--probe", builder, json.dumps(kwargs),
           ",".join(modes), str(threads or 0)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"bench: memory probe failed for {builder} {kwargs}: {tail}", file=sys.stderr)
        return {m: None for m in modes}
    return json.loads(lines[-1])


# --------------------------------------------------------------------- the machine
def machine(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device), "date": datetime.date.today().isoformat()}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------- the run
@dataclass
class Row:
    spec: str
    path: str  # fused | reference
    tokens: int
    seconds: dict  # mode -> [seconds per call, ...]
    flops: dict  # mode -> FLOPs of one call
    memory: dict = field(default_factory=dict)  # mode -> peak bytes (None: not measured)

    def median(self, mode: str) -> float:
        return statistics.median(self.seconds[mode])

    def tokens_per_s(self, mode: str) -> float:
        return self.tokens / self.median(mode)

    def gflops(self, mode: str) -> float:
        return self.flops[mode] / self.median(mode) / 1e9


def int_list(text: str) -> list[int]:
    """`512,2048,8192` -> [512, 2048, 8192]; an empty string -> []."""
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise BenchError(f"`{text}`: give whole numbers separated by commas, e.g. 512,2048") from None


def bench_specs(specs: list[str], *, batch: int = 4, context: int | None = None, settings: dict | None = None,
                paths=("fused", "reference"), repeats: int = 5, warmup: int = 1, memory: bool = True,
                device: str = "cpu", threads: int | None = None, log=print) -> list[Row]:
    rows = []
    for spec in specs:
        kwargs = {p: dict(spec=spec, fused=p == "fused", batch=batch, context=context, settings=settings or {},
                          device=device) for p in paths}
        workloads = {p: spec_workload(**kw) for p, kw in kwargs.items()}
        name = next(iter(workloads.values())).name
        times = alternate(workloads, MODES, repeats, warmup, device,
                          progress=lambda s: log(f"  {name}: {s}"))
        for p, w in workloads.items():
            flops = {m: count_flops(getattr(w, m)) for m in MODES}
            w.zero_grad()
            rows.append(Row(name, p, w.tokens, {m: times[p, m] for m in MODES}, flops))
        del workloads
        gc.collect()
        if memory:
            for row, p in zip(rows[-len(paths):], paths):
                log(f"  {name}: peak memory, {p} (fresh process)")
                row.memory = peak_memory("nldsl.bench:spec_workload", kwargs[p], MODES, threads)
        log(f"bench: {name} done")
    return rows


def bench_scaling(specs: list[str], tokens: list[int], *, settings: dict | None = None, device: str = "cpu",
                  threads: int | None = None, log=print) -> dict[str, dict[int, int | None]]:
    """Peak memory of a forward (fused path, one sequence) at each length: in one call,
    and streamed in calls of the shortest length with the state carried between them
    (what the state itself costs, since no call holds more than that many tokens)."""
    out = {}
    piece = min(tokens)
    for spec in specs:
        for stream in (None, piece):
            row = out[f"{spec}, {'one call' if stream is None else f'{piece:,}-token calls'}"] = {}
            for n in tokens:
                if stream and n <= piece:  # one call already
                    row[n] = out[f"{spec}, one call"][n]
                    continue
                log(f"  {spec}: peak memory of a forward at {n:,} tokens{f' in {piece:,}-token calls' if stream else ''}"
                    " (fresh process)")
                kw = dict(spec=spec, fused=True, batch=1, context=n, settings=settings or {}, device=device,
                          stream=stream)
                row[n] = peak_memory("nldsl.bench:spec_workload", kw, ("forward",), threads)["forward"]
    return out


# --------------------------------------------------------------------- printing
def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_mb(b) -> str:
    return "n/a" if b is None else f"{b / MB:,.1f}"


def fmt_ratio(x) -> str:
    return "" if x is None else f"{x:.2f}x"


def console():
    from rich.console import Console
    c = Console()
    return c if c.is_terminal else Console(width=220)  # a pipe or a file: never wrap the columns


def rows_table(rows: list[Row], peak: float):
    from rich.table import Table
    t = Table(title="tokens/s (median), fused / reference, FLOP rate and peak memory", title_justify="left")
    for col in ("spec", "path", "tokens", "fwd tok/s", "train tok/s", "fwd ×ref", "train ×ref",
                "fwd GFLOP/s", "fwd %peak", "train GFLOP/s", "train %peak", "fwd MB", "train MB"):
        t.add_column(col, justify="left" if col in ("spec", "path") else "right")
    ref = {r.spec: r for r in rows if r.path == "reference"}
    for r in rows:
        base = ref.get(r.spec) if r.path == "fused" else None
        ratio = {m: base.median(m) / r.median(m) if base else None for m in MODES}
        t.add_row(r.spec, r.path, f"{r.tokens:,}", fmt_rate(r.tokens_per_s("forward")), fmt_rate(r.tokens_per_s("train")),
                  fmt_ratio(ratio["forward"]), fmt_ratio(ratio["train"]),
                  f"{r.gflops('forward'):.2f}", f"{100 * r.gflops('forward') / peak:.1f}%",
                  f"{r.gflops('train'):.2f}", f"{100 * r.gflops('train') / peak:.1f}%",
                  fmt_mb(r.memory.get("forward")), fmt_mb(r.memory.get("train")))
    return t


def scaling_table(scaling: dict, tokens: list[int]):
    from rich.table import Table
    t = Table(title="peak memory of a forward (MB), fused path, batch 1, by tokens", title_justify="left")
    t.add_column("spec, how the tokens are fed")
    for n in tokens:
        t.add_column(f"{n:,} tok", justify="right")
    t.add_column("KB/token", justify="right")  # the slope between the shortest and the longest
    for spec, by_n in scaling.items():
        first, last = by_n[tokens[0]], by_n[tokens[-1]]
        slope = (last - first) / (tokens[-1] - tokens[0]) / 1024 if len(tokens) > 1 and first and last else None
        t.add_row(spec, *(fmt_mb(by_n[n]) for n in tokens), "n/a" if slope is None else f"{slope:.2f}")
    return t


def header(info: dict, peak: float, n: int) -> str:
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (f"nldsl bench, {info['date']}: {info['cpu']}{gpu}, {info['cores']} cores, torch {info['torch']} "
            f"with {info['threads']} threads on {info['device']}\n"
            f"fp32 matmul peak, measured now: {peak:,.1f} GFLOP/s (the best of several {n}×{n} products)")


def run(specs: list[str] | None = None, *, batch: int = 4, context: int | None = None, settings: dict | None = None,
        paths=("fused", "reference"), repeats: int = 5, warmup: int = 1, memory: bool = True,
        scaling_specs: list[str] | None = None, scaling_tokens: list[int] | None = None,
        device: str | None = None, threads: int | None = None, matmul_size: int = 2048,
        json_out: str | None = None) -> dict:
    """The whole benchmark: the table, the memory-by-tokens table, optionally a JSON file."""
    if batch < 1 or repeats < 1 or warmup < 0 or (context is not None and context < 1):
        raise BenchError("--batch, --repeats and --context must be at least 1, --warmup at least 0")
    if any(n < 1 for n in scaling_tokens or []):
        raise BenchError("--scaling-tokens: lengths must be at least 1")
    specs = specs or EXAMPLES
    scaling_specs = SCALING_SPECS if scaling_specs is None else scaling_specs
    scaling_tokens = SCALING_TOKENS if scaling_tokens is None else scaling_tokens
    for spec in specs + (scaling_specs if scaling_tokens else []):
        resolve_spec(spec)  # an unknown spec fails before anything runs
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine(device)
    before = matmul_peak(device, matmul_size)
    out = console()
    out.print(header(info, before, matmul_size), highlight=False)
    rows = bench_specs(specs, batch=batch, context=context, settings=settings, paths=paths, repeats=repeats,
                       warmup=warmup, memory=memory, device=device, threads=threads, log=log)
    again = matmul_peak(device, matmul_size)  # a shared machine drifts: the peak is taken on both sides of the runs
    out.print(f"fp32 matmul peak after the runs: {again:,.1f} GFLOP/s; %peak is against the higher of the two",
              highlight=False)
    peak = max(before, again)
    out.print(rows_table(rows, peak))
    scaling = {}
    if scaling_tokens and scaling_specs:
        scaling = bench_scaling(scaling_specs, scaling_tokens, settings=settings, device=device, threads=threads, log=log)
        out.print(scaling_table(scaling, scaling_tokens))
    out.print(f"{repeats} repeats after {warmup} warm-up call(s), batch {batch}; ×ref = fused tokens/s over the "
              "reference's, both from this run; GFLOP/s counts matmul-level FLOPs only; MB = a call's peak over "
              "the memory before it, in a fresh process (tensors allocated and held at once) (docs/benchmarks.md)", highlight=False)
    result = {"machine": info, "matmul_peak_gflops": peak, "matmul_peak_before_after": [before, again],
              "matmul_size": matmul_size, "batch": batch,
              "repeats": repeats, "warmup": warmup, "rows": [asdict(r) for r in rows],
              "scaling": {s: {str(n): b for n, b in v.items()} for s, v in scaling.items()}}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
        log(f"bench: wrote {json_out}")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":  # python -m nldsl.bench --probe BUILDER KWARGS MODES THREADS
        _, _, builder, kwargs, modes, threads = sys.argv
        print(json.dumps(_probe(builder, json.loads(kwargs), modes.split(","), int(threads) or None)))
    else:
        print("usage: nldsl bench (this module's entry point is the memory probe of `nldsl bench`)", file=sys.stderr)
        sys.exit(2)
