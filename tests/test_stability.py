"""The model examples train without diverging: a short version of
benchmarks/stability.py, which trains every model example 1,000 steps at its shipped
settings and at dim 64 and 96, seeds 0-2 (docs/benchmarks.md, "Stability"). Here every
model example trains 20 steps at dim 96 (context 128, batch 8), where titans.nl was NaN
at initialisation for seeds 0 and 1 before its stable rates (docs/semantics.md,
"Stable inner rules"). hope.nl's divergence took a few hundred steps to show (seeds 1
and 2 at dim 64), too long for this suite: the sweep is its test."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

from nldsl.train import train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import stability  # noqa: E402  (the sweep's own list of models and its way to train one)

RUNS = [(name, 0) for _, name in stability.models()] + [("titans", 1)]


@pytest.mark.slow  # about 5 minutes of one core: `make test-slow`
@pytest.mark.parametrize("name, seed", RUNS)
def test_every_model_example_trains_at_dim_96(name, seed, tmp_path):
    file = dict((n, f) for f, n in stability.models())[name]
    (tmp_path / "specs").mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        history = train(stability.alone(file, name, tmp_path / "specs"), steps=20, out_dir=tmp_path / "run",
                        overrides=stability.SIZES["dim 96"], seed=seed, eval_every=0, eval_batches=2, ckpt_every=0,
                        sample=0, quiet=True)
    assert history.heldout[20] < history.heldout[0]
