"""Data made here rather than read: what `--data` names by a word of its own. One set
so far, `mqar` (multi-query associative recall, Zoology, Arora et al. 2023), which
`nldsl train --task mqar` trains on and the `mqar` task (nldsl/tasks/mqar.py) scores.

An example of `length` + 1 tokens: N key-value pairs `k1 v1 k2 v2 … kN vN`, then, in
the rest of the sequence, each key once more (in a random order, at random even
offsets, token 0 between them) followed by its value. Keys are tokens 1 .. 127,
values 128 .. 255 (so a byte-level model's vocab holds them), drawn without
replacement for keys and with replacement for values. Only the position of each
queried key is scored: its target is the key's value; every other target is
`IGNORE`, which no loss counts. Zoology places its queries at power-law distributed
gaps; here they are uniform. Training batches hold the model's context, each
sequence with N drawn uniformly from 1 to min(64, (context + 1) // 4).
"""
from __future__ import annotations

import hashlib

import torch

from .data import DataError
from .run import IGNORE
from .tokenizer import BYTE_TOKENIZER, BYTES, Tokenizer

KEYS = range(1, 128)
VALUES = range(128, 256)
MAX_PAIRS = 64
PAIRS = (2, 4, 8, 16, 32, 64)
HELDOUT_SEED = 0x6D716172  # the held-out examples' stream, apart from every (seed, step)


def fits(length: int, pairs: int) -> bool:
    """Whether N pairs and their N queries fit in an example whose model input is `length` tokens."""
    return 1 <= pairs <= len(KEYS) and 4 * pairs <= length + 1


def example(g: torch.Generator, length: int, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example: the `length` input tokens and their targets (IGNORE where not scored)."""
    if not fits(length, pairs):
        raise ValueError(f"{pairs} pairs and their queries do not fit in {length} tokens")
    seq = torch.zeros(length + 1, dtype=torch.long)
    keys = torch.randperm(len(KEYS), generator=g)[:pairs] + KEYS.start
    values = torch.randint(len(VALUES), (pairs,), generator=g) + VALUES.start
    seq[0:2 * pairs:2], seq[1:2 * pairs:2] = keys, values
    slots = 2 * pairs + 2 * torch.randperm((length + 1 - 2 * pairs) // 2, generator=g)[:pairs]
    order = torch.randperm(pairs, generator=g)
    seq[slots], seq[slots + 1] = keys[order], values[order]
    x, y = seq[:-1], torch.full((length,), IGNORE, dtype=torch.long)
    y[slots] = seq[slots + 1]  # the target of a queried key is its value
    return x, y


def examples(g: torch.Generator, n: int, length: int, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` examples; `pairs` a count, or a callable drawing one per example."""
    xs, ys = zip(*(example(g, length, pairs(g) if callable(pairs) else pairs) for _ in range(n)))
    return torch.stack(xs), torch.stack(ys)


class MQARData:
    """The synthetic data `mqar`, with the interface of a Corpus (nldsl/data.py): training
    batches a pure function of (seed, step), fixed held-out examples."""
    name = "mqar"
    sha256 = hashlib.sha256(b"nldsl mqar/1: keys 1-127, values 128-255, uniform query slots").hexdigest()
    train = heldout = ()  # made on demand, never held

    def __init__(self, tokenizer: Tokenizer | str | None = None):
        if tokenizer not in (None, BYTES, BYTE_TOKENIZER):
            name = tokenizer if isinstance(tokenizer, str) else tokenizer.name
            raise DataError(f"the data `mqar` is made of token ids 0-255: leave out --tokenizer {name}")
        self.tokenizer = BYTE_TOKENIZER
        self.about = (f"key-value pairs and queries made at every step (keys {KEYS.start}-{KEYS.stop - 1}, values "
                      f"{VALUES.start}-{VALUES.stop - 1}), scored at the queries only")

    def require(self, context: int) -> None:
        if not fits(context, 1):
            raise DataError(f"data `mqar` needs a context of at least 3 tokens (a pair and its query), not {context}")

    @staticmethod
    def pairs_for(context: int):
        top = min(MAX_PAIRS, (context + 1) // 4)
        return lambda g: int(torch.randint(1, top + 1, (), generator=g))

    def batch(self, seed: int, step: int, batch: int, context: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x, y = examples(g, batch * world_size, context, self.pairs_for(context))
        return x[rank * batch:(rank + 1) * batch], y[rank * batch:(rank + 1) * batch]

    def heldout_windows(self, n: int, context: int):
        return examples(torch.Generator().manual_seed(HELDOUT_SEED), n, context, self.pairs_for(context))

    def prompt(self, n: int = 48) -> bytes:
        x, _ = self.heldout_windows(1, max(n, 3))
        return bytes(x[0, :n].tolist())


MADE = {MQARData.name: MQARData}  # the data sets made here, by name: tokenizer -> a Corpus-like set
