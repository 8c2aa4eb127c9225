"""Whether every model example trains without diverging: each model of examples/*.nl,
at its shipped settings and at dim 64 and 96 (context 128, batch 8), seeds 0, 1 and 2,
trained on Python's help text for --steps steps with `nldsl train`'s loop. A run that
stops with NaN or Inf is recorded with the message that names its cause.

Results go to --results (kept in the repository: docs/benchmarks.md reads from it);
finished runs are not run again. Every run is its own run folder under --out and
checkpoints every 100 steps, so an interrupted run resumes from its checkpoint. --jobs
runs that many runs at once, one thread each.

    .venv/bin/python benchmarks/stability.py --jobs 2             # the whole sweep: hours
    .venv/bin/python benchmarks/stability.py --only titans --steps 200
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

import nldsl
from nldsl.compiler.driver import check
from nldsl.files import atomic_write
from nldsl.train import CHECKPOINT, TrainError, train

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"shipped": {}, "dim 64": {"dim": 64, "context": 128, "batch": 8},
         "dim 96": {"dim": 96, "context": 128, "batch": 8}}


def models() -> list[tuple[Path, str]]:
    """(file, model name) of every model of every example."""
    return [(f, m.name) for f in sorted((ROOT / "examples").glob("*.nl")) for m in check(f).models]


def alone(file: Path, name: str, folder: Path) -> Path:
    """A spec file whose first model is `name` (training takes a file's first model): the
    file's text with the other models cut out by their spans."""
    spec = check(file)
    if spec.models[0].name == name:
        return file
    lines = file.read_text().split("\n")
    drop = set()
    for m in spec.models:
        if m.name != name:
            drop.update(range(m.span.line - 1, m.span.end_line))
    path = folder / f"{name}.nl"
    atomic_write(path, "\n".join(line for i, line in enumerate(lines) if i not in drop).encode())
    return path


def run(file: Path, name: str, size: str, seed: int, steps: int, out: Path) -> dict:
    folder = out / f"{name}-{size.replace(' ', '')}-seed{seed}"
    spec = alone(file, name, out / "specs")
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            history = train(spec, steps=steps, out_dir=folder, resume=(folder / CHECKPOINT).exists(),
                            overrides=dict(SIZES[size]) or None, seed=seed, eval_every=0, ckpt_every=100,
                            sample=0, quiet=True)
        first, last = history.heldout[0], history.heldout[steps]
        return {"steps": steps, "diverged": None, "heldout_start": first, "heldout_end": last,
                "seconds": round(time.perf_counter() - start)}
    except TrainError as e:
        return {"steps": steps, "diverged": str(e)}


def one_thread() -> None:
    torch.set_num_threads(1)
    nldsl.flush_subnormals()


def show(key: str, r: dict) -> None:
    what = (f"diverged: {r['diverged']}" if r["diverged"] else
            f"held-out {r['heldout_start']:.3f} -> {r['heldout_end']:.3f} nats")
    print(f"{key:40s} {r['steps']:>5} steps  {what}", flush=True)


def report(results: dict, sizes: list[str], seeds: list[int]) -> str:
    """The markdown table of docs/benchmarks.md: one row per model and size, held-out
    loss at the first and last step per seed, or the step it diverged at."""
    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        if r["diverged"]:
            step = r["diverged"].split("step ")[1].split(":")[0] if "step " in r["diverged"] else "?"
            return f"**diverged at step {step}**"
        return f"{r['heldout_start']:.3f} → {r['heldout_end']:.3f}"
    names = dict.fromkeys(key.split(" | ")[0] for key in results)
    lines = ["| model | size | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for name in names:
        for size in sizes:
            row = [results.get(f"{name} | {size} | seed {s}") for s in seeds]
            if any(row):
                lines.append(f"| {name} | {size} | " + " | ".join(cell(r) for r in row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"of {', '.join(SIZES)}")
    ap.add_argument("--only", nargs="*", help="model names, run in this order (default: every model example)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "stability", help="run folders")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "stability.json")
    ap.add_argument("--report", action="store_true", help="print the table of --results and stop")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.report:
        results = json.loads(args.results.read_text()) if args.results.exists() else {}
        print(report(results, args.sizes.split(","), seeds))
        return
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    (args.out / "specs").mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    found = dict((name, file) for file, name in models())
    unknown = [n for n in args.only or [] if n not in found]
    if unknown:
        ap.error(f"no model example named {', '.join(unknown)} (there are {', '.join(found)})")
    todo = [(f"{name} | {size} | seed {seed}", (found[name], name, size, seed, args.steps, args.out))
            for name in args.only or found for size in args.sizes.split(",")
            for seed in seeds]
    for key, _ in todo:
        if results.get(key, {}).get("steps") == args.steps:
            show(key, results[key])
    with ProcessPoolExecutor(args.jobs, initializer=one_thread) as pool:
        running = {pool.submit(run, *job): key for key, job in todo
                   if results.get(key, {}).get("steps") != args.steps}
        for done in as_completed(running):
            key = running[done]
            results[key] = done.result()
            atomic_write(args.results, json.dumps(dict(sorted(results.items())), indent=1).encode())
            show(key, results[key])


if __name__ == "__main__":
    main()
