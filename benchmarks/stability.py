"""Whether every model example trains without diverging: each model of examples/*.nl,
at its shipped settings and at dim 64 and 96 (context 128, batch 8), seeds 0, 1 and 2,
trained on Python's help text for --steps steps with `nldsl train`'s loop. A run that
stops with NaN or Inf is recorded with the message that names its cause.

Every run is its own run folder under --out and checkpoints every 100 steps, so an
interrupted sweep continues where it stopped when started again (finished runs are
read from results.json, unfinished ones resume from their checkpoint).

    .venv/bin/python benchmarks/stability.py                      # the whole sweep: hours
    .venv/bin/python benchmarks/stability.py --only titans --steps 200
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

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
    try:
        with contextlib.redirect_stdout(log):
            history = train(spec, steps=steps, out_dir=folder, resume=(folder / CHECKPOINT).exists(),
                            overrides=dict(SIZES[size]) or None, seed=seed, eval_every=0, ckpt_every=100,
                            sample=0, quiet=True)
        first, last = history.heldout[0], history.heldout[steps]
        return {"steps": steps, "diverged": None, "heldout_start": first, "heldout_end": last}
    except TrainError as e:
        return {"steps": steps, "diverged": str(e)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"of {', '.join(SIZES)}")
    ap.add_argument("--only", nargs="*", help="model names (default: every model example)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "stability")
    args = ap.parse_args()
    nldsl.flush_subnormals()
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    (args.out / "specs").mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    for file, name in models():
        if args.only and name not in args.only:
            continue
        for size in args.sizes.split(","):
            for seed in seeds:
                key = f"{name} | {size} | seed {seed}"
                if results.get(key, {}).get("steps") != args.steps:
                    results[key] = run(file, name, size, seed, args.steps, args.out)
                    atomic_write(results_path, json.dumps(results, indent=1).encode())
                r = results[key]
                what = (f"diverged: {r['diverged']}" if r["diverged"] else
                        f"held-out {r['heldout_start']:.3f} -> {r['heldout_end']:.3f} nats")
                print(f"{key:40s} {r['steps']:>5} steps  {what}", flush=True)


if __name__ == "__main__":
    main()
