"""Tokenizers: what turns text into a model's tokens and back.

`bytes` (the default) makes every byte a token, vocab 256. `bpe:VOCAB` trains a
byte-level BPE with the Hugging Face `tokenizers` library on the training text;
`FILE` reads an existing `tokenizer.json`, or a SentencePiece `.model` where the
`sentencepiece` package is installed. A tokenizer other than bytes is one file, which
runs and prepared folders keep beside their data (`tokenizer.json` or
`tokenizer.model`) so that eval, generate and resume use the very same one.

A tokenizer file may come from someone else: it is read bounded and only if regular,
parsed by the library as data (nothing in it is executed), and no part of it is
echoed into an error.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

import numpy as np

from .files import FileError, read_limited

BYTES = "bytes"
BPE = "bpe:"
JSON_FILE, SENTENCEPIECE_FILE = "tokenizer.json", "tokenizer.model"  # a tokenizer's name in a folder
MAX_TOKENIZER_BYTES = 256 << 20  # a tokenizer file is read whole
MAX_VOCAB = 1 << 24  # the checker's largest size (compiler/check/consts.MAX_SIZE)
PIECE = 1 << 20  # text is tokenized in pieces of about this many bytes, cut after a newline
GROUP = 8  # pieces given to a library at once: its threads share them out


class TokenizerError(Exception):
    """A tokenizer that cannot be had as asked: one line naming it and why."""


class Tokenizer:
    """Text (bytes, read as UTF-8) to token ids and back. `unit` names what one of the
    model's positions is, for losses per byte or per token; `file` is the name it is
    kept under in a folder, with `raw` its bytes (None for bytes, which needs no file)."""

    name: str
    vocab_size: int
    unit = "token"
    file: str | None = None
    raw: bytes | None = None

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.raw).hexdigest() if self.raw is not None else None

    @property
    def dtype(self) -> np.dtype:
        """What token shards store its ids as: uint16, or uint32 beyond 65,536 tokens."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def encode(self, pieces: Iterable[bytes]) -> np.ndarray:
        """The ids of the pieces' text, concatenated."""
        parts = list(self.encode_groups(pieces))
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def encode_groups(self, pieces: Iterable[bytes]) -> Iterator[np.ndarray]:
        """The ids of the pieces' text, a few pieces at a time: the libraries answer with a
        Python list per piece, many times the size of the text, so few are held at once."""
        group = []
        for piece in pieces:
            group.append(piece.decode("utf-8", "replace"))
            if len(group) == GROUP:
                yield from self._arrays(group)
                group = []
        yield from self._arrays(group)

    def _arrays(self, texts: list[str]) -> Iterator[np.ndarray]:
        if texts:
            yield np.concatenate([np.asarray(ids, dtype=np.int64) for ids in self._encode(texts)])

    def decode(self, ids: list[int]) -> bytes:
        """The text of `ids`, as UTF-8."""
        return self._decode(ids).encode()

    def _encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class Bytes(Tokenizer):
    """Every byte is a token: the text needs no tokenizer and decodes exactly."""

    name, vocab_size, unit = BYTES, 256, "byte"

    def encode_groups(self, pieces: Iterable[bytes]) -> Iterator[np.ndarray]:
        return (np.frombuffer(p, dtype=np.uint8).astype(np.int64) for p in pieces)

    def decode(self, ids: list[int]) -> bytes:
        return bytes(ids)


class HuggingFace(Tokenizer):
    """A `tokenizers.Tokenizer`, kept as its `tokenizer.json`."""

    file = JSON_FILE

    def __init__(self, raw: bytes, name: str):
        from tokenizers import Tokenizer as HF
        try:
            self._tok = HF.from_str(raw.decode("utf-8"))
        except Exception:  # the library's message may quote the file: not echoed
            raise TokenizerError(f"cannot read the tokenizer {name}: it is not a tokenizer.json that the "
                                 f"`tokenizers` library can read") from None
        self.name, self.raw = name, raw
        ids = self._tok.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
        _check_vocab(self.vocab_size, name)

    def _encode(self, texts):
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=False)


