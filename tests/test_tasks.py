"""`nldsl eval --task` (nldsl/tasks, docs/evaluation.md): each task end to end on a tiny
checkpoint, its numbers against independent computations, its generators' examples
checked token by token, and its scorers against hand-made predictors that know the
answer (an induction "model" that copies what followed the longest earlier match of
the current suffix) and against predictors that cannot."""
import json
import math
from pathlib import Path

import pytest
import torch

from nldsl import sources, synthetic, tasks
from nldsl.cli import main
from nldsl.run import IGNORE
from nldsl.tasks import continual, niah
from nldsl.tokenizer import BYTE_TOKENIZER
from nldsl.train import evaluate, load_run, run_corpus

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "dim=32", "--set", "depth=1", "--set", "context=32", "--set", "batch=4"]
QUIET = ["--eval-every", "0", "--eval-batches", "1", "--quiet", "--device", "cpu"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_main(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    assert main(["train", "transformer", "--steps", "2", "--out", str(out), "--sample", "0", *TINY, *QUIET]) == 0
    return out


@pytest.fixture(scope="module")
def mqar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mqar") / "run"
    assert main(["train", "transformer", "--task", "mqar", "--steps", "2", "--out", str(out), *TINY, *QUIET]) == 0
    return out


def read(out: Path, task: str) -> dict:
    assert (out / f"eval-{task}.png").read_bytes().startswith(PNG)
    record = json.loads((out / f"eval-{task}.json").read_text())
    assert record["format"] == "nldsl-eval/1" and record["task"] == task
    return record


# --- lm ------------------------------------------------------------------------------------

def test_lm_overall_loss_is_the_weighted_buckets_and_the_eval_loss(lm_run, capsys):
    rc, out, err = run_main(capsys, "eval", "--ckpt", lm_run, "--task", "lm", "--buckets", "4", "--device", "cpu")
    assert rc == 0, err
    record = read(lm_run, "lm")
    assert record["context"] == 32 and [r["length"] for r in record["lengths"]] == [32, 64]
    model, ckpt = load_run(lm_run, device="cpu")
    plain = evaluate(model, run_corpus(ckpt), ckpt.eval_batches)
    for r in record["lengths"]:
        counts = [b["count"] for b in r["buckets"]]
        assert sum(counts) == r["tokens"] == r["windows"] * r["length"]
        weighted = sum(b["count"] * b["loss"] for b in r["buckets"]) / sum(counts)
        assert r["loss"] == pytest.approx(weighted, rel=1e-12)
        assert r["bits"] == pytest.approx(r["loss"] / math.log(2)) and r["perplexity"] == pytest.approx(math.exp(r["loss"]))
        assert [b["start"] for b in r["buckets"]] == list(range(0, r["length"], 8))  # 32 / 4 buckets
    at_context = record["lengths"][0]
    assert at_context["loss"] == pytest.approx(plain, rel=1e-5)  # nldsl eval's number on the same windows
    rc, printed, _ = run_main(capsys, "eval", "--ckpt", lm_run, "--device", "cpu")
    assert rc == 0 and f"loss {plain:.4f} nats" in printed
    assert f"length 32: loss {plain:.4f} nats" in out and "wrote" in out


def test_lm_by_position_against_a_loop_over_positions(lm_run):
    """Each bucket's loss is the mean over its positions of the per-window losses, computed
    here one position at a time from the model's logits."""
    model, ckpt = load_run(lm_run, device="cpu")
    ctx = tasks.Context(model, seed=0, options={"lengths": "48", "buckets": 2}, ckpt=ckpt, eval_batches=1)
    result = tasks.get("lm").evaluate(ctx)
    (r,) = result["lengths"]
    x, y = run_corpus(ckpt).heldout_windows(4, 48)
    with torch.no_grad():
        logits = model(x)[0]
    per = [[float(torch.nn.functional.cross_entropy(logits[w, t], y[w, t])) for t in range(48)] for w in range(4)]
    for b in r["buckets"]:  # buckets of 16: 0-16, 16-32 (the context), then 32-48 past it
        want = sum(per[w][t] for w in range(4) for t in range(b["start"], b["end"])) / (4 * (b["end"] - b["start"]))
        assert b["loss"] == pytest.approx(want, rel=1e-5)
    assert len(r["buckets"]) == 3 and r["loss_within_context"] == pytest.approx(
        sum(per[w][t] for w in range(4) for t in range(32)) / 128, rel=1e-5)


def test_lm_past_the_context_of_learned_positions_is_a_note(tmp_path, capsys):
    spec = tmp_path / "absolute.nl"
    spec.write_text((ROOT / "examples" / "transformer.nl").read_text().replace(
        "  block repeat depth {", "  block {\n    x = positional(x)\n  }\n  block repeat depth {"))
    out = tmp_path / "run"
    assert main(["train", str(spec), "--steps", "1", "--out", str(out), "--sample", "0", *TINY, *QUIET]) == 0
    rc, printed, err = run_main(capsys, "eval", "--ckpt", out, "--task", "lm", "--device", "cpu")
    assert rc == 0 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("note: skipped length 64: the model cannot be evaluated past "
                                                   "its context 32: token position")
    record = read(out, "lm")
    assert [r["length"] for r in record["lengths"]] == [32]
    assert record["skipped"][0]["length"] == 64 and "`positional`" in record["skipped"][0]["reason"]


# --- hand-made predictors ------------------------------------------------------------------

class Copier(torch.nn.Module):
    """Predicts, at each position, the token that followed the most recent earlier
    occurrence of the longest suffix (up to `span` tokens) ending there: it finds a needle
    by its query and a queried key's value, without having been trained. `shift` makes it
    predict a wrong token instead."""

    def __init__(self, context: int, span: int = 48, shift: int = 0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # for the device
        self.settings = {"vocab": 256, "context": context, "batch": 4, "dim": 1}
        self.span, self.shift, self.name = span, shift, "copier"

    def forward(self, x, state=None):
        out = torch.full((*x.shape, 256), -1.0)
        for b, row in enumerate(x.tolist()):
            for t in range(len(row)):
                guess = self.recall(row, t)
                if guess is not None:
                    out[b, t, (guess + self.shift) % 256] = 1.0
        return out, None

    def recall(self, row, t):
        best, found = 0, None
        for s in range(t - 1, -1, -1):  # the most recent of the longest matches wins
            k = 0
            while k < self.span and s - k >= 0 and row[s - k] == row[t - k]:
                k += 1
            if k > best:
                best, found = k, row[s + 1]
        return found


def test_the_niah_generator_puts_the_needle_at_its_depth():
    hay = niah.Haystacks("noise", BYTE_TOKENIZER)
    for length in (120, 200):
        for depth in (0.0, 0.3, 0.5, 1.0):
            e = niah.make(torch.Generator().manual_seed(1), hay, length, depth)
            text = bytes(e.tokens.tolist()).decode()
            needle = bytes(e.needle.tolist()).decode()
            assert len(e.tokens) == length + 1 and text.count(needle) == 1
            key, value = needle.rstrip().split("for ")[1].split(" is: ")
            assert value == f"{bytes(e.answer.tolist()).decode()}." and len(value) == niah.DIGITS + 1
            haystack = length + 1 - len(needle) - len(e.answer) - len(niah.QUERY.format(key=key))
            assert text.index(needle) == e.needle_at == round(depth * haystack)
            assert text.endswith(niah.QUERY.format(key=key) + value[:-1])
    pydoc = niah.Haystacks("pydoc", BYTE_TOKENIZER)
    e = niah.make(torch.Generator().manual_seed(2), pydoc, 300, 0.5)
    held = bytes(sources.load("pydoc").heldout.tolist())
    before = bytes(e.tokens[:e.needle_at].tolist())
    after = bytes(e.tokens[e.needle_at + len(e.needle):e.answer_at].tolist()).split(b"\nThe special")[0]
    assert before + after in held  # one span of held-out text, cut where the needle went
    assert niah.make(torch.Generator().manual_seed(2), pydoc, 60, 0.5) is None  # too short for the needle


@pytest.mark.parametrize("shift, want", [(0, 1.0), (1, 0.0)])
def test_niah_scores_a_perfect_predictor_1_and_a_wrong_one_0(tmp_path, capsys, shift, want):
    ctx = tasks.Context(Copier(128, shift=shift), seed=3,
                        options={"lengths": "128,160", "depths": "0,0.5,1", "samples": 3, "haystack": "noise"})
    record = tasks.run(tasks.get("niah"), ctx, tmp_path)
    assert record == read(tmp_path, "niah")
    assert record["accuracy"] == [[want, want]] * 3 and not record["skipped"]
    assert all(c["tokens"] == want and c["examples"] == 3 for c in record["cells"])
    assert "niah accuracy, haystack noise" in capsys.readouterr().out


def test_mqar_examples_hold_their_pairs_and_recoverable_answers():
    g = torch.Generator().manual_seed(0)
    for length, pairs in ((15, 4), (64, 16), (64, 1), (127, 32)):
        x, y = synthetic.example(g, length, pairs)
        assert x.shape == y.shape == (length,)
        keys, values = x[0:2 * pairs:2].tolist(), x[1:2 * pairs:2].tolist()
        assert len(set(keys)) == pairs
        assert all(k in synthetic.KEYS for k in keys) and all(v in synthetic.VALUES for v in values)
        queried = (y != IGNORE).nonzero().flatten().tolist()
        assert len(queried) == pairs and all(t >= 2 * pairs for t in queried)
        assert sorted(x[queried].tolist()) == sorted(keys)  # each key queried once
        for t in queried:  # the answer is the value that followed the key in the pairs
            assert y[t] == values[keys.index(int(x[t]))]
            if t + 1 < length:
                assert x[t + 1] == y[t]
        rest = [t for t in range(2 * pairs, length) if t not in queried and t - 1 not in queried]
        assert all(x[t] == 0 for t in rest)
    with pytest.raises(ValueError):
        synthetic.example(g, 14, 4)


def test_mqar_batches_are_a_function_of_seed_and_step():
    data = synthetic.MQARData()
    a, b = data.batch(0, 5, 4, 32), data.batch(0, 5, 4, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], data.batch(0, 6, 4, 32)[0])
    two = [data.batch(0, 5, 2, 32, rank=r, world_size=2)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(two), data.batch(0, 5, 4, 32)[0])


@pytest.mark.parametrize("shift, want", [(0, 1.0), (1, 0.0)])
def test_mqar_scores_a_perfect_predictor_1_and_a_wrong_one_0(tmp_path, shift, want):
    ctx = tasks.Context(Copier(32, span=1, shift=shift), seed=0, options={"lengths": "32,48", "samples": 3})
    record = tasks.run(tasks.get("mqar"), ctx, tmp_path)
    assert record["pairs"] == [2, 4, 8] and record["lengths"] == [32, 48]
    assert record["accuracy"] == [[want, want]] * 3
    assert all(c["queries"] == 3 * c["pairs"] for c in record["cells"])


class ContextFree(torch.nn.Module):
    """Predicts at each position a token of `candidates` looked up from that position's own
    token and the position alone (a fixed random table): nothing earlier in the sequence
    reaches its prediction, so it can score above chance only where a task leaks."""

    def __init__(self, context: int, candidates, seed: int = 0, period: int = 7):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.settings = {"vocab": 256, "context": context, "batch": 4, "dim": 1}
        cands = torch.tensor(list(candidates))
        g = torch.Generator().manual_seed(seed)
        self.table = cands[torch.randint(len(cands), (256, period), generator=g)]
        self.name = "context-free"

    def forward(self, x, state=None):
        picked = self.table[x, torch.arange(x.shape[1]) % self.table.shape[1]]
        return torch.nn.functional.one_hot(picked, 256).float(), None


def log_binomial(n: int, p: float) -> list[float]:
    """log P(k successes) of k = 0 … n trials of chance p."""
    if p == 0:
        return [0.0] + [-math.inf] * n
    return [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p) for k in range(n + 1)]


def plausible(pmf: list[float], alpha: float = 1e-6) -> tuple[int, int]:
    """The counts from lo to hi outside which lies at most `alpha` of the distribution
    `pmf` (alpha/2 on each side): a count outside fails the test by chance one time in 10⁶."""
    below, lo = 0.0, 0
    while below + pmf[lo] <= alpha / 2:
        below += pmf[lo]
        lo += 1
    above, hi = 0.0, len(pmf) - 1
    while above + pmf[hi] <= alpha / 2:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def binomial(n: int, p: float) -> list[float]:
    return [math.exp(v) for v in log_binomial(n, p)]


def test_mqar_scores_a_context_free_predictor_at_chance(tmp_path):
    """The value of a queried key is drawn uniformly from the 128 values, apart from the key
    and its place: a predictor that names a value from the key token and the position alone
    is right with chance exactly 1/128 at each query, independently, so the queries right
    are Binomial(queries, 1/128). A task that let the answer reach the queried position
    (or scored the wrong positions) would fall outside."""
    ctx = tasks.Context(ContextFree(64, synthetic.VALUES), seed=5, options={"lengths": "64,128", "samples": 48})
    record = tasks.run(tasks.get("mqar"), ctx, tmp_path)
    queries = sum(c["queries"] for c in record["cells"])
    right = sum(c["correct"] for c in record["cells"])
    assert queries == 48 * (2 * (2 + 4 + 8 + 16) + 32) and record["chance"] == 1 / 128
    lo, hi = plausible(binomial(queries, 1 / 128))
    assert lo > 0 and lo <= right <= hi, (right, lo, hi, queries / 128)


def test_niah_scores_a_context_free_predictor_at_chance(tmp_path):
    """VALUE is uniform over the 7-digit numbers, so its digits are independent: the first
    uniform over 1-9, the others over 0-9. A predictor that names a digit 1-9 from the token
    before (the query's last space, then the answer's previous digit) and the position
    alone gets the first digit with chance 1/9 and each other with chance 1/10,
    independently: the answer tokens right over N examples are Binomial(N, 1/9) plus
    Binomial(6N, 1/10), and a whole answer is right with chance 1/9 · 10⁻⁶, so chance
    for exact match is (nearly) 0."""
    ctx = tasks.Context(ContextFree(128, b"123456789"), seed=7,
                        options={"lengths": "120,160", "depths": "0,0.5,1", "samples": 32})
    record = tasks.run(tasks.get("niah"), ctx, tmp_path)
    n = sum(c["examples"] for c in record["cells"])
    assert n == 2 * 3 * 32 and not record["skipped"]
    exact = round(sum(c["accuracy"] * c["examples"] for c in record["cells"]))
    tokens = round(sum(c["tokens"] * c["examples"] * niah.DIGITS for c in record["cells"]))
    assert exact <= plausible(binomial(n, 1 / 9 * 10 ** -(niah.DIGITS - 1)))[1]
    first, rest = binomial(n, 1 / 9), binomial((niah.DIGITS - 1) * n, 1 / 10)
    total = [sum(first[k] * rest[t - k] for k in range(max(0, t - len(rest) + 1), min(t, n) + 1))
             for t in range(len(first) + len(rest) - 1)]
    lo, hi = plausible(total)
    assert lo <= tokens <= hi, (tokens, lo, hi, n * (1 / 9 + (niah.DIGITS - 1) / 10))


def test_the_chance_bounds_reject_a_predictor_that_knows_the_answer(tmp_path):
    """The bounds above are tight enough to fail: the copier that finds the answers is far
    outside them."""
    ctx = tasks.Context(Copier(64, span=1), seed=5, options={"lengths": "64", "samples": 8})
    record = tasks.run(tasks.get("mqar"), ctx, tmp_path)
    queries = sum(c["queries"] for c in record["cells"])
    assert sum(c["correct"] for c in record["cells"]) > plausible(binomial(queries, 1 / 128))[1]


# --- continual -----------------------------------------------------------------------------

START = ["--set", "dim=16", "--set", "depth=1", "--set", "context=32", "--set", "batch=2"]


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """A run at step 0: the spec's initial weights, as `nldsl train --seed 0` starts from."""
    out = tmp_path_factory.mktemp("continual") / "run"
    assert main(["train", "transformer", "--steps", "0", "--out", str(out), "--sample", "0", *START, *QUIET]) == 0
    return out


def test_transfer_of_a_hand_made_matrix():
    loss = [[1.0, 5.0, 6.0],   # after stage 0
            [1.5, 2.0, 6.0],   # after stage 1
            [1.2, 2.5, 3.0]]   # after stage 2: the last
    t = continual.transfer(loss)
    # task 0: best of rows 0-1 is 1.0, final 1.2; task 1: best of row 1 is 2.0, final 2.5
    assert t["forgetting_by_task"] == pytest.approx([0.2, 0.5])
    assert t["backward_transfer_by_task"] == pytest.approx([0.2, 0.5])
    assert t["forgetting"] == pytest.approx(0.35) and t["backward_transfer"] == pytest.approx(0.35)
    assert t["average"] == pytest.approx((1.2 + 2.5 + 3.0) / 3)
    # a task learnt later than its best: forgetting from the best, transfer from right after
    loss[2][0] = 1.4
    loss[1][0] = 0.8
    t = continual.transfer(loss)
    assert t["forgetting_by_task"][0] == pytest.approx(0.6) and t["backward_transfer_by_task"][0] == pytest.approx(0.4)
    accuracy = [[0.9, 0.0, None], [0.6, 0.8, None], [0.7, 0.5, None]]
    t = continual.transfer(accuracy, higher_is_better=True)
    assert t["forgetting_by_task"] == pytest.approx([0.2, 0.3])  # best − final, > 0 when forgotten
    assert t["backward_transfer_by_task"] == pytest.approx([-0.2, -0.3])  # GEM's sign: < 0 when forgotten
    assert t["average"] == pytest.approx(0.6)  # the final row, leaving out what was not measured
    assert continual.transfer([[1.0, None], [None, 2.0]])["forgetting"] is None
    assert continual.transfer([[3.0]]) == {"average": 3.0, "forgetting": None, "backward_transfer": None,
                                           "forgetting_by_task": [], "backward_transfer_by_task": []}
    with pytest.raises(ValueError):
        continual.transfer([[1.0, 2.0]])


def test_continual_is_nldsl_train_stage_after_stage_and_deterministic(fresh_run, tmp_path, capsys, monkeypatch):
    """Its first row is what `nldsl train --data STAGE.txt --steps N` makes of the same start
    on that stage's text (the same weights, batches and optimizer); the start row is the
    held-out loss of `nldsl eval`'s kind; the same seed writes the same file; the run is left
    as it was."""
    weights = (fresh_run / "model.safetensors").read_bytes()
    argv = ["eval", "--ckpt", fresh_run, "--task", "continual", "--stages", "python,prose", "--stage-steps", "2",
            "--stage-bytes", "4000", "--device", "cpu"]
    rc, out, err = run_main(capsys, *argv, "--out", tmp_path / "a")
    assert rc == 0, err
    assert "continual: 2 stages of 2 steps" in out and "average forgetting" in out
    record = read(tmp_path / "a", "continual")
    assert [s["name"] for s in record["stages"]] == ["python", "prose"]
    assert [(s["train"], s["heldout"]) for s in record["stages"]] == [(3600, 400)] * 2
    assert run_main(capsys, *argv, "--out", tmp_path / "b")[0] == 0
    first = (tmp_path / "a" / "eval-continual.json").read_bytes()
    assert (tmp_path / "b" / "eval-continual.json").read_bytes() == first  # the same seed, the same file
    assert run_main(capsys, *argv, "--out", tmp_path / "c", "--seed", "1")[0] == 0
    assert read(tmp_path / "c", "continual")["loss"] != record["loss"]  # other batches
    assert (fresh_run / "model.safetensors").read_bytes() == weights

    text = tmp_path / "python.txt"
    text.write_bytes(continual.tail(continual.python_parts(), 4000))
    corpus = sources.load(str(text))
    assert corpus.sha256 == record["stages"][0]["sha256"]
    start, _ = load_run(fresh_run, device="cpu")
    assert record["start_loss"][0] == pytest.approx(evaluate(start, corpus, 1), rel=1e-5)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "transformer", "--data", str(text), "--steps", "2", "--out", "trained", "--sample", "0",
                 *START, *QUIET]) == 0
    trained, _ = load_run(tmp_path / "trained", device="cpu")
    assert record["loss"][0][0] == pytest.approx(evaluate(trained, corpus, 1), rel=1e-5)
    (first, _), (final, _) = record["loss"]  # two stages: the first task's loss after each
    assert record["transfer"]["loss"] == continual.transfer(record["loss"])  # JSON keeps floats exactly
    assert record["transfer"]["loss"]["forgetting"] == record["transfer"]["loss"]["backward_transfer"] == final - first
    assert tasks.get("continual").scores(record) == {"final loss": sum(record["loss"][-1]) / 2,
                                                     "forgetting": final - first, "backward transfer": final - first}


