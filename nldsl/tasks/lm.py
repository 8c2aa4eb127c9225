"""`lm`: held-out loss, perplexity and bits per byte (token), overall and by position.

The held-out windows are `Corpus.heldout_windows`, the ones `nldsl eval` and training's
held-out evaluations take, so at the model's own context the overall loss is the
number `nldsl eval` prints. The loss by position sums each position's loss over the
windows and averages it within buckets of the context (`--buckets`, equal widths),
and, at lengths past the trained context (`--lengths`), in more buckets of the same
width: the curve that shows whether memory helps later tokens. A model with a
learned position table (`positional`) has no vectors past its context; those
lengths are skipped with a note.
"""
from __future__ import annotations

import math

import torch

from .. import sources
from ..data import DataError
from ..run import IGNORE, RunError
from ..logs import bits
from . import LENGTHS, Context, Option, Task, int_list, register

BUCKETS = 8


@register
class LanguageModelling(Task):
    name = "lm"
    summary = "held-out loss, perplexity, bits per byte (token), and loss by position in and past the context"
    heldout = True
    comparison_plot = "position"  # the loss by position of every model of an `nldsl compare`
    options = (LENGTHS, Option("buckets", f"buckets of the context for the loss by position (default {BUCKETS})"))

    def evaluate(self, ctx: Context) -> dict:
        corpus = corpus_of(ctx)
        context = ctx.context
        lengths = int_list(ctx.option("lengths")) if ctx.option("lengths") else [context, 2 * context]
        buckets = ctx.option("buckets", BUCKETS)
        if buckets < 1 or buckets > context:
            raise RunError(f"--buckets {buckets}: give 1 to {context} (the model's context)")
        if not lengths or min(lengths) < 1:
            raise RunError(f"--lengths {ctx.option('lengths')}: give positive lengths")
        width = math.ceil(context / buckets)
        batches = ctx.eval_batches or (ctx.ckpt.eval_batches if ctx.ckpt is not None else 8)
        results = []
        for length in sorted(set(lengths)):
            try:
                measured = ctx.within(length, by_position, ctx, corpus, length, batches)
            except DataError as e:
                if length <= context:
                    raise
                ctx.skip({"length": length}, str(e))
                continue
            if measured is not None:
                results.append(summarise(*measured, width, context))
        return {"data": corpus.name, "unit": corpus.tokenizer.unit, "context": context, "bucket_width": width,
                "eval_batches": batches, "lengths": results}

    def lines(self, record: dict) -> list[str]:
        unit = record["unit"]
        out = []
        for r in record["lengths"]:
            curve = " ".join(f"{b['loss']:.3f}" for b in r["buckets"])
            out.append(f"length {r['length']}: loss {r['loss']:.4f} nats, perplexity {r['perplexity']:.3f}, "
                       f"{r['bits']:.4f} bits/{unit}; by position ({record['bucket_width']} {unit}s a bucket): "
                       f"{curve}")
        return out

    def plot(self, record: dict, fig) -> None:
        ax = fig.add_subplot()
        for r in record["lengths"]:
            centres = [(b["start"] + b["end"] - 1) / 2 for b in r["buckets"]]
            ax.plot(centres, [b["loss"] for b in r["buckets"]], "o-", label=f"length {r['length']}")
        ax.axvline(record["context"] - 0.5, color="0.5", ls="--", lw=1, label="trained context")
        unit = record["unit"]
        ax.set(xlabel=f"position ({unit}s)", ylabel=f"loss (nats per {unit})",
               title=f"{record.get('model') or 'model'}: held-out loss by position on {record['data']}")
        ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2))).set_ylabel(f"bits per {unit}")
        ax.grid(alpha=0.3)
        ax.legend()

    def scores(self, record: dict) -> dict[str, float]:
        """The loss and bits at the model's own context (none where --lengths left it out)."""
        at = [r for r in record["lengths"] if r["length"] == record["context"]]
        return {"loss": at[0]["loss"], f"bits/{record['unit']}": at[0]["bits"]} if at else {}

    def plot_comparison(self, records: dict[str, list[dict]], fig) -> None:
        """Each model's loss by position at its longest length, the mean over its seeds with
        their lowest and highest as a band, and a dashed line at each trained context."""
        ax = fig.add_subplot()
        contexts = set()
        for i, (name, seeds) in enumerate(records.items()):
            seeds = [r for r in seeds if r["lengths"]]
            if not seeds:
                continue
            longest = [max(r["lengths"], key=lambda x: x["length"]) for r in seeds]  # the same in every seed
            centres = [(b["start"] + b["end"] - 1) / 2 for b in longest[0]["buckets"]]
            losses = [[r["buckets"][j]["loss"] for r in longest] for j in range(len(centres))]
            ax.plot(centres, [sum(v) / len(v) for v in losses], "o-", color=f"C{i % 10}", ms=3, label=name)
            ax.fill_between(centres, [min(v) for v in losses], [max(v) for v in losses], color=f"C{i % 10}",
                            alpha=0.2, lw=0)
            contexts.add(seeds[0]["context"])
        for context in sorted(contexts):
            ax.axvline(context - 0.5, color="0.5", ls="--", lw=1)
        unit = next((r["unit"] for seeds in records.values() for r in seeds), "token")
        ax.set(xlabel=f"position ({unit}s; dashed: trained context)", ylabel=f"loss (nats per {unit})",
               title="held-out loss by position (mean over seeds, band: lowest to highest)")
        ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2))).set_ylabel(f"bits per {unit}")
        ax.grid(alpha=0.3)
        ax.legend()


def corpus_of(ctx: Context):
    """The run's data (or --data), tokenized with the run's tokenizer."""
    if ctx.ckpt is not None:
        from ..train import run_corpus
        corpus = run_corpus(ctx.ckpt, ctx.data, ctx.tokenizer)
    else:
        corpus = sources.load(ctx.data or "pydoc", ctx.tokenizer)
    corpus.require(ctx.context)
    return corpus


def by_position(ctx: Context, corpus, length: int, batches: int):
    """Per position of windows of `length` tokens: the summed loss (float64) and the count of
    scored targets, over `batches` × batch fixed held-out windows."""
    if len(corpus.heldout) < length + 1:
        raise DataError(f"the held-out part of `{corpus.name}` has {len(corpus.heldout)} "
                        f"{corpus.tokenizer.unit}s, fewer than a window of {length + 1}")
    x, y = corpus.heldout_windows(batches * ctx.batch, length)
    sums = torch.zeros(length, dtype=torch.float64)
    for start, logits in ctx.outputs(x):
        yb = y[start:start + logits.shape[0]]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), yb, reduction="none", ignore_index=IGNORE)
        sums += losses.double().sum(0)
    return sums, (y != IGNORE).sum(0), x.shape[0]


def summarise(sums: torch.Tensor, counts: torch.Tensor, windows: int, width: int, context: int) -> dict:
    length = sums.shape[0]
    total, n = float(sums.sum()), int(counts.sum())
    loss = total / n
    buckets = []
    for start in range(0, length, width):
        end = min(start + width, length)
        c = int(counts[start:end].sum())
        if c:
            buckets.append({"start": start, "end": end, "count": c, "loss": float(sums[start:end].sum()) / c})
    inside = int(counts[:context].sum())
    return {"length": length, "windows": windows, "tokens": n, "loss": loss, "perplexity": math.exp(loss),
            "bits": bits(loss), "loss_within_context": float(sums[:context].sum()) / inside if inside else None,
            "buckets": buckets}
