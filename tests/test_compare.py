"""`nldsl compare` (nldsl/compare.py, docs/evaluation.md "Comparisons"): parameter matching
against compiler/stats and a built model, equal tokens across contexts, the report's table
against the runs' own JSON (the mean and spread computed here), determinism per seed, an
interrupted comparison continued without redoing finished work, and mistakes as one line."""
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import compare as comparison
from nldsl import tasks as registry
from nldsl import train as training
from nldsl.cli import main
from nldsl.compare import CompareError, Counter, match, parse_variant
from nldsl.train import load_checkpoint, load_run

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "dim=16", "--set", "depth=1", "--set", "context=32", "--set", "batch=2"]
QUIET = ["--evals", "2", "--eval-batches", "1", "--quiet", "--device", "cpu"]
# two specs, two contexts (32 and 16), both tasks kinds of data: text (lm) and a task's own (mqar)
ARGV = ["compare", "transformer", "titans,context=16", "--budget", "512", "--seeds", "2", "--tasks", "lm,mqar",
        "--samples", "2", "--pairs", "2,4", *TINY, *QUIET]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    assert main([*ARGV, "--out", str(out)]) == 0
    return out


def params_of(spec: str, **settings) -> int:
    return nldsl.stats(ROOT / "examples" / f"{spec}.nl", **settings).totals["params"]


def counted(spec: str, dim: int) -> int | None:
    try:
        return params_of(spec, dim=dim)
    except nldsl.compiler.diagnostics.NLError:  # a dim the spec refuses (rope needs even heads)
        return None


# --- matching -----------------------------------------------------------------------------------

def test_matching_picks_the_dim_closest_to_the_target_within_the_tolerance():
    variants = [parse_variant(s) for s in ("transformer", "titans", "hope")]
    for v in variants:
        v.settings = {"dim": 32}
    target = match(variants, Counter("pydoc"), 60_000, 0.1)
    assert target == 60_000
    for v, heads in zip(variants, (4, 4, 4)):
        dim = v.settings["dim"]
        assert v.matched == {"dim": dim} and dim % heads == 0
        n = params_of(v.name, dim=dim)
        assert n == v.params and abs(n - target) <= 0.1 * target
        for way in (-1, 1):  # the nearest dims either side that the spec accepts are no closer
            other = dim + way * heads
            while other > 0 and (found := counted(v.name, other)) is None:
                other += way * heads
            assert other <= 0 or abs(found - target) >= abs(n - target)


def test_the_first_variant_is_the_target_and_depth_moves_when_dim_is_fixed():
    variants = [parse_variant("transformer"), parse_variant("deep=transformer,dim=32")]
    variants[0].settings, variants[1].settings = {"dim": 32, "depth": 3}, {"dim": 32}
    target = match(variants, Counter("pydoc"), None, 0.05)
    assert target == params_of("transformer", dim=32, depth=3) and variants[0].matched == {}
    assert variants[1].matched == {"depth": 3} and variants[1].params == target


def test_a_variant_that_cannot_be_matched_is_one_error():
    variants = [parse_variant("transformer"), parse_variant("b=transformer,dim=64,depth=1")]
    variants[0].settings, variants[1].settings = {"dim": 16}, {"dim": 64, "depth": 1}
    with pytest.raises(CompareError, match=r"variant b: .* from the target .* \(its dim and depth are its own\)"):
        match(variants, Counter("pydoc"), None, 0.1)


# --- a whole comparison -----------------------------------------------------------------------------

