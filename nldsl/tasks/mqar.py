"""`mqar`: multi-query associative recall (Zoology, Arora et al. 2023), trained and scored.

The examples (key-value pairs, then each key queried once more) are nldsl/synthetic.py's,
the data named `mqar` that `nldsl train --task mqar` trains on. The task's score is the
greedy prediction at each queried key (the argmax over the whole vocab) against its
value, per number of pairs and length; chance is 1/128.
"""
from __future__ import annotations

import torch

from ..run import IGNORE, RunError
from ..synthetic import KEYS, PAIRS, VALUES, examples, fits
from ..tokenizer import BYTE_TOKENIZER
from . import LENGTHS, SAMPLES, Context, Option, Task, heatmap, int_list, register


@register
class MultiQueryRecall(Task):
    name = "mqar"
    summary = "multi-query associative recall: accuracy by number of pairs and length (train with --task mqar)"
    options = (LENGTHS, SAMPLES, Option("pairs", f"numbers of key-value pairs, e.g. 4,8 (default: those of "
                                                 f"{','.join(map(str, PAIRS))} that fit)", str, "N,N"))
    data = "mqar"  # nldsl/synthetic.py makes it

    def evaluate(self, ctx: Context) -> dict:
        if ctx.tokenizer is not BYTE_TOKENIZER or int(ctx.model.settings["vocab"]) < VALUES.stop:
            raise RunError(f"the mqar task needs a model of token ids 0-{VALUES.stop - 1} (a byte-level run, vocab "
                           f"{VALUES.stop} or more)")
        context = ctx.context
        lengths = sorted(set(int_list(ctx.option("lengths")))) if ctx.option("lengths") else [context, 2 * context]
        pairs = sorted(set(int_list(ctx.option("pairs")))) if ctx.option("pairs") else \
            [p for p in PAIRS if fits(max(lengths), p)]
        samples = ctx.option("samples", 16)
        if samples < 1:
            raise RunError(f"--samples {samples}: give 1 or more")
        if not lengths or min(lengths) < 3 or not pairs or min(pairs) < 1 or max(pairs) > len(KEYS):
            raise RunError(f"the mqar grid needs lengths of 3 or more and 1 to {len(KEYS)} pairs")
        grid: list[list[float | None]] = [[None] * len(lengths) for _ in pairs]
        cells = []
        for j, length in enumerate(lengths):
            for i, n in enumerate(pairs):
                if not fits(length, n):
                    ctx.skip({"pairs": n, "length": length}, f"{n} pairs and {n} queries need {4 * n - 1} tokens")
                    continue
                x, y = examples(ctx.generator(length, n), samples, length, n)
                right = ctx.within(length, correct, ctx, x, y)
                if right is None:
                    break
                queries = int((y != IGNORE).sum())
                grid[i][j] = right / queries
                cells.append({"pairs": n, "length": length, "queries": queries, "correct": right,
                              "accuracy": right / queries})
        return {"scoring": "greedy: the argmax at each queried key equals its value", "chance": 1 / len(VALUES),
                "lengths": lengths, "pairs": pairs, "accuracy": grid, "cells": cells}

    def lines(self, record: dict) -> list[str]:
        head = "pairs \\ length " + " ".join(f"{n:>7}" for n in record["lengths"])
        rows = [f"{p:>14} " + " ".join("      -" if v is None else f"{v:7.3f}" for v in row)
                for p, row in zip(record["pairs"], record["accuracy"])]
        return [f"mqar accuracy (chance {record['chance']:.4f}):", head, *rows]

    def plot(self, record: dict, fig) -> None:
        heatmap(fig, record["accuracy"], record["pairs"], record["lengths"], "key-value pairs", "length (tokens)",
                f"{record.get('model') or 'model'}: MQAR accuracy (chance {record['chance']:.3f})")

    def scores(self, record: dict) -> dict[str, float | None]:
        """The share of every cell's queries answered right."""
        queries = sum(c["queries"] for c in record["cells"])
        return {"accuracy": sum(c["correct"] for c in record["cells"]) / queries if queries else None}


def correct(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many scored targets the model's greedy prediction gets right."""
    right = 0
    for start, logits in ctx.outputs(x):
        yb = y[start:start + logits.shape[0]]
        scored = yb != IGNORE
        right += int((logits.argmax(-1)[scored] == yb[scored]).sum())
    return right