def test_continual_digits_and_a_domain_this_machine_lacks(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    digits = continual.Digits([0, 1], BYTE_TOKENIZER)
    x, y = digits.heldout_windows(1, 64)
    assert x.shape == (len(digits.heldout), 64) and int(x.max()) <= 16
    assert (y[:, :-1] == IGNORE).all() and set(y[:, -1].tolist()) == {ord("0"), ord("1")}
    assert not set(digits.train.tolist()) & set(digits.heldout.tolist())
    assert torch.equal(digits.batch(0, 3, 4, 64)[0], digits.batch(0, 3, 4, 64)[0])
    monkeypatch.setattr(continual, "MAN", tmp_path / "nothing")
    from nldsl.run import build_model
    model = build_model(ROOT / "examples" / "transformer.nl", {"dim": 16, "depth": 1, "context": 64, "batch": 2}, 0)
    ctx = tasks.Context(model, seed=0, options={"stages": "man,digits:01,digits:23", "stage_steps": 1})
    record = tasks.run(tasks.get("continual"), ctx, tmp_path)
    assert [s["name"] for s in record["stages"]] == ["digits:01", "digits:23"]
    assert record["skipped"] == [{"stage": "man", "reason": f"no text: manual pages, roff source "
                                                            f"({continual.MAN}/*.gz) holds none on this machine"}]
    assert "note: skipped stage man: no text" in capsys.readouterr().err
    assert len(record["loss"]) == 2 and all(0 <= v <= 1 for row in record["accuracy"] for v in row)


def test_continual_on_a_run_of_another_tokenizer():
    """Text stages are tokenized as the run is; the digits, made of byte tokens, are refused."""
    from nldsl import tokenizer as tk
    from nldsl.run import RunError, build_model
    bpe = tk.train_bpe(tk.pieces(tk.chunks_of(continual.tail(continual.pydoc_parts(), 20000))), 300)
    model = build_model(ROOT / "examples" / "transformer.nl",
                        {"dim": 16, "depth": 1, "context": 32, "batch": 2, "vocab": 300}, 0, tokenizer=bpe)
    ctx = tasks.Context(model, bpe, options={"stages": "prose", "stage_steps": 1, "stage_bytes": 4000})
    result = tasks.get("continual").evaluate(ctx)
    assert result["stages"][0]["unit"] == "token" and result["stages"][0]["train"] < 3600  # merged bytes
    ctx = tasks.Context(model, bpe, options={"stages": "digits:01"})
    with pytest.raises(RunError, match="the digits stages are made of byte tokens: they need a byte-level run"):
        tasks.get("continual").evaluate(ctx)


# --- end to end on checkpoints ---------------------------------------------------------------

def test_mqar_trains_on_its_data_and_scores_the_answers_only(mqar_run, capsys):
    model, ckpt = load_run(mqar_run, device="cpu")
    assert ckpt.data == "mqar" and ckpt.step == 2
    corpus = run_corpus(ckpt)
    x, y = corpus.heldout_windows(4, 32)
    with torch.no_grad():
        logits = model(x)[0]
    scored = y != IGNORE
    want = torch.nn.functional.cross_entropy(logits[scored], y[scored]).item()
    assert evaluate(model, corpus, 1) == pytest.approx(want, rel=1e-5)
    rc, out, err = run_main(capsys, "eval", "--ckpt", mqar_run, "--task", "mqar", "--samples", "4", "--device", "cpu")
    assert rc == 0, err
    record = read(mqar_run, "mqar")
    assert record["lengths"] == [32, 64] and record["pairs"] == [2, 4, 8, 16]
    grid = record["accuracy"]
    assert grid[3][0] is None and all(0 <= v <= 1 for row in grid for v in row if v is not None)
    assert record["skipped"] == [{"pairs": 16, "length": 32, "reason": "16 pairs and 16 queries need 63 tokens"}]
    first = (mqar_run / "eval-mqar.json").read_bytes()
    assert run_main(capsys, "eval", "--ckpt", mqar_run, "--task", "mqar", "--samples", "4", "--device", "cpu")[0] == 0
    assert (mqar_run / "eval-mqar.json").read_bytes() == first  # the same seed, the same file


def test_niah_on_a_checkpoint_into_another_folder(lm_run, tmp_path, capsys):
    rc, out, err = run_main(capsys, "eval", "--ckpt", lm_run, "--task", "niah", "--lengths", "100,150",
                            "--depths", "0,1", "--samples", "2", "--out", tmp_path, "--device", "cpu")
    assert rc == 0, err
    record = read(tmp_path, "niah")
    assert record["run"] == str(lm_run) and record["step"] == 2 and record["haystack"] == "pydoc"
    assert len(record["accuracy"]) == 2 and all(len(row) == 2 for row in record["accuracy"])
    assert not (lm_run / "eval-niah.json").exists()


def test_eval_steps_trains_what_the_task_needs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(capsys, "eval", "transformer", "--task", "mqar", "--steps", "1", *TINY,
                            "--samples", "2", "--pairs", "2", "--lengths", "32", "--device", "cpu")
    assert rc == 0, err
    record = read(tmp_path / "runs" / "transformer-mqar", "mqar")
    assert record["step"] == 1 and record["trained_on"] == "mqar" and record["settings"]["dim"] == 32


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "64"], "--lengths is an option of the tasks: give --task NAME too"),
    (["--task", "mqar", "--depths", "0.5"], "--depths is an option of the niah task, not of mqar"),
    (["--task", "niah", "--data", "pydoc"], "--data is an option of the lm task, not of niah"),
    (["--task", "niah", "--depths", "0,2"], "--depths 0,2: give depths from 0 to 1"),
    (["--task", "lm", "--buckets", "0"], "--buckets 0: give 1 to 32"),
    (["--task", "lm", "--set", "dim=8"], "--set is a setting of the model to train: give --steps N too"),
    (["--task", "mqar", "--pairs", "x"], "`x`: give whole numbers separated by commas"),
    (["--task", "continual", "--stages", "prose,poetry"], "--stages: no stage `poetry` (the stages: prose, python, "
                                                          "man, and digits:CLASSES such as digits:01)"),
    (["--task", "continual", "--stages", "prose,prose"], "--stages prose,prose: each stage once"),
    (["--task", "continual", "--stages", "digits:11"], "--stages: no stage `digits:11`"),
    (["--task", "continual", "--stage-steps", "-1"], "--stage-steps -1: the number of steps cannot be negative"),
    (["--task", "niah", "--stage-steps", "3"], "--stage-steps is an option of the continual task, not of niah"),
])
def test_mistakes_are_one_line(lm_run, capsys, argv, message):
    rc, out, err = run_main(capsys, "eval", "--ckpt", lm_run, *argv, "--device", "cpu")
    assert rc == 1 and err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_train_task_refuses_other_data(tmp_path, capsys):
    rc, _, err = run_main(capsys, "train", "transformer", "--task", "mqar", "--data", "pydoc", "--out", tmp_path / "x")
    assert rc == 1 and err == "error: --task mqar trains on the task's own data: leave out --data\n"
