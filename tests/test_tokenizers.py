"""Tokenizers (nldsl/tokenizer.py) and runs that use them: bytes, a BPE trained on the
data, a tokenizer.json or SentencePiece file; the spec's vocab following the tokenizer,
and a mismatch as a located error; train, eval and generate on a BPE run.

The text is Python's help topics (pydoc_data), nothing is downloaded. Most runs train
tests/test_train.py's double of `nldsl.compile`; one runs the real backend.
"""
import hashlib
import sys

import numpy as np
import pytest
import torch

from nldsl import tokenizer as tk
from nldsl import run as runs
from nldsl import train as tr
from nldsl.compiler.diagnostics import NLError
from nldsl.data import Corpus, read_bytes, split
from test_train import SPEC, TINY, double, main, one_error_line, run  # noqa: F401 (fixture)

VOCAB_LINE = next(i for i, line in enumerate(SPEC.read_text().splitlines(), 1) if line.startswith("  vocab "))

TEXT = read_bytes("pydoc")
SAMPLE = "Déjà vu: naïve café, 日本語 and emoji 🙂\n  indented\tline\n".encode()


@pytest.fixture(scope="module")
def bpe() -> tk.Tokenizer:
    return tk.train_bpe(tk.pieces(tk.chunks_of(split(TEXT)[0])), 400)


def no_vocab(tmp_path) -> str:
    """examples/transformer.nl without its `vocab` line: the tokenizer's size is taken."""
    spec = tmp_path / "novocab.nl"
    spec.write_text(SPEC.read_text().replace("  vocab 256\n", ""))
    return str(spec)


def test_bytes_are_their_own_tokens():
    t = tk.resolve(None)
    assert t is tk.resolve("bytes") is tk.BYTE_TOKENIZER and t.vocab_size == 256 and t.unit == "byte"
    ids = t.encode([SAMPLE[:7], SAMPLE[7:]])
    assert ids.tolist() == list(SAMPLE) and t.decode(ids.tolist()) == SAMPLE
    assert t.file is None and t.sha256 is None


def test_bpe_is_trained_on_the_text_deterministically_and_round_trips(bpe):
    assert bpe.name == "bpe:400" and bpe.vocab_size == 400 and bpe.unit == "token" and bpe.file == "tokenizer.json"
    again = tk.train_bpe(tk.pieces(tk.chunks_of(split(TEXT)[0])), 400)
    assert again.raw == bpe.raw  # the same text trains the same tokenizer
    ids = bpe.encode([SAMPLE])
    assert bpe.decode(ids.tolist()) == SAMPLE  # byte-level: any text, exactly back
    assert 0 <= ids.min() and ids.max() < 400
    english = TEXT[:20000]
    assert len(bpe.encode([english])) < 0.6 * len(english)  # 144 merges learnt: fewer tokens than bytes


def test_text_is_cut_after_newlines_and_never_inside_a_character():
    text = ("a line\n" * 5000 + "é" * 300_000 + "\nend").encode()  # lines, then 600 KB without a newline
    chunks = [text[i:i + 65537] for i in range(0, len(text), 65537)]  # odd sizes split the é's
    cut = list(tk.pieces(chunks))
    assert b"".join(cut) == text
    for piece in cut:
        piece.decode("utf-8")  # raises if a character was split
    assert cut[0] == b"a line\n" * 5000  # the first chunk's lines, without the é's that follow them


def test_a_tokenizer_file_and_what_cannot_be_read(bpe, tmp_path):
    path = tmp_path / "tok.json"
    path.write_bytes(bpe.raw)
    t = tk.resolve(str(path))
    assert t.vocab_size == 400 and t.name == str(path) and t.sha256 == bpe.sha256
    assert t.encode([SAMPLE]).tolist() == bpe.encode([SAMPLE]).tolist()
    secret = "PRIVATE-CONTENT-42"
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "%s"}}' % secret)
    with pytest.raises(tk.TokenizerError, match="it is not a tokenizer.json that the `tokenizers` library") as e:
        tk.resolve(str(bad))
    assert secret not in str(e.value)
    with pytest.raises(tk.TokenizerError, match="cannot read tokenizer .*nope.json: No such file"):
        tk.resolve(str(tmp_path / "nope.json"))
    with pytest.raises(tk.TokenizerError, match="is not a regular file"):
        tk.resolve(str(tmp_path))
    for spec in ("bpe:12", "bpe:x", "bpe:"):
        with pytest.raises(tk.TokenizerError, match="write bpe:VOCAB"):
            tk.resolve(spec, lambda: [TEXT])


