"""The model examples train without diverging: a short version of
benchmarks/stability.py, which trains every model example 1,000 steps at its shipped
settings and at dim 64 and 96, seeds 0-2 (docs/benchmarks.md, "Stability"). Here the
example and size that used to diverge: titans.nl at dim 96 (context 128, batch 8) was
NaN at initialisation for seeds 0 and 1 (docs/semantics.md, "Stable inner rules").
The other examples' steps cost seconds at this size, so they are left to the sweep."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from nldsl.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("seed", [0, 1])
def test_titans_trains_without_diverging_at_dim_96(seed, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        history = train(ROOT / "examples" / "titans.nl", steps=20, out_dir=tmp_path,
                        overrides={"dim": 96, "context": 128, "batch": 8}, seed=seed, eval_every=0, eval_batches=2,
                        ckpt_every=0, sample=0, quiet=True)
    assert history.heldout[20] < history.heldout[0]
