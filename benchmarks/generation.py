"""Generation after long prompts: for each model at its shipped settings and each
prompt length, the prompt is fed a `context` at a time and then `--tokens` tokens are
generated one at a time with the fast state carried (`model.generate`). Per case: the
seconds the prompt took, generated tokens per second, the bytes the carried state holds
after the prompt and after the last token (`ModelState.nbytes`), and the process's
peak resident memory. Each case runs in a process of its own, so that its peak is its
own; one thread. Recurrent levels hold the same state whatever the prompt; an
attention memory holds every key and value it has seen (the Transformer's KV cache).

    .venv/bin/python benchmarks/generation.py [--lengths 1024,8192,32768] [--tokens 32]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["hope", "titans", "gated_deltanet", "transformer"]


def case(name: str, length: int, tokens: int) -> dict:
    """One model, one prompt length, in this process."""
    import torch

    import nldsl
    from nldsl.runtime.model import continuation

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nldsl.compile(ROOT / "examples" / f"{name}.nl").eval()
    prompt = torch.randint(0, 256, (1, length))
    chunk = int(model.settings["context"])
    t0 = time.perf_counter()
    state = None
    with torch.no_grad():
        for start in range(0, length - 1, chunk):
            _, state = model(prompt[:, start:min(start + chunk, length - 1)], state)
    t1 = time.perf_counter()
    after_prompt = state.nbytes()
    made = []
    for token in continuation(model, prompt[:, -1:], state=state):  # the prompt's last token, then one at a time
        made.append(token)
        if len(made) == tokens:
            break
    t2 = time.perf_counter()
    return {"model": name, "prompt": length, "prompt_s": t1 - t0, "tokens_per_s": tokens / (t2 - t1),
            "state_mb": after_prompt / 2 ** 20,
            "state_end_mb": state.nbytes() / 2 ** 20, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,8192,32768")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # MODEL:LENGTH, run in this process
    args = ap.parse_args()
    if args.case:
        name, length = args.case.split(":")
        print(json.dumps(case(name, int(length), args.tokens)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"prompt fed a context at a time, then {args.tokens} tokens one at a time; one thread, a process a case")
    print(f"{'model':16} {'prompt':>7} {'prompt s':>9} {'tokens/s':>9} {'state MB':>9} {'at end':>7} {'peak MB':>8}")
    for name in args.models.split(","):
        for length in lengths:
            out = subprocess.run([sys.executable, __file__, "--case", f"{name}:{length}", "--tokens", str(args.tokens)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name:16} {length:>7,} {r['prompt_s']:>9.1f} {r['tokens_per_s']:>9.1f} {r['state_mb']:>9.2f} "
                  f"{r['state_end_mb']:>7.2f} {r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
