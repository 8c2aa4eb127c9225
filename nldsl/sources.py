"""What `--data` names, opened as a corpus: `pydoc`, a text file (nldsl/data.py), a
folder made by `nldsl data prepare` (nldsl/shards.py), or a data set made here by name
(`mqar`, nldsl/synthetic.py). Every command and task that takes `--data` opens it here,
so the kinds of data need not know of each other."""
from __future__ import annotations

import os

from .data import PYDOC, Corpus, DataError, read_bytes, split
from .shards import PreparedCorpus
from .synthetic import MADE
from .tokenizer import Tokenizer, bpe_vocab, chunks_of, pieces, resolve


def load(data: str, tokenizer: Tokenizer | str | None = None):
    """The corpus `data` names. `tokenizer` is a tokenizer or what `--tokenizer` names
    (a `bpe:VOCAB` is trained here, on the training part); None is bytes, or a prepared
    folder's own, which any other given must equal."""
    if data in MADE:
        return MADE[data](tokenizer)
    if data != PYDOC and os.path.isdir(data):
        if isinstance(tokenizer, str) and bpe_vocab(tokenizer):
            raise DataError(f"--tokenizer {tokenizer}: the data {data} was tokenized when it was prepared; "
                            f"leave --tokenizer out to use its tokenizer")
        return PreparedCorpus(data, resolve(tokenizer) if isinstance(tokenizer, str) else tokenizer)
    raw = read_bytes(data)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = resolve(tokenizer, lambda: pieces(chunks_of(split(raw)[0])))
    return Corpus(raw, data, tokenizer)


def data_key(data: str) -> str:
    """How a run records its data: `pydoc`, or the file's (or prepared folder's) absolute
    path, so that the run's folder can be evaluated from any directory. The name of a
    data set made here (`mqar`) is kept as it is, like `pydoc`."""
    return data if data == PYDOC or data in MADE else os.path.abspath(data)