def test_a_sentencepiece_model(tmp_path, monkeypatch):
    import io
    import sentencepiece
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.decode().splitlines()[:3000]),
                                             model_writer=model, vocab_size=300, minloglevel=2)
    path = tmp_path / "sp.model"
    path.write_bytes(model.getvalue())
    t = tk.resolve(str(path))
    assert t.vocab_size == 300 and t.file == "tokenizer.model"
    ids = t.encode([b"The quick brown fox"])
    assert 0 < len(ids) < 19 and t.decode(ids.tolist()) == b"The quick brown fox"
    (tmp_path / "junk.model").write_bytes(b"\x00not a model")
    with pytest.raises(tk.TokenizerError, match="is not a SentencePiece model"):
        tk.resolve(str(tmp_path / "junk.model"))
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if it were not installed
    with pytest.raises(tk.TokenizerError, match=r"needs the `sentencepiece` package \(pip install 'nldsl\[data\]'\)"):
        tk.resolve(str(path))


# --- the spec's vocab follows the tokenizer ---------------------------------------

def test_the_vocab_follows_the_tokenizer(double, bpe, tmp_path):
    model = runs.build_model(no_vocab(tmp_path), dict(TINY), 0, tokenizer=bpe)
    assert model.settings["vocab"] == 400 and model.head.out_features == 400
    assert runs.build_model(no_vocab(tmp_path), dict(TINY), 0).settings["vocab"] == 256  # bytes
    bigger = tmp_path / "big.nl"
    bigger.write_text(SPEC.read_text().replace("vocab 256", "vocab 512"))
    assert runs.build_model(str(bigger), dict(TINY), 0, tokenizer=bpe).settings["vocab"] == 512  # room to spare is kept
    assert runs.build_model(str(SPEC), {**TINY, "vocab": 401}, 0, tokenizer=bpe).settings["vocab"] == 401
    with pytest.raises(runs.RunError, match=r"--set vocab=300 is smaller than the tokenizer's 400 tokens \(bpe:400\)"):
        runs.build_model(str(SPEC), {**TINY, "vocab": 300}, 0, tokenizer=bpe)
    with pytest.raises(NLError) as e:
        runs.build_model(SPEC, dict(TINY), 0, tokenizer=bpe)
    (d,) = e.value.diagnostics
    assert d.code == "NL130" and (d.span.file, d.span.line, d.span.col) == (str(SPEC), VOCAB_LINE, 3)
    assert "the spec's vocab 256 is smaller than the tokenizer's 400 tokens (bpe:400)" in d.message
    assert "write `vocab 400`" in d.help


def test_a_vocab_mismatch_on_the_command_line_is_located(double, tmp_path, capsys):
    rc, out, err = main(capsys, "train", SPEC, "--tokenizer", "bpe:300", "--out", tmp_path / "run", "--quiet")
    assert rc == 1 and "Traceback" not in err and not (tmp_path / "run").exists()
    assert f"{SPEC}:{VOCAB_LINE}:3: error[NL130]: the spec's vocab 256 is smaller than the tokenizer's 300 tokens" in err
    one_error_line(*main(capsys, "train", SPEC, "--tokenizer", str(tmp_path / "nope.json"),
                         "--out", tmp_path / "run")[::2], "cannot read tokenizer", "nope.json")
    one_error_line(*main(capsys, "train", SPEC, "--tokenizer", "bpe:ten", "--out", tmp_path / "run")[::2],
                   "--tokenizer bpe:ten: write bpe:VOCAB")


# --- runs ----------------------------------------------------------------------------

