"""Is a change slower? `nldsl bench` on two revisions of nldsl, interleaved, as ratios.

Each revision is unpacked from git (`git archive`) into a temporary folder laid out
as its own pyproject.toml installs it (`[tool.setuptools.package-dir]`), and run with
the same Python and torch. Rounds alternate which revision goes first, so a machine
that slows down or speeds up during the run weighs on both alike; the ratio is of
the medians of each round's median call time, head over base, per spec, path and
mode, beside the lowest and highest ratio of one round: a ratio within that spread
is noise.

    python benchmarks/ab.py --base HEAD~1 --head HEAD hope transformer gated_deltanet
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unpack(rev: str, dest: Path) -> Path:
    """The tree of `rev` laid out as installed: a folder to put on PYTHONPATH."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    src = dest / "src"
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(src, filter="data")
    dirs = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dest / "pkg"
    for name, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):  # parents before children
        target = pkg.joinpath(*name.split("."))
        shutil.copytree(src / folder, target, dirs_exist_ok=True)
    return pkg


def bench(pkg: Path, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    subprocess.run([sys.executable, "-m", "nldsl", "bench", *args, "--json", str(out)], env=env, check=True,
                   cwd=out.parent, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="*", default=["hope", "transformer", "gated_deltanet"])
    p.add_argument("--base", default="HEAD~1")
    p.add_argument("--head", default="HEAD")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bench", default="--batch 2 --context 128 --repeats 3 --no-memory --scaling-tokens=",
                   help="options passed to `nldsl bench` (default: %(default)s)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pkgs = {side: unpack(rev, tmp / side) for side, rev in (("base", a.base), ("head", a.head))}
        times: dict[tuple, dict[str, list[float]]] = {}
        for r in range(a.rounds):
            for side in (("base", "head") if r % 2 == 0 else ("head", "base")):
                print(f"round {r + 1}/{a.rounds}: {side} ({getattr(a, side)})", file=sys.stderr)
                result = bench(pkgs[side], [*a.specs, *a.bench.split()], tmp / f"{side}.json")
                for row in result["rows"]:
                    for mode, secs in row["seconds"].items():
                        times.setdefault((row["spec"], row["path"], mode), {}).setdefault(side, []).append(
                            statistics.median(secs))
    print(f"head ({a.head}) over base ({a.base}): time per call, median of {a.rounds} interleaved rounds "
          f"(`nldsl bench {a.bench}`); below 1 is faster")
    print(f"{'spec':<18} {'path':<10} {'mode':<8} {'base s':>8} {'head s':>8} {'head/base':>9}  one round's")
    for (spec, path, mode), sides in sorted(times.items()):
        base, head = statistics.median(sides["base"]), statistics.median(sides["head"])
        rounds = [h / b for h, b in zip(sides["head"], sides["base"])]
        print(f"{spec:<18} {path:<10} {mode:<8} {base:>8.3f} {head:>8.3f} {head / base:>9.2f}  "
              f"{min(rounds):.2f}-{max(rounds):.2f}")


if __name__ == "__main__":
    main()