def table(report: str) -> dict[str, dict[str, str]]:
    """The first table of report.md: variant -> column -> cell."""
    lines = [l for l in report.splitlines() if l.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "variant":
            break  # the table of runs
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def mean_std(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def test_every_run_trains_the_same_tokens_with_the_matched_settings(done):
    result = json.loads((done / "compare.json").read_text())
    assert [v["variant"] for v in result["variants"]] == ["transformer", "titans"]
    folders = sorted(p for p in (done / "runs").glob("*/*") if p.is_dir())
    assert len(folders) == 8  # 2 variants × 2 seeds × (pydoc, mqar)
    for folder in folders:
        ckpt = load_checkpoint(folder)
        model, _ = load_run(folder, device="cpu")
        batch, context = int(model.settings["batch"]), int(model.settings["context"])
        assert ckpt.step * batch * context == 512
        assert context == (16 if folder.parent.name == "titans" else 32)
        assert ckpt.seed == int(re.match(r"seed(\d)", folder.name).group(1))  # the seed's batches
        assert ckpt.data == ("mqar" if folder.name.endswith("-mqar") else "pydoc")
        v = next(v for v in result["variants"] if v["variant"] == folder.parent.name)
        assert sum(p.numel() for p in model.parameters()) == v["params"]  # stats' count is the model's
    for v in result["variants"]:
        assert v["tokens"] == 512 and v["steps"] * v["batch"] * v["context"] == 512


def test_the_table_is_the_mean_and_spread_of_the_runs_own_numbers(done):
    rows = table((done / "report.md").read_text())
    for name in ("transformer", "titans"):
        lm, mqar, heldout = [], [], []
        for seed in (0, 1):
            record = json.loads((done / "runs" / name / f"seed{seed}" / "eval-lm.json").read_text())
            (at,) = [r for r in record["lengths"] if r["length"] == record["context"]]
            lm.append(at["loss"])
            cells = json.loads((done / "runs" / name / f"seed{seed}-mqar" / "eval-mqar.json").read_text())["cells"]
            mqar.append(sum(c["correct"] for c in cells) / sum(c["queries"] for c in cells))
            csv = (done / "runs" / name / f"seed{seed}-mqar" / "losses.csv").read_text().splitlines()
            heldout.append(float(csv[-1].split(",")[2]))
        for column, values in (("lm loss", lm), ("mqar accuracy", mqar), ("held-out loss (mqar)", heldout)):
            mean, std = mean_std(rows[name][column])
            assert mean == pytest.approx(statistics.fmean(values), abs=6e-5), column
            assert std == pytest.approx(statistics.stdev(values), abs=6e-5), column
        assert "held-out loss (pydoc)" not in rows[name]  # the lm column is that number
        assert lm[0] != lm[1]  # two seeds, two runs
    assert rows["titans"]["parameters"] == f"{json.loads((done / 'compare.json').read_text())['variants'][1]['params']:,}"
    for plot in ("loss.png", "position.png", "runs/titans/seed1/eval-lm.png", "runs/titans/seed1-mqar/eval-mqar.png"):
        assert (done / plot).read_bytes().startswith(PNG), plot


def test_an_interrupted_comparison_continues_and_gives_the_same_numbers(done, tmp_path, monkeypatch, capsys):
    out = tmp_path / "again"
    real_train, real_eval = training.train, registry.evaluate_run
    calls = []

    def train(*args, **kw):
        calls.append((kw["out_dir"].relative_to(out / "runs").as_posix(), kw["resume"]))
        if len(calls) == 3:  # the third run stops after a checkpoint (titans: 16 steps, one every 8)
            def stop(step, loss):
                if step == 10:
                    raise KeyboardInterrupt
            kw["on_step"] = stop
        return real_train(*args, **kw)

    evaluated = []
    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(registry, "evaluate_run", lambda task, folder, *a, **kw: (
        evaluated.append(f"{folder.relative_to(out / 'runs').as_posix()}:{task.name}"),
        real_eval(task, folder, *a, **kw))[1])
    assert main([*ARGV, "--out", str(out)]) == 130
    assert "interrupted: the same command continues the comparison" in capsys.readouterr().err
    assert load_checkpoint(out / "runs" / "titans" / "seed0").step == 8
    first = len(calls), len(evaluated)
    assert main([*ARGV, "--out", str(out)]) == 0
    again = calls[first[0]:]
    assert again[0] == ("titans/seed0", True) and all(not resume for _, resume in again[1:])
    assert [f for f, _ in again] == ["titans/seed0", "titans/seed0-mqar", "transformer/seed1",
                                     "transformer/seed1-mqar", "titans/seed1", "titans/seed1-mqar"]
    assert evaluated[first[1]:] == ["titans/seed0:lm", "titans/seed0-mqar:mqar", "transformer/seed1:lm",
                                    "transformer/seed1-mqar:mqar", "titans/seed1:lm", "titans/seed1-mqar:mqar"]
    # the same numbers as the comparison that was never interrupted: each seed's runs are determined
    mine, theirs = (json.loads((d / "compare.json").read_text()) for d in (out, done))
    assert [v["scores"] for v in mine["variants"]] == [v["scores"] for v in theirs["variants"]]
    assert [(r["train"], r["heldout"]) for r in mine["runs"]] == [(r["train"], r["heldout"]) for r in theirs["runs"]]
    # once more: nothing left to do, the same report
    report, count = (out / "report.md").read_bytes(), (len(calls), len(evaluated))
    assert main([*ARGV, "--out", str(out)]) == 0
    assert (len(calls), len(evaluated)) == count and (out / "report.md").read_bytes() == report


@pytest.mark.parametrize("argv, message", [
    (["transformer", "--budget", "512", "--tasks", "lm,nope"], "--tasks lm,nope: no task nope (the tasks: lm,"),
    (["transformer", "titans,context=16", "--budget", "40"], "--budget 40 is too small: the variants' steps"),
    (["transformer", "--budget", "lots"], "--budget lots: give a positive whole number"),
    (["transformer", "transformer", "--budget", "512"], "two variants are named transformer: name them"),
    (["transformer,dim", "--budget", "512"], "variant `transformer,dim`: `dim` is not a setting: write KEY=VALUE"),
    (["nosuch", "--budget", "512"], "variant `nosuch`: no spec `nosuch`"),
    (["b=transformer,dim=64,depth=1", "a=transformer", "--budget", "512", "--params", "10K"],
     f"variant b: {params_of('transformer', dim=64, depth=1):,} parameters, "),
    (["transformer", "titans", "--budget", "512", "--tolerance", "0"],
     f"variant titans: {params_of('titans', dim=16, depth=1):,} parameters, +1.7% from the target "
     f"{params_of('transformer', dim=16, depth=1):,} (the closest any dim and depth reach is "),
    (["transformer", "--budget", "512", "--depths", "0.5"],
     "--depths is an option of the niah task, which this comparison does not run"),
    (["transformer", "--budget", "512", "--seeds", "0"], "--seeds 0: give 1 or more"),
    (["transformer", "--budget", "512", "--tolerance", "-1"], "--tolerance -1.0: give a fraction of 0 or more"),
])
def test_mistakes_are_one_line(argv, message, tmp_path, capsys):
    rc = main(["compare", *argv, *TINY, *QUIET, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_the_help_renders(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--help"])
    assert stop.value.code == 0 and "[NAME=]SPEC[,KEY=VALUE...]" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (["--set", "dim=24"], "holds a run of another comparison (its settings are"),
    (["--budget", "256"], "is already at step 8, past this budget's 4 steps"),
])
def test_a_folder_of_another_comparison_is_refused(done, change, message, capsys):
    before = (done / "report.md").read_bytes()
    rc = main([*ARGV, *change, "--out", str(done)])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1, err
    assert (done / "report.md").read_bytes() == before
