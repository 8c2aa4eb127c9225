"""The training step of K stacked in-sequence `task` levels (K = 1..4, learning every
4, 8, 16, 32 tokens), exact and with `detach` on their memories, against what
`nldsl stats` estimates (compiler/costs.py): per K the step's time, best of the
rounds, each round taking every model in turn; the FLOPs the step runs, counted by
torch's FlopCounterMode (matrix products only); and exact / detach three ways,
estimated, counted and timed. One thread, so that the times compare.

    .venv/bin/python benchmarks/task_levels.py [--rounds 3] [--dim 64] [--context 128] [--batch 2]

With --contexts, the slope instead: a training step of hope.nl with its Continuum
Memory System made four in-sequence task levels (every 8, 16, 32 and 64 tokens, exact)
at each context, batch 1, shipped dim and depth, contexts taken in turn each round;
seconds a step and milliseconds a token, which stay level if the cost is linear.

    .venv/bin/python benchmarks/task_levels.py --contexts 128,512,2048 --rounds 2
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import nldsl
from nldsl.compiler import passes
from nldsl.compiler.costs import step_costs
from nldsl.compiler.driver import check

ROOT = Path(__file__).resolve().parent.parent


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


def hope_four(context: int) -> str:
    """hope.nl with its three CMS levels replaced by four that learn on the task inside the
    sequence, every 8, 16, 32 and 64 tokens, at `context`."""
    text = (ROOT / "examples" / "hope.nl").read_text()
    start, end = text.index("  level cms1"), text.index("  block repeat")
    levels = "".join(f"""  level cms{i} every {p} tokens {{
    memory ffn : mlp(dim, hidden: 4 * dim)
    learn ffn : task by gd(lr: 1e-2)
  }}
""" for i, p in enumerate((8, 16, 32, 64), 1))
    text = text[:start] + levels + "\n" + text[end:]
    reads = "    x = x + cms3(rmsnorm(x))\n"
    assert reads in text and "context 256" in text
    return text.replace(reads, reads + "    x = x + cms4(rmsnorm(x))\n").replace("context 256", f"context {context}")


def slope(contexts: list[int], rounds: int) -> None:
    models = {}
    for c in contexts:
        torch.manual_seed(0)
        tokens = torch.randint(0, 256, (1, c + 1), generator=torch.Generator().manual_seed(0))
        models[c] = (nldsl.compile(hope_four(c)), tokens)
        models[c][0].loss(tokens).backward()  # warm-up
    times = {c: [] for c in contexts}
    inner = {c: [] for c in contexts}  # per round: the seconds of each inner gradient, in order
    for _ in range(rounds):
        for c, (model, tokens) in models.items():
            model.zero_grad(set_to_none=True)
            with timed_inner_gradients() as calls:
                t = time.perf_counter()
                model.loss(tokens).backward()
                times[c].append(time.perf_counter() - t)
            inner[c].append(calls)
    print(f"hope.nl with four in-sequence task levels (every 8, 16, 32, 64 tokens), batch 1, 1 thread, "
          f"best of {rounds} rounds; the inner gradients (torch.autograd.grad in the forward) of that round: "
          f"their share of the step, and ms a call in the first and the last quarter of the sequence")
    print(f"{'context':>8} {'step s':>8} {'ms/token':>9} {'inner s':>8} {'share':>6} {'first ms':>9} {'last ms':>8}")
    for c in contexts:
        best = min(range(rounds), key=lambda r: times[c][r])
        calls = inner[c][best]
        q = max(1, len(calls) // 4)
        first, last = sum(calls[:q]) / q, sum(calls[-q:]) / q
        print(f"{c:>8} {times[c][best]:8.2f} {1e3 * times[c][best] / c:9.2f} {sum(calls):8.2f} "
              f"{sum(calls) / times[c][best]:6.0%} {1e3 * first:9.2f} {1e3 * last:8.2f}")


@contextlib.contextmanager
def timed_inner_gradients():
    """Every torch.autograd.grad call made inside, timed, in the order made: the task levels'
    inner gradients (the outer backward is `.backward()`, not counted)."""
    calls, grad = [], torch.autograd.grad

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = grad(*args, **kwargs)
        calls.append(time.perf_counter() - t)
        return out
    torch.autograd.grad = timed
    try:
        yield calls
    finally:
        torch.autograd.grad = grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--contexts", help="N,N,...: the slope in the context instead (see above)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.contexts:
        return slope([int(c) for c in args.contexts.split(",")], args.rounds)
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
