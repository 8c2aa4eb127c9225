"""Text to train a language model on, split once, tokenized, sampled as a pure function of (seed, step).

Batches draw no global randomness: the windows of step s come from a generator seeded
with (seed, s) alone, so a resumed run draws exactly the batches the uninterrupted run
would have drawn, and a checkpoint needs no RNG state. A step's windows are drawn for
all ranks at once and each rank takes its own share (`rank`, `world_size`), so the
ranks of a data-parallel run see together the batch one process would see.

`Corpus` holds a text file's tokens in memory; a folder made by `nldsl data prepare`
is read through memory maps instead (nldsl/shards.py), never whole; what `--data`
names is opened by nldsl/sources.py.
"""
from __future__ import annotations

import hashlib

import torch

from .files import FileError, read_limited
from .tokenizer import BYTE_TOKENIZER, Tokenizer, chunks_of, pieces

PYDOC = "pydoc"  # the English text that ships with every Python: its help topics
HELDOUT = 0.1  # the last 10% of the bytes are held out
MAX_DATA_BYTES = 1 << 30  # the whole file is held in memory (docs/training.md, "Data")
PROMPT_SCAN = 4096  # tokens of held-out text searched for the start of a line, for samples


class DataError(Exception):
    """The data cannot be read or is too small: the user's mistake, one line."""


def read_bytes(data: str) -> bytes:
    """`pydoc` (the help topics, in sorted key order, as UTF-8) or the bytes of a regular
    file of at most MAX_DATA_BYTES (never a FIFO or a device, which could block or never end)."""
    if data == PYDOC:
        from pydoc_data.topics import topics
        return "".join(topics[k] for k in sorted(topics)).encode()
    try:
        return read_limited(data, MAX_DATA_BYTES, "data")
    except FileError as e:
        raise DataError(str(e)) from None


def split(raw: bytes) -> tuple[bytes, bytes]:
    """The bytes to train on and the bytes held out (the last 10%), fixed by the data alone."""
    cut = len(raw) - int(len(raw) * HELDOUT)
    return raw[:cut], raw[cut:]


class Corpus:
    """The tokens of one data set: the first 90% of its bytes to train on, the rest held
    out. `train` and `heldout` are 1-D tensors here; a subclass may give any sequence
    that has a length and takes a tensor of positions as its index."""

    def __init__(self, raw: bytes, name: str, tokenizer: Tokenizer = BYTE_TOKENIZER):
        self.name, self.tokenizer = name, tokenizer
        self.sha256 = hashlib.sha256(raw).hexdigest()  # recorded by a run, to notice changed data later
        self.train, self.heldout = (_tokens(part, tokenizer) for part in split(raw))

    def require(self, context: int) -> None:
        """Both parts must hold at least one window of context + 1 tokens."""
        unit = f"{self.tokenizer.unit}s"
        for part, t in (("training", self.train), ("held-out", self.heldout)):
            if len(t) < context + 1:
                raise DataError(f"data `{self.name}` is too small for context {context}: its {part} part "
                                f"has {len(t)} {unit}, it needs at least {context + 1}")

    def batch(self, seed: int, step: int, batch: int, context: int, rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The training windows of `step` for `rank`: of the batch × world_size random spans
        of context + 1 tokens drawn for the step, the rank-th `batch` of them."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train) - context, (batch * world_size,), generator=g)
        return _windows(self.train, starts[rank * batch:(rank + 1) * batch], context)

    def heldout_windows(self, n: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fixed windows spread evenly over the held-out part, the same at every evaluation."""
        starts = torch.linspace(0, len(self.heldout) - context - 1, n, dtype=torch.float64).long()
        return _windows(self.heldout, starts, context)

    def prompt(self, n: int = 48) -> bytes:
        """A prompt for samples: `n` bytes of held-out text from the start of its first whole line."""
        head = self.heldout[torch.arange(min(len(self.heldout), PROMPT_SCAN))]
        text = self.tokenizer.decode(head.tolist())
        start = text.find(b"\n") + 1
        return text[start:start + n] if start < len(text) else text[:n]


def _tokens(raw: bytes, tokenizer: Tokenizer) -> torch.Tensor:
    if tokenizer is BYTE_TOKENIZER:  # the bytes are the tokens: no copy but the one tensor
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(tokenizer.encode(pieces(chunks_of(raw))).astype("int32"))


def _windows(data, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    spans = data[starts[:, None] + torch.arange(context + 1)].long()
    return spans[:, :-1], spans[:, 1:]  # inputs, and the token that follows each of them