def test_a_bpe_run_keeps_its_tokenizer_for_eval_generate_and_resume(double, tmp_path, capsys):
    out, spec = tmp_path / "run", no_vocab(tmp_path)
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    common = ("--out", out, "--eval-batches", 2, "--quiet", "--sample", 0, *sets)
    rc, printed, err = main(capsys, "train", spec, "--tokenizer", "bpe:300", "--steps", 2, *common)
    assert rc == 0, err
    assert "bits/token" in printed and "tokenizer.json" in printed
    ckpt = tr.load_checkpoint(out)
    saved = (out / "tokenizer.json").read_bytes()
    assert (ckpt.tokenizer, ckpt.tokenizer_file) == ("bpe:300", "tokenizer.json")
    assert ckpt.tokenizer_sha256 == hashlib.sha256(saved).hexdigest()
    assert tr.run_tokenizer(ckpt, out).vocab_size == 300
    rc, printed, err = main(capsys, "eval", "--ckpt", out)
    assert rc == 0, err
    assert printed == f"{out} (step 2), held-out pydoc: {tr.describe(ckpt.history.heldout[2], 'token')}\n"
    rc, printed, err = main(capsys, "generate", "--ckpt", out, "--prompt", "The ", "-n", 5, "--seed", 1)
    assert rc == 0 and printed.startswith("The "), err
    one_error_line(*main(capsys, "train", spec, "--resume", "--tokenizer", "bpe:400", "--steps", 3, *common[:4])[::2],
                   "trained with --tokenizer 'bpe:300', not 'bpe:400'")
    rc, _, err = main(capsys, "train", spec, "--resume", "--tokenizer", "bpe:300", "--steps", 3, *common[:4])
    assert rc == 0, err
    assert tr.load_checkpoint(out).step == 3 and (out / "tokenizer.json").read_bytes() == saved
    (out / "tokenizer.json").write_bytes(saved.replace(b'"merges"', b'"merges" ', 1))  # another file
    one_error_line(*main(capsys, "generate", "--ckpt", out)[::2],
                   f"the tokenizer {out / 'tokenizer.json'} is not the one this run was trained with")
    (out / "tokenizer.json").unlink()
    one_error_line(*main(capsys, "eval", "--ckpt", out)[::2], "cannot read tokenizer", "No such file")


def test_a_run_from_a_tokenizer_file(double, bpe, tmp_path):
    path = tmp_path / "mine.json"
    path.write_bytes(bpe.raw)
    run(tmp_path / "run", 2, overrides={**TINY, "vocab": 400}, tokenizer=str(path))
    ckpt = tr.load_checkpoint(tmp_path / "run")
    assert ckpt.tokenizer == str(path) and (tmp_path / "run" / "tokenizer.json").read_bytes() == bpe.raw
    path.unlink()  # the run keeps its own copy
    model, ckpt = tr.load_run(tmp_path / "run")
    assert model.settings["vocab"] == 400
    corpus = tr.run_corpus(ckpt, tokenizer=tr.run_tokenizer(ckpt, tmp_path / "run"))
    assert corpus.tokenizer.sha256 == bpe.sha256 and corpus.train.max() < 400


def test_a_corpus_split_and_tokenized(bpe):
    corpus = Corpus(TEXT, "pydoc", bpe)
    train, heldout = split(TEXT)
    assert torch.equal(corpus.train, torch.from_numpy(bpe.encode(tk.pieces(tk.chunks_of(train))).astype(np.int32)))
    assert bpe.decode(corpus.heldout.tolist()) == heldout
    x, y = corpus.batch(0, 1, 3, 16)
    assert x.shape == (3, 16) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 400
    prompt = corpus.prompt()
    assert 0 < len(prompt) <= 48 and prompt in heldout


def test_real_backend_trains_evaluates_and_generates_with_bpe(tmp_path, capsys):
    out = tmp_path / "run"
    rc, printed, err = main(capsys, "train", no_vocab(tmp_path), "--tokenizer", "bpe:320", "--out", out,
                            "--steps", 3, "--set", "dim=16", "--set", "context=16", "--set", "batch=2",
                            "--set", "depth=1", "--eval-batches", 1, "--sample", 8, "--quiet")
    assert rc == 0, err
    assert "bits/token" in printed and "sample:" in printed
    model, _ = tr.load_run(out)
    assert model.settings["vocab"] == 320
    rc, printed, err = main(capsys, "eval", "--ckpt", out)
    assert rc == 0 and "bits/token" in printed, err
    rc, printed, err = main(capsys, "generate", "--ckpt", out, "--prompt", "The ", "-n", 6, "--temperature", 0)
    assert rc == 0 and printed.startswith("The ") and len(printed) > len("The \n"), err
