"""`niah`: a single needle in a haystack, in the style of RULER's S-NIAH (Hsieh et al. 2024).

An example is a haystack (held-out English text, `pydoc`, or the repeated noise of
passkey retrieval, `noise`) with a needle `The special magic number for KEY is:
VALUE.` put at a depth d (0: at the start, 1: at the end of the haystack), then the
query `\nThe special magic number for KEY is: ` and the answer VALUE: the model's
input holds `length` tokens, the last answer token being the only one not fed. KEY is
an adjective and a noun, VALUE a 7-digit number, drawn for each example.

Scoring is greedy exact match: the argmax of the model's prediction at every answer
position, given the answer's earlier tokens, must be the answer's token. That is the
same as decoding the answer greedily, in one forward pass. The share of answer tokens
right is reported beside it (`tokens`), which a small model moves before it gets
whole answers. Accuracy by length and depth is drawn as a heat map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import sources
from ..run import RunError
from ..tokenizer import Tokenizer
from . import LENGTHS, SAMPLES, Context, Option, Task, float_list, heatmap, int_list, register

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# the filler of passkey retrieval (Mohtashami & Jaggi 2023), which RULER calls noise
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The special magic number for {key} is: {value}."
QUERY = "\nThe special magic number for {key} is: "
ADJECTIVES = ("amber", "bright", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen",
              "lucky", "mellow", "noble", "odd", "plain", "quiet", "rapid", "silent", "tidy")
NOUNS = ("anchor", "badger", "candle", "desert", "engine", "falcon", "garden", "harbor", "island", "jacket",
         "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quarry", "river", "saddle", "tunnel")
DIGITS = 7
HAYSTACKS = ("pydoc", "noise")


@dataclass
class Example:
    tokens: torch.Tensor  # length + 1 tokens: the model's input is all but the last
    needle_at: int  # the needle's first token
    needle: torch.Tensor
    answer_at: int  # the answer's first token
    answer: torch.Tensor


def encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    return torch.from_numpy(tokenizer.encode([text.encode()]).astype(np.int64))


class Haystacks:
    """Where haystack text comes from: spans of held-out `pydoc` text at random starts, or
    the noise sentences repeated from a random sentence on."""

    def __init__(self, kind: str, tokenizer: Tokenizer):
        if kind not in HAYSTACKS:
            raise RunError(f"--haystack {kind}: give one of {', '.join(HAYSTACKS)}")
        self.kind, self.tokenizer = kind, tokenizer
        if kind == "pydoc":
            self.text = sources.load("pydoc", tokenizer).heldout.long()
        else:
            self.sentences = [encode(tokenizer, s.strip() + " ") for s in NOISE.split(". ") if s.strip()]

    def draw(self, g: torch.Generator, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.zeros(0, dtype=torch.long)
        if self.kind == "pydoc":
            if n > len(self.text):
                raise RunError(f"a haystack of {n} tokens is longer than the held-out pydoc text "
                               f"({len(self.text)}): choose shorter --lengths or --haystack noise")
            start = int(torch.randint(0, len(self.text) - n + 1, (), generator=g))
            return self.text[start:start + n]
        first = int(torch.randint(0, len(self.sentences), (), generator=g))
        parts, size, i = [], 0, first
        while size < n:
            parts.append(self.sentences[i % len(self.sentences)])
            size += len(parts[-1])
            i += 1
        return torch.cat(parts)[:n]


def make(g: torch.Generator, haystacks: Haystacks, length: int, depth: float) -> Example | None:
    """One example whose model input is `length` tokens with the needle at `depth`, or None
    when the needle, the query and the answer alone are longer."""
    tok = haystacks.tokenizer
    key = f"{ADJECTIVES[int(torch.randint(len(ADJECTIVES), (), generator=g))]}-" \
          f"{NOUNS[int(torch.randint(len(NOUNS), (), generator=g))]}"
    value = str(int(torch.randint(10 ** (DIGITS - 1), 10 ** DIGITS, (), generator=g)))
    needle, query, answer = (encode(tok, t) for t in (NEEDLE.format(key=key, value=value) + " ",
                                                      QUERY.format(key=key), value))
    hay = length + 1 - len(needle) - len(query) - len(answer)
    if hay < 0:
        return None
    haystack = haystacks.draw(g, hay)
    at = round(depth * hay)
    tokens = torch.cat([haystack[:at], needle, haystack[at:], query, answer])
    return Example(tokens, at, needle, len(tokens) - len(answer), answer)


def fixed_size(tokenizer: Tokenizer) -> int:
    """Tokens the needle, query and answer take at least (the shortest key)."""
    key = min((f"{a}-{n}" for a in ADJECTIVES for n in NOUNS), key=len)
    value = "1" * DIGITS
    return sum(len(encode(tokenizer, t)) for t in (NEEDLE.format(key=key, value=value) + " ",
                                                   QUERY.format(key=key), value))


def score(ctx: Context, batch: list[Example]) -> tuple[list[bool], list[float]]:
    """For each example: whether every answer token is the argmax of the prediction before
    it (greedy exact match), and the share of answer tokens that are."""
    x = torch.stack([e.tokens[:-1] for e in batch])
    exact, share = [], []
    for start, logits in ctx.outputs(x):
        for row, e in enumerate(batch[start:start + logits.shape[0]]):
            at = torch.arange(e.answer_at - 1, e.answer_at - 1 + len(e.answer))
            picked = logits[row, at, :ctx.tokenizer.vocab_size].argmax(-1)
            hits = picked == e.answer
            exact.append(bool(hits.all()))
            share.append(float(hits.float().mean()))
    return exact, share


@register
class NeedleInAHaystack(Task):
    name = "niah"
    summary = "single needle in a haystack (RULER S-NIAH): accuracy by context length and depth"
    options = (LENGTHS, SAMPLES,
               Option("depths", f"depths of the needle, 0 (start) to 1 (end), e.g. 0,0.5,1 (default "
                                f"{','.join(map(str, DEPTHS))})", str, "D,D"),
               Option("haystack", "pydoc (held-out English text, the default) or noise (passkey retrieval's "
                                  "repeated sentences)", str, "KIND", HAYSTACKS))

    def evaluate(self, ctx: Context) -> dict:
        context = ctx.context
        lengths = sorted(set(int_list(ctx.option("lengths")))) if ctx.option("lengths") else \
            [context // 2, context, 2 * context]
        depths = sorted(set(float_list(ctx.option("depths")))) if ctx.option("depths") else list(DEPTHS)
        samples = ctx.option("samples", 16)
        if samples < 1:
            raise RunError(f"--samples {samples}: give 1 or more")
        if not depths or not all(0 <= d <= 1 for d in depths):
            raise RunError(f"--depths {ctx.option('depths')}: give depths from 0 to 1")
        if not lengths or min(lengths) < 1:
            raise RunError(f"--lengths {ctx.option('lengths')}: give positive lengths")
        haystacks = Haystacks(ctx.option("haystack", "pydoc"), ctx.tokenizer)
        need = fixed_size(ctx.tokenizer)
        grid: list[list[float | None]] = [[None] * len(lengths) for _ in depths]
        cells = []
        for j, length in enumerate(lengths):
            if length + 1 < need:
                ctx.skip({"length": length}, f"the needle, the query and the answer alone take {need} tokens")
                continue
            for i, depth in enumerate(depths):
                g = ctx.generator(length, round(depth * 10_000))
                batch = [make(g, haystacks, length, depth) for _ in range(samples)]
                batch = [e for e in batch if e is not None]
                if not batch:
                    ctx.skip({"length": length, "depth": depth}, "no example fits")
                    continue
                scored = ctx.within(length, score, ctx, batch)
                if scored is None:
                    break
                exact, share = scored
                grid[i][j] = sum(exact) / len(exact)
                cells.append({"length": length, "depth": depth, "examples": len(exact),
                              "accuracy": sum(exact) / len(exact), "tokens": sum(share) / len(share)})
        return {"scoring": "greedy exact match of the answer's tokens", "haystack": haystacks.kind,
                "lengths": lengths, "depths": depths, "accuracy": grid, "cells": cells}

    def lines(self, record: dict) -> list[str]:
        head = "depth \\ length " + " ".join(f"{n:>7}" for n in record["lengths"])
        rows = [f"{d:>14} " + " ".join("      -" if v is None else f"{v:7.3f}" for v in row)
                for d, row in zip(record["depths"], record["accuracy"])]
        tokens = [c["tokens"] for c in record["cells"]]
        mean = f"; answer tokens right: {sum(tokens) / len(tokens):.3f}" if tokens else ""
        return [f"niah accuracy, haystack {record['haystack']} (greedy exact match{mean}):", head, *rows]

    def plot(self, record: dict, fig) -> None:
        heatmap(fig, record["accuracy"], record["depths"], record["lengths"], "needle depth", "length (tokens)",
                f"{record.get('model') or 'model'}: needle in a haystack ({record['haystack']})")

    def scores(self, record: dict) -> dict[str, float | None]:
        """Over every cell, weighted by its examples: the share answered exactly, and of answer tokens right."""
        n = sum(c["examples"] for c in record["cells"])
        return {k: sum(c[k] * c["examples"] for c in record["cells"]) / n if n else None
                for k in ("accuracy", "tokens")}
