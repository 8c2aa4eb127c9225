"""Bytes to train a byte-level model on, split once, sampled as a pure function of (seed, step).

Batches draw no global randomness: the windows of step s come from a generator seeded
with (seed, s) alone, so a resumed run draws exactly the batches the uninterrupted run
would have drawn, and a checkpoint needs no RNG state.
"""
from __future__ import annotations

import hashlib
import os

import torch

from .files import FileError, read_limited

PYDOC = "pydoc"  # the English text that ships with every Python: its help topics
HELDOUT = 0.1  # the last 10% of the bytes are held out
MAX_DATA_BYTES = 1 << 30  # the whole file is held in memory (docs/training.md, "Data")


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


def data_key(data: str) -> str:
    """How a run records its data: `pydoc`, or the file's absolute path, so that the run's
    folder can be evaluated from any directory."""
    return data if data == PYDOC else os.path.abspath(data)


class Corpus:
    """The bytes of one data set: the first 90% to train on, the rest held out."""

    def __init__(self, raw: bytes, name: str):
        self.name = name
        self.sha256 = hashlib.sha256(raw).hexdigest()  # recorded by a run, to notice changed data later
        cut = len(raw) - int(len(raw) * HELDOUT)
        self.train, self.heldout = _tensor(raw[:cut]), _tensor(raw[cut:])

    @classmethod
    def load(cls, data: str) -> "Corpus":
        return cls(read_bytes(data), data)

    def require(self, context: int) -> None:
        """Both parts must hold at least one window of context + 1 bytes."""
        for part, t in (("training", self.train), ("held-out", self.heldout)):
            if len(t) < context + 1:
                raise DataError(f"data `{self.name}` is too small for context {context}: its {part} part "
                                f"has {len(t)} bytes, it needs at least {context + 1}")

    def batch(self, seed: int, step: int, batch: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training windows of `step`: `batch` random spans of context + 1 bytes."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train) - context, (batch,), generator=g)
        return _windows(self.train, starts, context)

    def heldout_windows(self, n: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fixed windows spread evenly over the held-out part, the same at every evaluation."""
        starts = torch.linspace(0, len(self.heldout) - context - 1, n, dtype=torch.float64).long()
        return _windows(self.heldout, starts, context)

    def prompt(self, n: int = 48) -> bytes:
        """A prompt for samples: held-out text from the start of its first whole line."""
        text = self.heldout.numpy().tobytes()
        start = text.find(b"\n") + 1
        return text[start:start + n] if start < len(text) else text[:n]


def _tensor(raw: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)


def _windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    spans = data[starts[:, None] + torch.arange(context + 1)].long()
    return spans[:, :-1], spans[:, 1:]  # inputs, and the byte that follows each of them
