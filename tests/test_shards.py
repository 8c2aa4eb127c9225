"""Prepared data (nldsl/shards.py): `nldsl data prepare` over text files, folders, globs,
.jsonl and .parquet into token shards with a manifest; training that streams windows
from them by memory map, per rank, never reading the corpus whole; and every broken
folder as one `error:` line.

The text is Python's help topics (pydoc_data) and what the tests write; runs train
tests/test_train.py's double of `nldsl.compile`.
"""
import hashlib
import json
import os
import shutil
import tracemalloc

import numpy as np
import pytest
import torch

from nldsl import shards, sources
from nldsl import train as tr
from nldsl.data import Corpus, read_bytes
from test_train import SPEC, TINY, double, main, one_error_line, run  # noqa: F401 (fixture)

TEXT = read_bytes("pydoc")
MiB = 1 << 20


def doc(text: bytes) -> bytes:
    """A document as prepared data holds it: ending with a newline."""
    return text if text.endswith(b"\n") else text + b"\n"


def prepared(tmp_path, name="prep", *inputs, **kw):
    if not inputs:
        (tmp_path / "pydoc.txt").write_bytes(TEXT)
        inputs = (str(tmp_path / "pydoc.txt"),)
    shards.prepare([str(i) for i in inputs], tmp_path / name, log=lambda *_: None, **kw)
    return tmp_path / name


def tokens_of(folder) -> np.ndarray:
    m = json.loads((folder / "manifest.json").read_text())
    return np.concatenate([np.fromfile(folder / s["name"], dtype=m["dtype"]) for s in m["shards"]])


