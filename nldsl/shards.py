"""Token shards: a corpus tokenized once by `nldsl data prepare`, read by training through memory maps.

A prepared folder holds `shard-00000.bin`, `shard-00001.bin`, … (the token ids back to
back, uint16 where the vocab allows, else uint32, native byte order), the tokenizer's
file unless it is bytes, and `manifest.json`, written last: the shards with their
token counts and sha256, the dtype, the tokenizer, and where the held-out part starts
(the last `--heldout` fraction of the tokens). Training draws windows from the shards
through `numpy.memmap`, so only the windows it reads are ever in memory.

A prepared folder may come from someone else: the manifest is JSON read bounded and
checked field by field, shard names are plain file names inside the folder, every
shard is hashed against the manifest (and its ids checked against the vocab) before
it is used, and nothing of a data file or the manifest is executed or echoed.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import stat
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .data import HELDOUT, Corpus, DataError
from .files import FileError, atomic_write, read_limited, reason
from .tokenizer import (BYTE_TOKENIZER, JSON_FILE, MAX_TOKENIZER_BYTES, PIECE, SENTENCEPIECE_FILE, Tokenizer, chunks_of,
                        from_bytes, pieces, resolve)

MANIFEST = "manifest.json"
FORMAT = "nldsl-data/1"
SHARD_TOKENS = 100_000_000  # tokens per shard unless --shard-tokens says otherwise
MAX_MANIFEST_BYTES = 1 << 20  # read whole: ~10,000 shards, 1T tokens at the default shard size
SNIFF = 8192  # bytes of a file in a folder read to tell text from binary
DTYPES = ("uint16", "uint32")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- reading ------------------------------------------------------------------------

class ShardedTokens:
    """Tokens [start, stop) of a prepared folder, across its shards' memory maps. Indexing
    with a tensor of positions reads those positions only; a window may span two shards."""

    def __init__(self, maps: list[np.ndarray], start: int, stop: int):
        self.maps, self.start, self.stop = maps, start, stop
        self.offsets = np.cumsum([0] + [len(m) for m in maps[:-1]])  # where each shard starts

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        pos = index.reshape(-1).numpy() + self.start
        if pos.size and not (self.start <= pos.min() and pos.max() < self.stop):
            raise IndexError(f"token positions beyond this part's {len(self)} tokens")
        shard = np.searchsorted(self.offsets, pos, side="right") - 1
        out = np.empty(pos.shape, np.int64)
        for s in np.unique(shard):
            here = shard == s
            out[here] = self.maps[s][pos[here] - self.offsets[s]]
        return torch.from_numpy(out).view(index.shape)


class PreparedCorpus(Corpus):
    """A folder made by `nldsl data prepare`, checked against its manifest and mapped, not read.
    `tokenizer`, where given (a run's), must be the one the folder was prepared with."""

    def __init__(self, folder: str | os.PathLike, tokenizer: Tokenizer | None = None):
        folder = Path(folder)
        path = folder / MANIFEST
        if not os.path.lexists(path):
            raise DataError(f"data {folder} is not a regular file (a folder) nor prepared data: it has no "
                            f"{MANIFEST} (`nldsl data prepare` writes one)")
        try:
            raw = read_limited(path, MAX_MANIFEST_BYTES, "manifest")
        except FileError as e:
            raise DataError(str(e)) from None
        manifest = _checked(raw, path)
        own = _folder_tokenizer(folder, manifest["tokenizer"], path)
        if tokenizer is not None and tokenizer.sha256 != own.sha256:
            raise DataError(f"the data {folder} was prepared with the tokenizer {own.name}, not with this run's "
                            f"({tokenizer.name}): prepare it again with the run's tokenizer")
        self.name, self.tokenizer = str(folder), tokenizer or own
        self.sha256 = hashlib.sha256(raw).hexdigest()  # the manifest holds every shard's sha256
        maps = [_open_shard(folder / s["name"], s, manifest["dtype"], own.vocab_size, path)
                for s in manifest["shards"]]
        start, total = manifest["heldout"]["start"], manifest["tokens"]
        self.train, self.heldout = ShardedTokens(maps, 0, start), ShardedTokens(maps, start, total)


def _checked(raw: bytes, path: Path) -> dict:
    """The manifest's content, every field checked: it is data from anywhere."""
    def bad(key: str, why: str):
        raise DataError(f"the manifest {path} is malformed: `{key}` {why}")

    def count(value, key: str, least: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            bad(key, f"is not a whole number of at least {least}")
        return value

    try:
        m = json.loads(raw)
    except (ValueError, RecursionError):
        raise DataError(f"the manifest {path} is not JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path} is not a manifest of `nldsl data prepare` (format {FORMAT})")
    for key, kind in (("shards", list), ("heldout", dict), ("tokenizer", dict)):
        if not isinstance(m.get(key), kind):
            bad(key, f"is not a {'list' if kind is list else 'JSON object'}")
    if m.get("dtype") not in DTYPES:
        bad("dtype", f"is not one of {', '.join(DTYPES)}")
    if not m["shards"]:
        bad("shards", "is empty")
    for i, s in enumerate(m["shards"]):
        key = f"shards[{i}]"
        if not isinstance(s, dict):
            bad(key, "is not a JSON object")
        name = s.get("name")
        if not isinstance(name, str) or not _plain_name(name):
            bad(f"{key}.name", "is not the name of a file in the folder")
        count(s.get("tokens"), f"{key}.tokens", 1)
        if not isinstance(s.get("sha256"), str) or not _SHA256.fullmatch(s["sha256"]):
            bad(f"{key}.sha256", "is not a sha256")
    total = count(m.get("tokens"), "tokens", 2)
    if total != sum(s["tokens"] for s in m["shards"]):
        bad("tokens", "is not the sum of the shards' tokens")
    if not 1 <= count(m["heldout"].get("start"), "heldout.start") < total:
        bad("heldout.start", "does not leave tokens on both sides")
    t = m["tokenizer"]
    if not isinstance(t.get("name"), str) or not t["name"]:
        bad("tokenizer.name", "is not a name")
    vocab = count(t.get("vocab"), "tokenizer.vocab", 1)
    if m["dtype"] == "uint16" and vocab > 1 << 16:
        bad("dtype", f"uint16 cannot hold the ids of {vocab} tokens")
    if t.get("file") not in (None, JSON_FILE, SENTENCEPIECE_FILE):
        bad("tokenizer.file", f"is not {JSON_FILE}, {SENTENCEPIECE_FILE} or null")
    if t.get("file") is not None and not (isinstance(t.get("sha256"), str) and _SHA256.fullmatch(t["sha256"])):
        bad("tokenizer.sha256", "is not a sha256")
    return m


def _plain_name(name: str) -> bool:
    return name == os.path.basename(name) and "\\" not in name and "\0" not in name and not name.startswith(".")


def _folder_tokenizer(folder: Path, t: dict, manifest: Path) -> Tokenizer:
    """The tokenizer a prepared folder names, its file checked against the manifest."""
    if t["file"] is None:
        if t["vocab"] != BYTE_TOKENIZER.vocab_size:
            raise DataError(f"the manifest {manifest} is malformed: `tokenizer.vocab` is not 256, for bytes")
        return BYTE_TOKENIZER
    path = folder / t["file"]
    try:
        raw = read_limited(path, MAX_TOKENIZER_BYTES, "tokenizer")
    except FileError as e:
        raise DataError(str(e)) from None
    if hashlib.sha256(raw).hexdigest() != t["sha256"]:
        raise DataError(f"the tokenizer {path} does not match the sha256 in {manifest}: it changed after "
                        f"`nldsl data prepare` wrote it")
    tok = from_bytes(raw, t["file"], t["name"])
    if tok.vocab_size != t["vocab"]:
        raise DataError(f"the manifest {manifest} is malformed: `tokenizer.vocab` is not the tokenizer's "
                        f"{tok.vocab_size}")
    return tok


def _open_shard(path: Path, shard: dict, dtype: str, vocab: int, manifest: Path) -> np.ndarray:
    """The shard mapped into memory, once its size, sha256 and ids are found as the manifest
    says: it is read once in pieces to hash it, and mapped from the descriptor it was hashed
    through."""
    if not os.path.lexists(path):
        raise DataError(f"the shard {path} listed in {manifest} is missing")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DataError(f"cannot read the shard {path}: {reason(e)}") from None
    with os.fdopen(fd, "rb", buffering=0) as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"the shard {path} is not a regular file")
        width = np.dtype(dtype).itemsize
        if info.st_size != shard["tokens"] * width:
            raise DataError(f"the shard {path} holds {info.st_size:,} bytes, but {manifest} lists "
                            f"{shard['tokens']:,} tokens of {width} bytes")
        digest, top = hashlib.sha256(), 0
        try:
            while chunk := fh.read(PIECE):
                digest.update(chunk)
                top = max(top, int(np.frombuffer(chunk, dtype, len(chunk) // width).max(initial=0)))
        except OSError as e:
            raise DataError(f"cannot read the shard {path}: {reason(e)}") from None
        if digest.hexdigest() != shard["sha256"]:
            raise DataError(f"the shard {path} does not match its sha256 in {manifest}: it changed after "
                            f"`nldsl data prepare` wrote it")
        if top >= vocab:
            raise DataError(f"the shard {path} holds the token id {top}, beyond the tokenizer's {vocab} tokens")
        return np.memmap(fh, dtype=dtype, mode="r", shape=(shard["tokens"],))


# --- preparing ----------------------------------------------------------------------

def prepare(inputs: list[str], out: str | os.PathLike, tokenizer: str | None = None, heldout: float = HELDOUT,
            shard_tokens: int = SHARD_TOKENS, field: str = "text", log=print) -> dict:
    """Tokenize `inputs` (text files, folders, globs, .jsonl, .parquet) into token shards in
    `out`, holding out the last `heldout` fraction of the tokens; returns the manifest.
    A `bpe:VOCAB` tokenizer is trained on all the inputs first (a pass of its own)."""
    if not 0 < heldout < 1:
        raise DataError(f"--heldout {heldout}: give the fraction of the tokens to hold out, between 0 and 1")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens {shard_tokens}: give at least 1 token per shard")
    out = Path(out)
    if os.path.lexists(out) and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"-o {out} is not an empty folder: prepared data goes into a new one")
    files = _expand(inputs)
    tok = resolve(tokenizer, lambda: pieces(_chunks(files, field, Counter())))
    seen = Counter()
    made = not os.path.lexists(out)
    writer = _ShardWriter(out, tok.dtype, shard_tokens)
    try:
        for ids in tok.encode_groups(pieces(_chunks(files, field, seen))):
            writer.write(ids)
        shards = writer.close()
        total = sum(s["tokens"] for s in shards)
        start = total - int(total * heldout)
        if not 1 <= start < total:
            raise DataError(f"the inputs hold {total} token(s): too few to hold out {heldout:g} of them"
                            if total else "the inputs hold no text")
        if tok.file is not None:
            atomic_write(out / tok.file, tok.raw)
        manifest = {"format": FORMAT, "dtype": tok.dtype.name, "tokens": total,
                    "heldout": {"fraction": heldout, "start": start},
                    "tokenizer": {"name": tok.name, "vocab": tok.vocab_size, "file": tok.file, "sha256": tok.sha256},
                    "shards": shards, "inputs": {"files": len(files), **seen}}
        atomic_write(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    except BaseException:
        writer.remove(made)
        raise
    log(f"wrote {out}/: {total:,} tokens ({start:,} to train on, {total - start:,} held out) in {len(shards)} "
        f"shard(s) of {tok.dtype.name}, from {seen['documents']:,} document(s) of {len(files)} file(s); "
        f"tokenizer {tok.name} ({tok.vocab_size} tokens)")
    return manifest


class _ShardWriter:
    """Token ids into shard files of `limit` tokens each, hashed as they are written."""

    def __init__(self, out: Path, dtype: np.dtype, limit: int):
        self.out, self.dtype, self.limit = out, dtype, limit
        self.shards: list[dict] = []
        self.fh, self.name, self.digest, self.count = None, "", None, 0

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype)
        while len(ids):
            if self.fh is None:
                self._open()
            room = self.limit - self.count
            part, ids = ids[:room], ids[room:]
            data = part.tobytes()
            self._do(lambda: self.fh.write(data))
            self.digest.update(data)
            self.count += len(part)
            if self.count == self.limit:
                self._finish()

    def close(self) -> list[dict]:
        if self.fh is not None:
            self._finish()
        return self.shards

    def remove(self, folder_too: bool) -> None:
        """Undo a preparation that failed: its shards, and the folder if it made it."""
        if self.fh is not None:
            self.fh.close()
        ours = [s["name"] for s in self.shards] + [self.name] * (self.fh is not None)
        for name in ours + [JSON_FILE, SENTENCEPIECE_FILE, MANIFEST]:  # the folder was empty: these are ours
            (self.out / name).unlink(missing_ok=True)
        if folder_too:
            try:
                self.out.rmdir()
            except OSError:
                pass

    def _open(self) -> None:
        self.name = f"shard-{len(self.shards):05d}.bin"
        self._do(lambda: self.out.mkdir(parents=True, exist_ok=True))
        self.fh = self._do(lambda: open(self.out / self.name, "xb"))
        self.digest, self.count = hashlib.sha256(), 0

    def _finish(self) -> None:
        self._do(lambda: (self.fh.flush(), os.fsync(self.fh.fileno())))
        self.fh.close()
        self.fh = None
        self.shards.append({"name": self.name, "tokens": self.count, "sha256": self.digest.hexdigest()})

    def _do(self, fn):
        try:
            return fn()
        except OSError as e:
            raise FileError(f"cannot write {self.out / self.name}: {reason(e)}") from None


def _expand(inputs: list[str]) -> list[Path]:
    """The files the inputs name, in order, each once: a file as given, a folder's text,
    .jsonl and .parquet files (recursively, sorted, hidden ones left out), a glob's
    matches (folders among them expanded)."""
    found: list[Path] = []
    for item in inputs:
        if os.path.isdir(item):
            found += _walk(Path(item))
        elif os.path.lexists(item):
            found.append(Path(item))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"no file matches {item}")
            for m in map(Path, matches):
                found += _walk(m) if m.is_dir() else [m] if _wanted(m) else []
        else:
            raise DataError(f"cannot read {item}: No such file or folder")
    first: dict[str, Path] = {}
    for path in found:
        first.setdefault(os.path.realpath(path), path)
    if not first:
        raise DataError(f"no text file in {' '.join(inputs)}")
    return list(first.values())


def _walk(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(root) / name
            if _wanted(path):
                out.append(path)
    return out


def _wanted(path: Path) -> bool:
    """Whether a file that a folder or a glob holds is read: .jsonl, .parquet, and text."""
    return _kind(path) != "text" or _is_text(path)


def _kind(path: Path) -> str:
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix.lower(), "text")


def _is_text(path: Path) -> bool:
    """A regular file whose first bytes are UTF-8 without a NUL (a folder's images and
    archives are left out)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(SNIFF)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut by the end of what was read is still text
        return len(head) == SNIFF and e.start >= SNIFF - 3 and e.end == SNIFF
    return True


def _chunks(files: list[Path], field: str, seen: Counter) -> Iterator[bytes]:
    """The inputs' text: each document (a text file, a JSON line's `field`, a Parquet row's)
    ending with a newline, one added where it has none. `seen` counts documents and bytes."""
    for path in files:
        kind = _kind(path)
        docs = _texts_of_file(path) if kind == "text" else _jsonl(path, field) if kind == "jsonl" \
            else _parquet(path, field)
        for doc in docs:
            last = b""
            for chunk in doc:
                if chunk:
                    seen["bytes"] += len(chunk)
                    last = chunk
                    yield chunk
            if last:
                seen["documents"] += 1
                if not last.endswith(b"\n"):
                    yield b"\n"


def _open_regular(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DataError(f"cannot read {path}: {reason(e)}") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise DataError(f"{path} is not a regular file")
    return fh


def _texts_of_file(path: Path) -> Iterator[Iterator[bytes]]:
    """A text file is one document, read a piece at a time."""
    def read() -> Iterator[bytes]:
        with _open_regular(path) as fh:
            try:
                while chunk := fh.read(PIECE):
                    yield chunk
            except OSError as e:
                raise DataError(f"cannot read {path}: {reason(e)}") from None
    yield read()


def _jsonl(path: Path, field: str) -> Iterator[Iterator[bytes]]:
    """Each line a JSON object whose `field` is a document; blank lines are skipped."""
    with _open_regular(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise DataError(f"{path}:{n}: not a JSON object") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{n}: the record has no text field `{field}` (--field names it)")
            yield chunks_of(text.encode("utf-8", "replace"))


def _parquet(path: Path, field: str) -> Iterator[Iterator[bytes]]:
    """Each row's `field` a document, read by the `datasets` library from the local file
    alone, a batch of rows at a time."""
    with _open_regular(path):  # a regular file, as every input
        pass
    with _offline_datasets(path) as datasets, tempfile.TemporaryDirectory(prefix="nldsl-datasets-") as cache:
        try:  # the library's messages may quote the file: only their kind is shown
            rows = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True,
                                         cache_dir=cache)  # a cache of its own: nothing left in ~/.cache
            if field not in (rows.features or {}):
                raise DataError(f"{path} has no column `{field}` (--field names the column of text)")
            for row in rows:
                text = row[field]
                if text is not None and not isinstance(text, str):
                    raise DataError(f"{path}: the column `{field}` does not hold text")
                if text is not None:
                    yield chunks_of(text.encode("utf-8", "replace"))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {path} as Parquet ({type(e).__name__})") from None


OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@contextlib.contextmanager
def _offline_datasets(path: Path):
    """The `datasets` library, offline (it never reaches the network) and silent (its log
    would quote the file) while it reads; everything is as it was afterwards."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(dict.fromkeys(OFFLINE, "1"))  # what the libraries read when first imported
    try:
        import datasets
        from huggingface_hub import constants
    except ImportError:
        raise DataError(f"reading {path} needs the `datasets` package: pip install 'nldsl[data]'") from None
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (constants, "HF_HUB_OFFLINE")]
    before = [getattr(o, name) for o, name in flags]
    verbosity, bars = datasets.logging.get_verbosity(), not datasets.are_progress_bars_disabled()
    for o, name in flags:
        setattr(o, name, True)
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        for (o, name), value in zip(flags, before):
            setattr(o, name, value)
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
