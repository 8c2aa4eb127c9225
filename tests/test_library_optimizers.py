"""Every optimizer of the library trains at its default hyperparameters, and its
first step is of the order of its learning rate.

Each spec in examples/optim/ (the glob picks up new ones) trains (a) a small MLP
regression, a plain torch model, for 100 steps, and (b) a small `.nl` model,
linear_attention.nl at dim 16, context 16, depth 1, with its `optimizer` line
replaced by the spec's name, for 30 steps on a fixed byte sequence; both must end
below the loss they started from. The first step's largest change of any weight is
checked against `lr` by the kind of update (FIRST_STEP). M3 also trains a small HOPE,
which the printed algorithm (m3_literal) turns non-finite.
"""
import math
import re

import pytest
import torch
from torch import nn

import nldsl
from nldsl.runtime.errors import NonFiniteError

from conftest import ROOT

LIBRARY = sorted(p.stem for p in (ROOT / "examples" / "optim").glob("*.nl"))

# The first step's max |ΔW|, by how the update is formed:
# - "gradient": lr times something of the gradient's own size (SGD; momentum, whose
#   buffer is g at step 1; the delta-rule and deep momenta, which start near m(g) = g).
#   So max |ΔW| / (lr · max |g|) must lie in [0.1, 10].
# - "normalised": Adam's m̂/√v̂ is ±1 at step 1, and a Newton-Schulz output (Muon, M3)
#   has singular values near 1 (at most about 1.2), so its entries are at most about
#   1.2, and its largest entry is at least their RMS, 1/√max(rows, cols) ≥ 1/√32 for
#   the matrices here. Muon scales by √max(1, rows/cols), at most 4 (the 256 × 16
#   embedding and head), and M3 adds α = 0.5 times the slow term. So max |ΔW| / lr
#   must lie in [0.1, 10], whatever the gradient's size.
# - "unscaled": the literal reading of M3 divides an orthogonalised matrix by √V, so
#   its step is lr/|g| per entry, as its header says: the test holds that claim
#   (more than 100·lr) instead of a bound.
FIRST_STEP = {"sgd": "gradient", "sgd_momentum": "gradient", "delta_momentum": "gradient", "dmgd": "gradient",
              "adam": "normalised", "adamw": "normalised", "muon": "normalised", "m3": "normalised",
              "m3_literal": "unscaled"}

TEXT = (ROOT / "examples" / "linear_attention.nl").read_text()
BYTES = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 3))
TOKENS = torch.stack([BYTES[i:i + 17] for i in range(0, 96, 12)])  # 8 windows of 16 tokens and their targets


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_every_library_optimizer_has_a_first_step_kind():
    assert sorted(FIRST_STEP) == LIBRARY


def train(model, opt, loss_of, steps):
    """The losses of `steps` steps, and the first step's max |ΔW| and max |g|."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        if step == 0:
            grad = max(p.grad.abs().max().item() for p in params if p.grad is not None)
        opt.step()
        losses.append(loss.item())
        if step == 0:
            moved = max((p.detach() - b).abs().max().item() for p, b in zip(params, before))
    assert all(math.isfinite(x) for x in losses), losses
    return losses, moved, grad


def check_first_step(name: str, lr: float, moved: float, grad: float) -> None:
    kind = FIRST_STEP[name]
    if kind == "gradient":
        assert 0.1 <= moved / (lr * grad) <= 10, (moved, lr, grad)
    elif kind == "normalised":
        assert 0.1 <= moved / lr <= 10, (moved, lr)
    else:
        assert moved > 100 * lr, (moved, lr)


@pytest.mark.parametrize("name", LIBRARY)
def test_trains_a_small_mlp(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen)
    opt = nldsl.compile_optimizer(ROOT / "examples" / "optim" / f"{name}.nl", model.parameters())
    losses, moved, grad = train(model, opt, lambda: ((model(X) - Y) ** 2).mean(), 100)
    assert losses[-1] < losses[0], losses
    check_first_step(name, opt.spec.hparams["lr"], moved, grad)


@pytest.mark.parametrize("name", LIBRARY)
def test_trains_a_small_nl_model(name):
    text, n = re.subn(r"(?m)^  optimizer .*$", f"  optimizer {name}", TEXT)
    assert n == 1
    torch.manual_seed(0)
    model = nldsl.compile(text, dim=16, context=16, depth=1, batch=8)
    opt = model.configure_optimizer()
    (part, _), = opt.parts
    assert part.spec.name == name  # the library's spec, found by its name
    losses, moved, grad = train(model, opt, lambda: model.loss(TOKENS), 30)
    assert losses[-1] < losses[0], losses
    check_first_step(name, part.spec.hparams["lr"], moved, grad)



def test_m3_trains_hope_where_the_printed_algorithm_breaks_it():
    """HOPE (dim 16) with optim/m3.nl takes steps of the order of lr and its loss goes
    down; with the printed algorithm (m3_literal) its first step moves weights by
    about 7e5·lr and by the fifth step HOPE's inner state is not finite."""
    def hope(optimizer):
        text, n = re.subn(r"(?m)^  optimizer .*$", f"  optimizer {optimizer}", (ROOT / "examples" / "hope.nl").read_text())
        assert n == 1
        torch.manual_seed(0)
        model = nldsl.compile(text, dim=16, heads=2, context=64, depth=1, batch=2)
        return model, model.configure_optimizer()

    data = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 4))
    tokens = torch.stack([data[:65], data[40:105]])
    model, opt = hope("m3")
    losses, moved, grad = train(model, opt, lambda: model.loss(tokens), 4)
    assert losses[-1] < losses[0], losses
    check_first_step("m3", opt.parts[0][0].spec.hparams["lr"], moved, grad)
    model, opt = hope("m3_literal")
    with pytest.raises(NonFiniteError):
        train(model, opt, lambda: model.loss(tokens), 6)