def test_prepare_reads_text_folders_globs_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = tmp_path / "src"
    (src / "deep" / "deeper").mkdir(parents=True)
    (src / "b.txt").write_bytes(b"second file, no newline")
    (src / "deep" / "deeper" / "a.md").write_bytes("first file ✓\n".encode())
    (src / "deep" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")  # not text: left out
    (src / ".hidden.txt").write_bytes(b"hidden")  # left out
    (tmp_path / "one.log").write_bytes(b"globbed 1\n")
    (tmp_path / "two.log").write_bytes(b"globbed 2\n")
    with open(tmp_path / "records.jsonl", "w") as f:
        f.write(json.dumps({"text": "record one", "id": 1}) + "\n\n" + json.dumps({"text": "récord two\n"}) + "\n")
    pq.write_table(pa.table({"body": ["row one", None, "row three"], "n": [1, 2, 3]}), tmp_path / "rows.parquet")
    out = prepared(tmp_path, "prep", src, tmp_path / "*.log", tmp_path / "records.jsonl", src / "b.txt",
                   shard_tokens=16, heldout=0.25)
    parquet = prepared(tmp_path, "prep2", tmp_path / "rows.parquet", field="body", heldout=0.25)
    expected = b"".join(doc(t) for t in (b"second file, no newline", "first file ✓\n".encode(), b"globbed 1\n",
                                         b"globbed 2\n", b"record one", "récord two\n".encode()))
    assert bytes(tokens_of(out).astype(np.uint8)) == expected  # b.txt once, though named twice
    assert bytes(tokens_of(parquet).astype(np.uint8)) == b"row one\nrow three\n"
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "nldsl-data/1" and m["dtype"] == "uint16" and m["tokens"] == len(expected)
    assert m["heldout"] == {"fraction": 0.25, "start": len(expected) - len(expected) // 4}
    assert m["tokenizer"] == {"name": "bytes", "vocab": 256, "file": None, "sha256": None}
    assert m["inputs"] == {"files": 5, "documents": 6, "bytes": len(expected) - 2}  # 2 newlines added
    assert [s["tokens"] for s in m["shards"]] == [16] * (len(expected) // 16) + [len(expected) % 16]
    for s in m["shards"]:
        assert s["sha256"] == hashlib.sha256((out / s["name"]).read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [s["name"] for s in m["shards"]]


def test_shards_give_the_batches_the_text_file_gives(tmp_path):
    """Bytes prepared in shards of 1000 tokens read as the same corpus as the file in memory:
    the same split, batches (windows crossing shards), held-out windows and prompt."""
    folder = prepared(tmp_path, shard_tokens=1000)
    streamed, whole = sources.load(str(folder)), Corpus(doc(TEXT), "pydoc")
    assert isinstance(streamed, shards.PreparedCorpus) and isinstance(streamed.train, shards.ShardedTokens)
    assert (len(streamed.train), len(streamed.heldout)) == (len(whole.train), len(whole.heldout))
    for step in range(1, 6):
        for a, b in zip(streamed.batch(3, step, 8, 64), whole.batch(3, step, 8, 64)):
            assert torch.equal(a, b)
    for a, b in zip(streamed.heldout_windows(5, 64), whole.heldout_windows(5, 64)):
        assert torch.equal(a, b)
    assert streamed.prompt() == whole.prompt()
    assert streamed.sha256 == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


def test_each_rank_takes_its_share_of_the_steps_windows():
    corpus = Corpus(TEXT, "pydoc")
    x, y = corpus.batch(0, 7, 6, 32, world_size=1)
    parts = [corpus.batch(0, 7, 3, 32, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert not torch.equal(parts[0][0], parts[1][0])
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 ranks"):
        corpus.batch(0, 7, 3, 32, rank=2, world_size=2)


CAP = 4 * MiB  # what the training process may allocate while it streams a corpus four times as large


def test_training_streams_a_corpus_larger_than_its_memory_cap(double, tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        while f.tell() < 2 * CAP:
            f.write(TEXT)
    folder = prepared(tmp_path, "big", big, shard_tokens=1_500_000)
    corpus_bytes = sum(p.stat().st_size for p in folder.glob("shard-*.bin"))
    assert corpus_bytes >= 4 * CAP and len(list(folder.glob("shard-*.bin"))) > 1
    run(tmp_path / "warm", 1, data=str(prepared(tmp_path, "small")))  # imports and caches, once: not the data's
    tracemalloc.start()
    try:
        history = run(tmp_path / "run", 3, data=str(folder), sample=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(history.train) == 3
    assert peak < CAP, f"the training allocated {peak:,} bytes at its peak"
    ckpt = tr.load_checkpoint(tmp_path / "run")
    assert ckpt.data == str(folder)
    assert ckpt.data_sha256 == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


def test_a_prepared_run_resumes_exactly_and_evaluates(double, tmp_path, capsys):
    folder = prepared(tmp_path, shard_tokens=50_000)
    straight = run(tmp_path / "straight", 4, data=str(folder))
    run(tmp_path / "split", 2, data=str(folder))
    resumed = run(tmp_path / "split", 4, resume=True)
    assert resumed.train == straight.train
    rc, printed, err = main(capsys, "eval", "--ckpt", tmp_path / "split")
    assert rc == 0 and printed.endswith(f"held-out {folder}: {tr.describe(straight.heldout[4])}\n"), err


def test_a_bpe_folder_brings_its_tokenizer_to_the_run(double, tmp_path, capsys):
    folder = prepared(tmp_path, tokenizer="bpe:300")
    m = json.loads((folder / "manifest.json").read_text())
    tok = (folder / "tokenizer.json").read_bytes()
    assert m["tokenizer"] == {"name": "bpe:300", "vocab": 300, "file": "tokenizer.json",
                              "sha256": hashlib.sha256(tok).hexdigest()}
    assert m["tokens"] < len(TEXT) * 0.8 and tokens_of(folder).max() < 300  # 44 merges
    spec = tmp_path / "novocab.nl"
    spec.write_text(SPEC.read_text().replace("  vocab 256\n", ""))
    tr.train(spec, data=str(folder), steps=2, out_dir=tmp_path / "run", overrides=TINY, eval_batches=2, sample=0,
             quiet=True)
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == tok
    assert tr.load_run(tmp_path / "run")[0].settings["vocab"] == 300
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    one_error_line(*main(capsys, "train", spec, "--data", folder, "--tokenizer", "bpe:300", "--out", tmp_path / "x",
                         *sets)[::2], "was tokenized when it was prepared; leave --tokenizer out")
    one_error_line(*main(capsys, "train", spec, "--data", folder, "--tokenizer", "bytes", "--out", tmp_path / "x",
                         *sets)[::2], "was prepared with the tokenizer bpe:300, not with this run's (bytes)")
    one_error_line(*main(capsys, "eval", "--ckpt", tmp_path / "run", "--data", prepared(tmp_path, "bytes"))[::2],
                   "was prepared with the tokenizer bytes, not with this run's (bpe:300)")


# --- bad input: one line, the cause named, nothing of the data echoed -----------------

SECRET = "PRIVATE-CONTENT-42"


def broken(tmp_path, folder, how) -> str:
    """A copy of the prepared `folder`, broken `how`; returns its path."""
    copy = tmp_path / f"broken-{how}"
    shutil.copytree(folder, copy)
    m = json.loads((copy / "manifest.json").read_text())
    first = copy / m["shards"][0]["name"]
    if how == "missing":
        first.unlink()
    elif how == "flipped":
        data = bytearray(first.read_bytes())
        data[10] ^= 1
        first.write_bytes(data)
    elif how == "short":
        first.write_bytes(first.read_bytes()[:-2])
    elif how == "not json":
        (copy / "manifest.json").write_text(SECRET + "{")
    elif how == "escaping name":
        m["shards"][0]["name"] = "../" + SECRET
    elif how == "bad count":
        m["shards"][0]["tokens"] = SECRET
    elif how == "no manifest":
        (copy / "manifest.json").unlink()
    if how in ("escaping name", "bad count"):
        (copy / "manifest.json").write_text(json.dumps(m))
    return str(copy)


@pytest.mark.parametrize("how, expected", [
    ("missing", "listed in"),
    ("flipped", "does not match its sha256 in"),
    ("short", "holds 99,998 bytes, but"),
    ("not json", "is not JSON"),
    ("escaping name", "is malformed: `shards[0].name` is not the name of a file in the folder"),
    ("bad count", "is malformed: `shards[0].tokens` is not a whole number of at least 1"),
    ("no manifest", "is not a regular file (a folder) nor prepared data: it has no manifest.json"),
])
def test_a_broken_folder_is_one_error_line(double, tmp_path, capsys, how, expected):
    folder = broken(tmp_path, prepared(tmp_path, shard_tokens=50_000), how)
    rc, _, err = main(capsys, "train", SPEC, "--data", folder, "--out", tmp_path / "run", "--quiet")
    one_error_line(rc, err, expected)
    assert SECRET not in err and not (tmp_path / "run").exists()


def test_a_changed_tokenizer_file_in_a_folder(tmp_path):
    folder = prepared(tmp_path, tokenizer="bpe:280")
    (folder / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes() + b" ")
    with pytest.raises(tr.DataError, match="tokenizer.json does not match the sha256 in .*manifest.json"):
        sources.load(str(folder))


def test_bad_inputs_to_prepare_are_one_error_line(tmp_path, capsys, monkeypatch):
    def fails(*args, expected):
        rc, _, err = main(capsys, "data", "prepare", *args)
        one_error_line(rc, err, expected)
        assert SECRET not in err

    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "ok.txt").write_bytes(b"some text\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{" + SECRET + "\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"body": SECRET}) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    out = tmp_path / "out"
    fails(tmp_path / "empty.txt", "-o", out, expected="the inputs hold no text")
    fails(tmp_path / "nope.txt", "-o", out, expected="cannot read " + str(tmp_path / "nope.txt"))
    fails(tmp_path / "*.none", "-o", out, expected="no file matches")
    fails(tmp_path / "ok.txt", "-o", tmp_path / "full", expected="is not an empty folder")
    fails(tmp_path / "bad.jsonl", "-o", out, expected="bad.jsonl:2: not a JSON object")
    fails(tmp_path / "other.jsonl", "-o", out, expected="other.jsonl:1: the record has no text field `text`")
    fails(tmp_path / "ok.txt", "-o", out, "--heldout", "1.5", expected="--heldout 1.5: give the fraction")
    fails(tmp_path / "ok.txt", "-o", out, "--tokenizer", tmp_path / "tok.json", expected="cannot read tokenizer")
    fails(tmp_path / "ok.txt", "-o", out, "--heldout", "0.01", expected="too few to hold out 0.01")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": [SECRET]}), tmp_path / "rows.parquet")
    fails(tmp_path / "rows.parquet", "-o", out, expected="rows.parquet has no column `text` (--field names")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + SECRET.encode() + b"PAR1")
    fails(tmp_path / "bad.parquet", "-o", out, expected="cannot read " + str(tmp_path / "bad.parquet") + " as Parquet")
    assert not out.exists()  # a failed preparation leaves nothing
    assert not os.environ.get("HF_HUB_OFFLINE")  # offline while it read, as before afterwards
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if the `data` extra were not installed
    fails(tmp_path / "rows.parquet", "-o", out, expected="needs the `datasets` package: pip install 'nldsl[data]'")


def test_prepare_from_the_command_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(TEXT[:5000])
    rc, printed, err = main(capsys, "data", "prepare", tmp_path / "a.txt", "-o", tmp_path / "p", "--shard-tokens",
                            2000, "--heldout", "0.2")
    assert rc == 0, err
    assert printed == (f"wrote {tmp_path / 'p'}/: 5,001 tokens (4,001 to train on, 1,000 held out) in 3 shard(s) "
                       f"of uint16, from 1 document(s) of 1 file(s); tokenizer bytes (256 tokens)\n")
