"""Generation carries the fast state: `model.generate` picks what a model fed the whole
text again would pick, and what it holds between tokens stays the same size however
long the prompt, except an attention memory's keys (benchmarks/generation.py measures
time and memory at long prompts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nldsl
import nldsl.train as tr

EXAMPLES = Path(__file__).parent.parent / "examples"
SIZES = dict(dim=16, heads=2, context=64, depth=1)
MODELS = ["hope.nl", "titans.nl", "gated_deltanet.nl", "transformer.nl", "cms.nl"]


def _model(name: str):
    path = EXAMPLES / name
    settings = nldsl.check(path).models[0].settings
    torch.manual_seed(0)
    return nldsl.compile(path, **{k: v for k, v in SIZES.items() if k in settings}).double().eval()


@pytest.mark.parametrize("name", MODELS)
def test_generation_picks_what_the_whole_text_fed_again_picks(name):
    model = _model(name)
    prompt = torch.randint(0, 256, (2, 75))  # fed 64 tokens a call: a chunk and a piece
    made = model.generate(prompt, 6)
    text = prompt
    for i in range(6):  # from scratch every time: the context fed again, no state kept
        with torch.no_grad():
            logits, _ = model(text)
        want = logits[:, -1].argmax(-1)
        assert torch.equal(made[:, i], want), i
        text = torch.cat([text, want[:, None]], 1)


def test_sampling_is_a_function_of_the_seed_and_keeps_to_the_top_k():
    model = _model("titans.nl")
    prompt = torch.randint(0, 256, (1, 10))
    runs = [model.generate(prompt, 12, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    text = prompt
    for token in runs[0][0]:
        with torch.no_grad():
            logits, _ = model(text)
        assert token in torch.topk(logits[0, -1], 3).indices
        text = torch.cat([text, token.view(1, 1)], 1)
    few = model.generate(prompt, 20, temperature=5.0, vocab=4, generator=torch.Generator().manual_seed(0))
    assert int(few.max()) < 4  # a tokenizer's ids only


def test_nldsl_generate_is_model_generate_in_bytes():
    model = _model("gated_deltanet.nl")
    assert tr.generate(model, b"hello world", 9, temperature=0) == bytes(
        model.generate(torch.tensor([list(b"hello world")]), 9)[0].tolist())


@pytest.mark.parametrize("name,grows", [("hope.nl", False), ("titans.nl", False), ("gated_deltanet.nl", False),
                                        ("transformer.nl", True)])
def test_the_carried_state_does_not_grow_with_the_prompt(name, grows):
    model = _model(name)
    sizes = []
    for length in (64, 192):
        with torch.no_grad():
            state = None
            for start in range(0, length, 32):  # fed as generation feeds a prompt
                _, state = model(torch.randint(0, 256, (1, 32)), state)
        sizes.append(state.nbytes())
    if grows:  # the keys and values of every token seen: 2 × dim numbers a token a layer, in float64
        assert sizes[1] - sizes[0] >= 128 * 2 * SIZES["dim"] * 8
    else:
        assert sizes[0] == sizes[1] > 0


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        _model("titans.nl").generate(torch.zeros(1, 0, dtype=torch.long), 3)