class SentencePiece(Tokenizer):
    """A SentencePiece model, kept as its `.model` file (read by the `sentencepiece` package)."""

    file = SENTENCEPIECE_FILE

    def __init__(self, raw: bytes, name: str):
        try:
            import sentencepiece
        except ImportError:
            raise TokenizerError(f"cannot read the SentencePiece model {name}: that needs the `sentencepiece` "
                                 f"package (pip install 'nldsl[data]'); the `tokenizers` library reads only "
                                 f"tokenizer.json files") from None
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=raw)
        except Exception:
            raise TokenizerError(f"cannot read the tokenizer {name}: it is not a SentencePiece model") from None
        self.name, self.raw, self.vocab_size = name, raw, int(self._sp.get_piece_size())
        _check_vocab(self.vocab_size, name)

    def _encode(self, texts):
        return self._sp.encode(texts)

    def _decode(self, ids):
        return self._sp.decode(ids)


BYTE_TOKENIZER = Bytes()


def _check_vocab(vocab: int, name: str) -> None:
    if not 1 <= vocab <= MAX_VOCAB:
        raise TokenizerError(f"the tokenizer {name} has {vocab} tokens; nldsl takes 1 to {MAX_VOCAB:,}")


def from_bytes(raw: bytes, file: str, name: str) -> Tokenizer:
    """The tokenizer whose file `file` (its name in a folder, which says its kind) holds `raw`."""
    return SentencePiece(raw, name) if file == SENTENCEPIECE_FILE else HuggingFace(raw, name)


def from_file(path: str | os.PathLike) -> Tokenizer:
    """A `tokenizer.json` (any file not ending in `.model`) or a SentencePiece `.model`."""
    path = os.path.abspath(path)
    try:
        raw = read_limited(path, MAX_TOKENIZER_BYTES, "tokenizer")
    except FileError as e:
        raise TokenizerError(str(e)) from None
    return from_bytes(raw, SENTENCEPIECE_FILE if path.endswith(".model") else JSON_FILE, path)


def bpe_vocab(spec: str) -> int | None:
    """VOCAB of `bpe:VOCAB`; None for a spec that is not one."""
    if not spec.startswith(BPE):
        return None
    try:
        vocab = int(spec[len(BPE):])
    except ValueError:
        vocab = 0
    if not 256 <= vocab <= MAX_VOCAB:
        raise TokenizerError(f"--tokenizer {spec}: write bpe:VOCAB, VOCAB a whole number from 256 (one token per "
                             f"byte) to {MAX_VOCAB:,}")
    return vocab


def resolve(spec: str | None, training_text=None) -> Tokenizer:
    """The tokenizer `--tokenizer spec` names. `training_text()` gives the pieces of text
    a `bpe:VOCAB` is trained on; it is called only for that."""
    if spec is None or spec == BYTES:
        return BYTE_TOKENIZER
    vocab = bpe_vocab(spec)
    if vocab is None:
        return from_file(spec)
    if training_text is None:
        raise TokenizerError(f"--tokenizer {spec}: there is no text here to train it on")
    return train_bpe(training_text(), vocab)


def train_bpe(pieces: Iterable[bytes], vocab: int) -> HuggingFace:
    """A byte-level BPE of at most `vocab` tokens (fewer if the text has no more merges to
    make): every byte is a token, so any text encodes, and merges are learnt on top."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers
    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator((p.decode("utf-8", "replace") for p in pieces), trainer)
    return HuggingFace(tok.to_str().encode(), f"{BPE}{vocab}")


def pieces(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The text of `chunks` re-cut after the last newline of each (else before a character
    that a chunk splits), so that tokenizing piece by piece cuts no word of a line."""
    carry = b""
    for chunk in chunks:
        text = carry + chunk
        cut = text.rfind(b"\n") + 1 or _char_boundary(text)
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


def chunks_of(raw: bytes) -> Iterator[bytes]:
    return (raw[i:i + PIECE] for i in range(0, len(raw), PIECE))


def _char_boundary(text: bytes) -> int:
    """Where the last UTF-8 character of `text` starts if it may be incomplete, else its end."""
    i = len(text) - 1
    while i > max(len(text) - 4, 0) and text[i] & 0xC0 == 0x80:
        i -= 1
    return i if text and text[i] >= 0xC0 else len(text)
