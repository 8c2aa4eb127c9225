"""nldsl runs as a model of the lm-evaluation-harness (nldsl/harness.py): the harness,
offline, on tasks over a local .jsonl, must find the numbers nldsl's own loss and
`generate` give on the same text."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval", reason="the harness is the optional `eval` extra: pip install 'nldsl[eval]'")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from nldsl import run as runs  # noqa: E402
from nldsl import train as tr  # noqa: E402
from nldsl.harness import NLDSLModel, learned_positions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NL = 10  # the newline a document starts from (nldsl's documents end with one)
# a transformer with GPT-2's learned absolute positions instead of rotary ones
GPT = (ROOT / "examples" / "transformer.nl").read_text().replace("rope(proj(x), heads: heads)", "proj(x)").replace(
    "  block repeat depth {", "  block {\n    x = positional(x)\n  }\n  block repeat depth {")

DOCS = ["The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up and "
        "chases the fox across the whole field.",
        "A naïve café owner sells crème brûlée: bytes, not characters, are what the model predicts.",
        "short one"]
CHOICES = [{"question": "The quick brown fox", "choices": ["jumps", "sleeps", "flies over the moon"], "answer": 0},
           {"question": "again and again,", "choices": ["until", "never"], "answer": 1}]
PROMPTS = [{"prompt": "The quick", "target": "x"}, {"prompt": "The quack", "target": "x"},
           {"prompt": "A naïve café owner sells", "target": "x"}]
GEN = 24


def tasks(folder: Path) -> Path:
    """Three tasks over local .jsonl files: perplexity, multiple choice and generation."""
    def task(name: str, rows: list, **config) -> None:
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = {"task": name, "dataset_path": "json", "output_type": config.pop("output_type"),
                  "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")},
                                     "cache_dir": str(folder / "cache")},
                  "test_split": "test", **config, "metadata": {"version": 1}}
        (folder / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML
    task("nl_rolling", [{"text": d} for d in DOCS], output_type="loglikelihood_rolling", doc_to_text="",
         doc_to_target="{{text}}", metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity",
                                                                         "bits_per_byte")])
    task("nl_choice", CHOICES, output_type="multiple_choice", doc_to_text="{{question}}",
         doc_to_choice="{{choices}}", doc_to_target="{{answer}}", metric_list=[{"metric": "acc"}])
    task("nl_generate", PROMPTS, output_type="generate_until", doc_to_text="{{prompt}}",
         doc_to_target="{{target}}", generation_kwargs={"until": ["\n", "."], "max_gen_toks": GEN,
                                                         "do_sample": False},
         metric_list=[{"metric": "exact_match"}])
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A run of HOPE (recurrent memories and task levels: fast state), one of the GPT variant
    (learned positions: none beyond its context), each trained a step, and the tasks."""
    made = {}
    for name, spec, context in (("hope", ROOT / "examples" / "hope.nl", 64), ("gpt", None, 16)):
        out = tmp_path_factory.mktemp(name)
        if spec is None:
            spec = out / "gpt.nl"
            spec.write_text(GPT)
        tr.train(spec, steps=1, out_dir=out / "run", overrides={"dim": 16, "context": context, "batch": 2,
                                                                "depth": 1},
                 eval_batches=1, eval_every=0, ckpt_every=0, sample=0, quiet=True)
        made[name] = out / "run"
    made["tasks"] = tasks(tmp_path_factory.mktemp("tasks"))
    return made


