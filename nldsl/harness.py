"""A run folder as a model of EleutherAI's lm-evaluation-harness (`lm_eval`), registered
as `nldsl`: `python -m nldsl.lm_eval --model nldsl --model_args ckpt=runs/hope --tasks ...`
(docs/evaluation.md). Needs the `eval` extra; nothing else in nldsl imports this module.

The harness asks for three things, all answered from the run's own model and tokenizer:

- `loglikelihood`: log p(continuation | context) and whether greedy decoding would
  have produced the continuation;
- `loglikelihood_rolling`: log p(document), every token predicted once, the first from
  the newline that ends a document in nldsl's data (`nldsl data prepare` ends each
  document with one);
- `generate_until`: text after a prompt, until a stop sequence or `max_gen_toks`.

How a long input is fed is what docs/semantics.md says of state across calls: a model
carries its fast state (memories, attention caches, conv tails, positions) from one
call to the next and a sequence fed in pieces gives what one call gives. So every input
is fed whole, in pieces of the run's `context` tokens that carry the state, and nothing
is cut off. The exception is a model with learned absolute positions (`positional`),
which has vectors for its first `context` positions only: its inputs keep their last
`context` tokens, and a document is scored in the harness's rolling windows, each from
a fresh state, as the harness scores a transformer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from . import run as runs
from .run import RunError, model_device
from .runtime.errors import NonFiniteLogits
from .runtime.model import continuation
from .train import load_run, run_tokenizer

DOCUMENT_END = b"\n"  # what ends each document in nldsl's data, so what a document follows
SAMPLED = {"temperature", "top_k"}  # what sampling takes; greedy decoding needs neither


@register_model("nldsl")
class NLDSLModel(TemplateLM):
    """The model of a run folder. Model args: `ckpt=DIR` (required), `spec=FILE` (build from
    this spec instead of the one stored in the checkpoint, as `nldsl eval FILE`),
    `device=auto|cpu|cuda|cuda:N`, `batch_size=N|auto` (auto: the run's `batch`),
    `precision=fp32|bf16|fp16`, `seed=N` (for requests that sample)."""

    def __init__(self, ckpt: str | None = None, spec: str | None = None, device: str | None = "auto",
                 batch_size: int | str | None = None, precision: str = "fp32", seed: int = 0,
                 max_batch_size: int | None = None, model=None, tokenizer=None):
        super().__init__()
        if model is None:
            if ckpt is None:
                raise RunError("the nldsl model needs its run folder: --model_args ckpt=DIR")
            model, checkpoint = load_run(str(ckpt), None if spec is None else str(spec), device)
            tokenizer = run_tokenizer(checkpoint, str(ckpt))
        elif tokenizer is None:
            raise RunError("a model given as an object needs its tokenizer (nldsl.tokenizer)")
        self.model, self.tok = model, tokenizer
        self.precision = runs.precision(precision)
        self.seed = int(seed)
        self.window = int(model.settings["context"])
        self.positions = learned_positions(model)
        self.batch = _batch_size(batch_size, int(model.settings.get("batch", 1)), max_batch_size)
        self._device = model_device(model)
        ids = self.tok.encode([DOCUMENT_END]).tolist()
        if not ids:
            raise RunError(f"the tokenizer {self.tok.name} has no token for a newline, which nldsl's documents "
                           f"end with: the harness needs one to start a document from")
        self.newline = ids[-1]

    # --- what TemplateLM asks of a model ----------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.newline  # no end-of-text token: documents end with a newline

    @property
    def prefix_token_id(self) -> int:
        return self.newline

    @property
    def max_length(self) -> int:
        return self.positions or self.window

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode([string.encode()]).tolist()  # no special tokens to add

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids).decode("utf-8", errors="replace")

    # --- scoring ------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = self.score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        for (key, _, _), answer in zip(requests, scores):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pieces, owner = [], []  # a document's pieces: one, or its windows for learned positions
        for i, (text,) in enumerate(r.args for r in requests):
            ids = self.tok_encode(text)
            if self.positions is None:
                windows = [([self.newline], ids)] if ids else []
            else:
                windows = [make_disjoint_window(w) for w in
                           get_rolling_token_windows(ids, self.newline, self.positions, context_len=1)]
            pieces += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self.score(pieces, disable_tqdm)):
            totals[i] += logprob
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether each continuation token is the likeliest) for
        each (context ids, continuation ids), in batches of similar lengths, right-padded: the
        models are causal, so what follows a sequence's end changes none of its predictions."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        seqs = []
        for ctx, cont in pairs:
            if self.positions is not None and len(cont) > self.positions:
                raise RunError(f"a continuation of {len(cont)} tokens is longer than the {self.positions} positions "
                               f"the model has learned vectors for")
            whole = (ctx + cont)[-(self.positions + 1):] if self.positions is not None else ctx + cont
            seqs.append((whole[:-1], whole[1:], len(cont)))
        order = sorted(range(len(pairs)), key=lambda i: -len(seqs[i][0]))  # batches of similar lengths
        for start in tqdm(range(0, len(order), self.batch), disable=disable_tqdm, desc="nldsl scoring"):
            rows = order[start:start + self.batch]
            width = len(seqs[rows[0]][0])
            x = torch.full((len(rows), width), self.newline, dtype=torch.long)
            y = torch.full_like(x, self.newline)
            scored = torch.zeros_like(x, dtype=torch.bool)
            for r, i in enumerate(rows):
                inputs, targets, n = seqs[i]
                x[r, :len(inputs)], y[r, :len(targets)] = torch.tensor(inputs), torch.tensor(targets)
                scored[r, len(inputs) - n:len(inputs)] = True
            logprob = torch.zeros(len(rows), dtype=torch.float64)
            greedy = torch.ones(len(rows), dtype=torch.bool)
            for logits, cut, _ in self._stream(x):
                yw, sw = y[:, cut].to(logits.device), scored[:, cut].to(logits.device)
                lp = F.log_softmax(_wide(logits), -1).gather(-1, yw[..., None])[..., 0]
                logprob += (lp * sw).sum(1, dtype=torch.float64).cpu()
                # the likeliest of the tokenizer's ids, as generation picks (`runtime.model.pick`)
                best = logits[..., :self.tok.vocab_size].argmax(-1)
                greedy &= ((best == yw) | ~sw).all(1).cpu()
            for r, i in enumerate(rows):
                out[i] = (float(logprob[r]), bool(greedy[r]))
        return out

    def _stream(self, x: torch.Tensor, state=None):
        """The logits of the tokens `x` [B, T], fed `context` tokens a call with the state carried
        (what one call would give: docs/semantics.md): per call, its logits, the slice of x it
        covers and the state after it."""
        for start in range(0, x.shape[1], self.window):
            cut = slice(start, start + self.window)
            with runs.autocast(self._device, self.precision):
                logits, state = self.model(x[:, cut].to(self._device), state)
            _finite(logits)
            yield logits, cut, state

    # --- generation ---------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs = []
        for i, (context, gen_kwargs) in enumerate(r.args for r in requests):
            kw = normalize_gen_kwargs(dict(gen_kwargs), default_max_gen_toks=256)
            until = handle_stop_sequences(kw.pop("until", None), None)
            n, temperature = int(kw.pop("max_gen_toks")), float(kw.pop("temperature", 0.0) or 0.0)
            sample = bool(kw.pop("do_sample", False)) and temperature > 0
            top_k = kw.pop("top_k", None) if sample else None
            top_k = None if top_k is None else int(top_k)
            unknown = sorted(set(kw) - SAMPLED) if sample else []
            if unknown:
                raise RunError(f"the nldsl model samples with temperature and top_k only, not "
                               f"{', '.join(unknown)}")
            ids = self.tok_encode(context) or [self.newline]
            if self.positions is not None:  # room for what it generates, and at least one token of prompt
                ids = ids[-max(1, self.positions - n):]
                n = min(n, self.positions - len(ids))
            settings = (len(ids), n, temperature if sample else 0.0, top_k, tuple(until))
            jobs.append((settings, ids, i))
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list] = {}  # prompts of one length and settings run as one batch
        for settings, ids, i in jobs:
            groups.setdefault(settings, []).append((ids, i))
        batches = [(s, group[k:k + self.batch]) for s, group in groups.items()
                   for k in range(0, len(group), self.batch)]
        for settings, batch in tqdm(batches, disable=disable_tqdm, desc="nldsl generating"):
            texts = self._generate([ids for ids, _ in batch], *settings[1:])
            for (ids, i), text in zip(batch, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, prompts: list[list[int]], n: int, temperature: float, top_k: int | None,
                  until: tuple[str, ...]) -> list[str]:
        """Up to `n` tokens after each prompt (all of one length), each fed back with the state
        carried as `nldsl generate` does, cut before the first stop sequence."""
        made: list[list[int]] = [[] for _ in prompts]
        if n == 0:
            return ["" for _ in prompts]
        tokens = continuation(self.model, torch.tensor(prompts, device=self._device), temperature=temperature,
                              top_k=top_k, generator=torch.Generator().manual_seed(self.seed),
                              vocab=self.tok.vocab_size, chunk=self.window)
        done = [False] * len(prompts)
        try:
            with runs.autocast(self._device, self.precision):
                for step, column in enumerate(tokens):
                    for r in range(len(prompts)):
                        if not done[r]:
                            made[r].append(int(column[r]))
                            done[r] = step + 1 == n or any(s in self.tok_decode(made[r]) for s in until)
                    if all(done):
                        break
        except NonFiniteLogits:
            raise RunError("the model's predictions are NaN or Inf: its outputs are not finite") from None
        return [_cut(self.tok_decode(m), until) for m in made]

    def get_model_info(self) -> dict:
        return {"model": self.model.name, "tokenizer": self.tok.name, "context": self.window,
                "learned_positions": self.positions}


def learned_positions(model) -> int | None:
    """How many positions the model has learned vectors for (`positional`, `context` of them),
    or None when it has none and so reads any position. Each module records how its
    parameters were made (the role of each) in `__made__` (compiler/backends/fx.py)."""
    rows = [shape[0] for m in model.modules() for _, role, shape, _ in m.__dict__.get("__made__", ())
            if role == "position"]
    return min(rows) if rows else None


def _batch_size(given, run_batch: int, most: int | None) -> int:
    """`batch_size=N`, or `auto` (or nothing): the run's training batch, at most `max_batch_size`."""
    if given is None or str(given).startswith("auto"):
        size = run_batch
    else:
        try:
            size = int(given)
        except ValueError:
            raise RunError(f"batch_size={given}: give a whole number of sequences, or auto") from None
    if most is not None:
        size = min(size, int(most))
    if size < 1:
        raise RunError(f"batch_size={given}: give at least 1 sequence")
    return size


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 at least (autocast's bf16 or fp16 would round the log-probabilities)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _finite(logits: torch.Tensor) -> None:
    if not torch.isfinite(logits).all():
        raise RunError("the model's predictions are NaN or Inf: its outputs are not finite")


def _cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first stop sequence it holds."""
    return text[:min((text.index(s) for s in until if s in text), default=len(text))]


__all__ = ["NLDSLModel", "learned_positions"]
