"""The training step of K stacked in-sequence `task` levels (K = 1..4, learning every
4, 8, 16, 32 tokens), exact and with `detach` on their memories, against what
`nldsl stats` estimates (compiler/costs.py): per K the step's time, best of the
rounds, each round taking every model in turn; the FLOPs the step runs, counted by
torch's FlopCounterMode (matrix products only); and exact / detach three ways,
estimated, counted and timed. One thread, so that the times compare.

    .venv/bin/python benchmarks/task_levels.py [--rounds 3] [--dim 64] [--context 128] [--batch 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import nldsl
from nldsl.compiler import passes
from nldsl.compiler.costs import step_costs
from nldsl.compiler.driver import check


def spec(k: int, detach: bool, dim: int, context: int, batch: int) -> str:
    """K levels on one stream, each a pre-norm residual mlp learning on the task."""
    opt = ", detach" if detach else ""
    levels = "".join(f"""
  level t{i} every {4 * 2 ** i} tokens {{
    memory ffn : mlp(dim, hidden: 2 * dim{opt})
    learn ffn : task by gd(lr: 1e-2)
  }}""" for i in range(k))
    block = "\n".join(f"    x = x + t{i}(rmsnorm(x))" for i in range(k))
    return f"""model stack {{
  vocab 256
  dim {dim}
  context {context}
  batch {batch}
{levels}
  block {{
{block}
  }}
  objective next_token
  optimizer adam(lr: 1e-3)
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = [(k, d) for k in range(1, 5) for d in (False, True)]
    models, estimate, counted = {}, {}, {}
    for case in cases:
        text = spec(*case, args.dim, args.context, args.batch)
        estimate[case] = step_costs(passes.run(check(text).models[0]))["exact"]
        torch.manual_seed(0)
        model = nldsl.compile(text)
        tokens = torch.randint(0, 256, (args.batch, args.context + 1), generator=torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as fc:
            model.loss(tokens).backward()  # also the warm-up
        counted[case] = fc.get_total_flops() / (args.batch * args.context)
        models[case] = (model, tokens)
    times = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (model, tokens) in models.items():
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            model.loss(tokens).backward()
            times[case].append(time.perf_counter() - t)
    best = {case: min(ts) for case, ts in times.items()}
    print(f"dim {args.dim}, batch {args.batch} × context {args.context}, 1 thread, best of {args.rounds} rounds")
    print(f"{'K':>2} {'exact s':>8} {'detach s':>9} {'est. MFLOP/tok':>15} {'counted':>8} "
          f"{'ratio est.':>11} {'counted':>8} {'timed':>6}")
    for k in range(1, 5):
        e, d = (k, False), (k, True)
        print(f"{k:>2} {best[e]:8.3f} {best[d]:9.3f} {estimate[e] / 1e6:7.2f} / {estimate[d] / 1e6:5.2f}"
              f" {counted[e] / 1e6:4.2f}/{counted[d] / 1e6:4.2f} {estimate[e] / estimate[d]:10.2f}x"
              f" {counted[e] / counted[d]:7.2f}x {best[e] / best[d]:5.2f}x")


if __name__ == "__main__":
    main()
