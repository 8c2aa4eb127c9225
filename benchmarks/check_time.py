"""How `nldsl check` time grows with the number of flows: specs with N flows written
in reverse dependency order (each flow reads the one written after it, the order
that used to make the cycle search quadratic), timed through `check` (parse, load,
check) as the best of a few runs. The time per flow should stay flat: the last line
gives the ratio of the largest to the smallest time per flow of this run.

    .venv/bin/python benchmarks/check_time.py [--sizes 250,500,1000,2000,4000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

from nldsl.compiler.driver import check


def spec(n: int) -> str:
    flows = "\n".join(f"    flow f{i} = f{i + 1} * 0.5 + 1" for i in range(n))
    return f"""model m {{
  vocab 256
  dim 64
  level mem every 16 tokens {{
    memory M : linear(dim)
{flows}
    flow f{n} = proj(x)
    flow k = l2norm(f0)
    learn M : l2(k, k) by gd(lr: 0.1)
    out M(k)
  }}
  block {{ x = x + mem(rmsnorm(x)) }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}
"""


def best_time(text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        check(text)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="250,500,1000,2000,4000", help="flow counts, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="runs per size; the best is kept")
    args = p.parse_args()
    check(spec(10))  # builds the parser once, outside the timings
    per_flow = []
    print(f"{'flows':>6}  {'check (s)':>9}  {'per flow (µs)':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        t = best_time(spec(n), args.repeats)
        per_flow.append(t / n)
        print(f"{n:>6}  {t:>9.3f}  {t / n * 1e6:>13.1f}")
    print(f"largest / smallest time per flow: {max(per_flow) / min(per_flow):.2f}")


if __name__ == "__main__":
    main()