def evaluate(run: Path, folder: Path, names: list[str], monkeypatch):
    """The harness's results on the tasks `names` of `folder`, offline, two sequences a batch."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return simple_evaluate(model="nldsl", model_args=f"ckpt={run},device=cpu", tasks=names, batch_size=2,
                           log_samples=True,
                           task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                           bootstrap_iters=0)


def own(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every token of `ids` after the first, and the logits, from one call over all of them."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    return F.log_softmax(logits[0].float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], logits[0]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)  # float32 sums of a few hundred terms


def test_harness_matches_nldsls_own_loss_and_generation(folders, monkeypatch):
    run = folders["hope"]
    model, _ = tr.load_run(run, device="cpu")
    assert learned_positions(model) is None and int(model.settings["context"]) == 64
    out = evaluate(run, folders["tasks"], ["nl_rolling", "nl_choice", "nl_generate"], monkeypatch)

    # perplexity: one call over each whole document (longer than the context, which the
    # harness model feeds in calls of 64 tokens carrying the state) gives the same sums
    samples = {s["doc"]["text"]: s["resps"][0][0] for s in out["samples"]["nl_rolling"]}
    total, n = 0.0, 0
    for doc in DOCS:
        ids = [NL] + list(doc.encode())
        x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        with torch.no_grad():
            loss = runs.loss(model, x, y, "sum").item()
        assert close(samples[doc], -loss), (doc, samples[doc], -loss)
        total, n = total + loss, n + len(ids) - 1
        if len(ids) > 65:  # windows that each start afresh would have been seen
            with torch.no_grad():
                fresh = sum(runs.loss(model, x[:, i:i + 64], y[:, i:i + 64], "sum").item()
                            for i in range(0, x.shape[1], 64))
            assert not math.isclose(-fresh, samples[doc], rel_tol=1e-5), (fresh, samples[doc])
    assert len(DOCS[0].encode()) > 64
    bpb = out["results"]["nl_rolling"]["bits_per_byte,none"]
    assert close(bpb, tr.bits(total / n))  # bytes are the tokens: the harness's bits per byte are nldsl's

    # multiple choice: log p(" choice" | question) and whether each byte was the likeliest
    for s in out["samples"]["nl_choice"]:
        for (context, continuation), ((logprob, greedy),) in zip(s["arguments"], s["resps"]):
            ids = list(context.encode()) + list(continuation.encode())
            lp, logits = own(model, ids)
            k = len(continuation.encode())
            assert close(logprob, lp[-k:].sum().item())
            assert greedy == bool((logits[-k:, :256].argmax(-1) == torch.tensor(ids[-k:])).all())

    # generation: `nldsl generate` at temperature 0, up to the first stop sequence
    for s in out["samples"]["nl_generate"]:
        prompt = s["doc"]["prompt"]
        text = tr.generate(model, prompt.encode(), GEN, temperature=0).decode("utf-8", errors="replace")
        cut = min((text.index(stop) for stop in ("\n", ".") if stop in text), default=len(text))
        assert s["resps"][0][0] == text[:cut]


def test_greedy_continuations_are_greedy(folders):
    """is_greedy is true exactly for what greedy generation produces, in a batch of several."""
    model, ckpt = tr.load_run(folders["hope"], device="cpu")
    lm = NLDSLModel(model=model, tokenizer=tr.run_tokenizer(ckpt, folders["hope"]), batch_size=3)
    prompt = list(b"The quick")
    made = list(tr.generate(model, bytes(prompt), 8, temperature=0))  # bytes are the tokens
    (_, greedy), (_, other), (_, short) = lm.score([(prompt, made), (prompt, made[:-1] + [made[-1] ^ 1]),
                                                    (prompt, made[:3])])
    assert greedy and short and not other


def test_learned_positions_restart_at_every_window(folders, monkeypatch):
    """A model of learned positions has none past its context: each document is scored in
    windows of it, each from a fresh state, every byte predicted once with as much of the
    text before it as fits."""
    run = folders["gpt"]
    model, _ = tr.load_run(run, device="cpu")
    p = learned_positions(model)
    assert p == 16
    out = evaluate(run, folders["tasks"], ["nl_rolling"], monkeypatch)
    for s in out["samples"]["nl_rolling"]:
        ids = [NL] + list(s["doc"]["text"].encode())
        expect, done = 0.0, 0
        while done < len(ids) - 1:
            end = min(done + p, len(ids) - 1)  # predict ids[done + 1 : end + 1]
            start = max(0, end - p)  # from the fullest window that ends there
            lp, _ = own(model, ids[start:end + 1])
            expect += lp[done - start:].sum().item()
            done = end
        assert close(s["resps"][0][0], expect), (s["resps"][0][0], expect)


def test_the_command_line_knows_the_model(folders, tmp_path):
    """`python -m nldsl.lm_eval` is the harness's command line (`lm_eval`) with `nldsl` known:
    it writes the results the Python API gives."""
    r = subprocess.run([sys.executable, "-m", "nldsl.lm_eval", "--model", "nldsl", "--model_args",
                        f"ckpt={folders['hope']}", "--device", "cpu", "--batch_size", "auto", "--tasks", "nl_rolling",
                        "--include_path", str(folders["tasks"]), "--output_path", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                            "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    (written,) = (tmp_path / "out").rglob("results_*.json")
    bpb = json.loads(written.read_text())["results"]["nl_rolling"]["bits_per_byte,none"]
    model, _ = tr.load_run(folders["hope"], device="cpu")
    ids = [[NL] + list(d.encode()) for d in DOCS]
    with torch.no_grad():
        total = sum(runs.loss(model, torch.tensor([i[:-1]]), torch.tensor([i[1:]]), "sum").item() for i in ids)
    assert close(bpb, tr.bits(total / sum(len(i) - 1 for i in ids)))


def test_a_folder_that_is_not_a_run_is_one_error_line(folders, tmp_path, monkeypatch, capsys):
    """The harness builds the model from its model args; a mistake there is one `error:`
    line from `python -m nldsl.lm_eval`, not a traceback."""
    import lm_eval.__main__
    from lm_eval.api.registry import get_model

    from nldsl import lm_eval as command
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate",
                        lambda: get_model("nldsl").create_from_arg_string(f"ckpt={tmp_path},device=cpu"))
    assert command.main() == 1
    assert capsys.readouterr().err == f"error: no checkpoint in {tmp_path}: {tmp_path / tr.CHECKPOINT} does not exist\n"
    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # as where the harness is not installed
    assert command.main() == 1
    assert "it is nldsl's `eval` extra, pip install 'nldsl[eval]'" in capsys.readouterr().err
    run = folders["hope"]
    for args, message in (("", "needs its run folder: --model_args ckpt=DIR"),
                          (f"ckpt={run},batch_size=0", "batch_size=0: give at least 1 sequence"),
                          (f"ckpt={run},batch_size=many", "batch_size=many: give a whole number"),
                          (f"ckpt={run},precision=fp8", "fp8: give one of fp32, bf16, fp16")):
        with pytest.raises(runs.RunError, match=message):
            get_model("nldsl").create_from_arg_string(args)
