"""Train, evaluate and sample language models compiled from specs, on bytes or tokens.

A run lives in one folder: `model.safetensors` (the weights, the optimizer's state and
the run's metadata, with a sha256 of all of it, rewritten atomically), `losses.csv`,
`loss.png`, `sample.txt`, `train.lock` (held while a training writes the folder) and,
unless the tokens are bytes, the tokenizer's file (nldsl/tokenizer.py).
`resume` continues from the checkpoint and reproduces the uninterrupted run exactly:
batches are a function of (seed, step) (see data.py) and the checkpoint holds the rest.
Only the interface of `nldsl.compile` is used: `model(tokens, state) -> (logits, state)`,
`model.settings` and `model.configure_optimizer()`.

A run folder may come from someone else, so reading one never follows its paths:
eval and generate build the model from the spec text stored in the checkpoint (which
may import nldsl's library only), and every file is read bounded and only if regular.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from . import run as runs
from . import sources
from .data import PYDOC, Corpus, DataError
from .sources import data_key
from .files import FileError, atomic_write, read_limited, reason
from .logs import RunLogs, bits, require_wandb
from .run import MAX_CHECKPOINT_BYTES, RunError, build_model, check_inner_clip, check_overrides, model_device
from .runtime.regions import regional
from .tokenizer import (BYTE_TOKENIZER, BYTES, JSON_FILE, MAX_TOKENIZER_BYTES, SENTENCEPIECE_FILE, Tokenizer,
                        TokenizerError, bpe_vocab, from_bytes)
from . import training
from .training import Training

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None

CHECKPOINT = "model.safetensors"
LOCK = "train.lock"
FORMAT = "nldsl-run/2"
UNVERIFIED_FORMATS = ("nldsl-run/1",)  # older checkpoints, without a sha256: still loaded
TEMPERATURE = 0.8  # samples: a little sharper than the model's distribution



class TrainError(RunError):
    """A mistake in what was asked (no checkpoint, an optimizer for a model) or a diverged run."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's or the data's doing: one `error:` line, no traceback."""
    return (RunError, DataError, TokenizerError, FileError, *_nonfinite_errors())


def _nonfinite_errors() -> tuple[type[BaseException], ...]:
    """The backend's error for NaN/Inf inside an inner update, where the backend has one."""
    try:
        from .runtime import errors
    except ImportError:
        return ()
    cls = getattr(errors, "NonFiniteError", None)
    return (cls,) if cls is not None else ()


@dataclass
class History:
    train: list[float] = field(default_factory=list)  # train[i]: the loss of step i + 1
    heldout: dict[int, float] = field(default_factory=dict)  # after that many steps


@dataclass
class Checkpoint:
    step: int
    spec_path: str  # where the spec was read from when training: shown, never read by eval or generate
    spec_text: str
    overrides: dict
    seed: int
    data: str  # `pydoc` or an absolute path (as given, in nldsl-run/1)
    eval_batches: int
    history: History
    model: dict[str, torch.Tensor]
    optimizer: dict
    inner_clip: float | None = None
    data_sha256: str | None = None  # of the data trained on; None in nldsl-run/1
    tokenizer: str = BYTES  # `bytes`, `bpe:VOCAB`, or the path of the file it was read from: shown, never read
    tokenizer_file: str | None = None  # its file in the run folder, tokenizer.json or tokenizer.model
    tokenizer_sha256: str | None = None  # of that file, to find one that does not belong to the run
    model_name: str | None = None  # which model of the spec (`FILE:MODEL`); None: its first
    training: Training | None = None  # lr, schedule, clipping, accumulation; None: from before them (constant)
    scheduler: dict | None = None  # the learning-rate scheduler's state_dict()


def describe(loss: float, unit: str = "byte") -> str:
    return f"loss {loss:.4f} nats, {bits(loss):.4f} bits/{unit}"


def default_out(spec_path: str | Path) -> Path:
    return Path("runs") / Path(spec_path).stem


def _norms(model) -> dict[str, float]:
    """Each parameter's norm, computed in float64 (one sync for all): NaN or Inf exactly
    where the parameter holds one, since float32 squares cannot overflow float64."""
    named = dict(model.named_parameters())
    if not named:
        return {}
    norms = torch.stack([torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in named.values()])
    return dict(zip(named, distributed.whole(norms).tolist()))  # FSDP: the norms of whole parameters


def _first_nonfinite(norms: dict[str, float]) -> str | None:
    return next((name for name, n in norms.items() if not math.isfinite(n)), None)


def _size(model, name: str) -> int:
    return int(model.settings[name])


@torch.no_grad()
def evaluate(model, corpus: Corpus, batches: int, precision: str = "fp32") -> float:
    """Mean next-token loss, in nats, over the same held-out windows every time, the
    forward in `precision`."""
    if batches < 1:
        raise TrainError(f"evaluation needs at least one held-out batch, not {batches}")
    batch, context = _size(model, "batch"), _size(model, "context")
    x, y = corpus.heldout_windows(batches * batch, context)
    was_training = model.training
    model.eval()
    try:
        with runs.autocast(model_device(model), precision):
            total = sum(runs.loss(model, xb, yb, "sum").item() for xb, yb in zip(x.split(batch), y.split(batch)))
    finally:
        model.train(was_training)
    return total / int((y != runs.IGNORE).sum())  # a synthetic task scores some positions only


@torch.no_grad()
def generate(model, prompt: bytes, n: int, temperature: float = TEMPERATURE, top_k: int | None = None,
             seed: int = 0, tokenizer: Tokenizer = BYTE_TOKENIZER, precision: str = "fp32") -> bytes:
    """The text of `n` tokens (bytes, by default) after `prompt`: the prompt is fed once, then one
    token at a time, carrying the model's state instead of feeding the context again.
    Temperature 0 picks the likeliest token; the forward runs in `precision`."""
    unit = tokenizer.unit
    ids = tokenizer.encode([prompt]).tolist()
    if not ids:
        raise TrainError(f"the prompt is empty: give at least one {unit} to start from")
    if n < 0:
        raise TrainError(f"-n {n}: the number of {unit}s to generate cannot be negative")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise TrainError(f"--temperature {temperature}: give 0 (the likeliest {unit}) or a positive number")
    if top_k is not None and top_k < 1:
        raise TrainError(f"--top-k {top_k}: sample among at least 1 {unit}")
    from .runtime.errors import NonFiniteLogits, PositionError
    from .runtime.model import generate as tokens_after
    device = model_device(model)
    try:
        with runs.autocast(device, precision):
            out = tokens_after(model, torch.tensor([ids], device=device), n, temperature=temperature, top_k=top_k,
                                 generator=torch.Generator().manual_seed(seed), vocab=tokenizer.vocab_size)
    except PositionError as e:  # a model of learned positions goes no further than its context
        raise TrainError(f"cannot generate {n} {unit}s after a prompt of {len(ids)}: {e}") from None
    except NonFiniteLogits as e:
        raise TrainError(f"the model's prediction after {e.seen} {unit}s is NaN or Inf: its outputs are "
                         f"not finite") from None
    return tokenizer.decode(out[0].tolist())


# --- checkpoints -------------------------------------------------------------------
# safetensors holds tensors and string metadata. The optimizer's state (nested dicts,
# lists, numbers and tensors) is stored as its tensors under `optimizer.N` and the rest
# as JSON, where {"__tensor__": key}, {"__tuple__": [...]} and {"__items__": [[k, v]...]}
# (a dict whose keys are not all strings, like `state`'s parameter ids) keep their types.

def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy: safetensors refuses views and tensors that share memory."""
    return t.detach().cpu().clone(memory_format=torch.contiguous_format)


def _flatten(obj, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = f"optimizer.{len(tensors)}"
        tensors[key] = _own(obj)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} from the optimizer's state in a checkpoint")


def _unflatten(obj, tensors: dict):
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__items__"]}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def save_checkpoint(out: Path, ckpt: Checkpoint, world: distributed.World | None = None) -> None:
    """Write `ckpt` (its `model` and `optimizer` are state dicts) as `out/model.safetensors`,
    with the sha256 of its content, so that corruption is found when it is loaded. In a job
    (`world`) rank 0 writes it; under FSDP every rank writes its shards of the tensors into
    `out/shards-STEP/` and the file holds the metadata, naming the shards and their sha256."""
    from safetensors.torch import save
    world = world or distributed.World()
    if not (world.writer or world.fsdp):
        return
    tensors = {f"model.{k}": _own(v) for k, v in ckpt.model.items()}
    opt = {}
    opt_json = _flatten(ckpt.optimizer, opt)
    tensors.update(opt)
    meta = {"format": FORMAT, "step": str(ckpt.step), "seed": str(ckpt.seed), "data": ckpt.data,
            "data_sha256": ckpt.data_sha256 or "", "eval_batches": str(ckpt.eval_batches),
            "spec_path": ckpt.spec_path, "spec": ckpt.spec_text, "overrides": json.dumps(ckpt.overrides),
            "inner_clip": json.dumps(ckpt.inner_clip), "optimizer": json.dumps(opt_json),
            "training": json.dumps(ckpt.training and dataclasses.asdict(ckpt.training)),
            "scheduler": json.dumps(ckpt.scheduler),
            "tokenizer": ckpt.tokenizer, "tokenizer_file": ckpt.tokenizer_file or "",
            "tokenizer_sha256": ckpt.tokenizer_sha256 or "", "model": ckpt.model_name or "",
            "history": json.dumps({"train": ckpt.history.train, "heldout": sorted(ckpt.history.heldout.items())})}
    if world.fsdp:
        meta["shards"], tensors = world.write_shards(out, ckpt.step, tensors), {}
        if not world.writer:
            return
    meta["sha256"] = _digest(meta, tensors)
    atomic_write(out / CHECKPOINT, save(tensors, metadata=meta))
    distributed.drop_stale_shards(out, meta.get("shards"))


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a checkpoint's content: its metadata, then each tensor's name, dtype, shape
    and bytes, in name order (what the file holds, independent of how it lays it out)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def load_checkpoint(out: str | Path) -> Checkpoint:
    """The checkpoint in the run folder `out`, verified against its sha256; anything
    missing, corrupt or malformed is a TrainError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    path = Path(out) / CHECKPOINT
    if not os.path.lexists(path):
        raise TrainError(f"no checkpoint in {out}: {path} does not exist")
    raw = read_limited(path, MAX_CHECKPOINT_BYTES, "checkpoint")
    try:
        tensors = load(raw)
        meta = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as e:
        raise TrainError(f"cannot read the checkpoint {path}: {e}") from None
    form = meta.get("format")
    if form == FORMAT:
        if meta.pop("sha256", None) != _digest(meta, tensors):
            raise TrainError(f"the checkpoint {path} is corrupt: its content does not match the sha256 stored in it")
    elif form in UNVERIFIED_FORMATS:
        print(f"note: {path} is an {form} checkpoint, which holds no sha256: it is loaded unverified",
              file=sys.stderr)
    else:
        raise TrainError(f"{path} is not an nldsl checkpoint (format {form!r}, expected {FORMAT!r})")
    if form == FORMAT and "shards" in meta:  # an FSDP run's: its tensors are in the shards it names
        tensors = {**tensors, **distributed.read_shards(Path(out), meta["shards"], path)}
    return _from_metadata(meta, tensors, path)


_REQUIRED = object()


def _from_metadata(meta: dict[str, str], tensors: dict, path: Path) -> Checkpoint:
    """The checkpoint a file's metadata and tensors describe, every field checked: the
    sha256 finds corruption, not forgery, so a file may hold anything."""
    def read(key: str, parse, default=_REQUIRED):
        if key not in meta:
            if default is _REQUIRED:
                raise TrainError(f"the checkpoint {path} is malformed: it has no `{key}`")
            return default
        try:
            return parse(meta[key])
        except (RunError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise TrainError(f"the checkpoint {path} is malformed: `{key}`: {detail}") from None

    step = read("step", _count)
    history = read("history", _history)
    if len(history.train) != step:
        raise TrainError(f"the checkpoint {path} is malformed: its history has {len(history.train)} training "
                         f"losses for {step} steps")
    return Checkpoint(
        step=step, spec_path=read("spec_path", str), spec_text=read("spec", str),
        overrides=read("overrides", lambda s: check_overrides(json.loads(s))), seed=read("seed", int),
        data=read("data", _nonempty), eval_batches=read("eval_batches", _positive, 8), history=history,
        model={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer=read("optimizer", lambda s: _unflatten(json.loads(s), tensors)),
        inner_clip=read("inner_clip", lambda s: check_inner_clip(json.loads(s)), None),
        training=read("training", lambda s: training.stored(json.loads(s)), None),
        scheduler=read("scheduler", _scheduler_state, None),
        data_sha256=read("data_sha256", str, None) or None, tokenizer=read("tokenizer", _nonempty, BYTES),
        tokenizer_file=read("tokenizer_file", _tokenizer_file, None) or None,
        tokenizer_sha256=read("tokenizer_sha256", str, None) or None, model_name=read("model", str, None) or None)


def _scheduler_state(s: str) -> dict | None:
    state = json.loads(s)
    if state is not None and not isinstance(state, dict):
        raise ValueError("it is not an object")
    return state


def _tokenizer_file(s: str) -> str:
    if s not in ("", JSON_FILE, SENTENCEPIECE_FILE):
        raise ValueError(f"it is not {JSON_FILE}, {SENTENCEPIECE_FILE} or empty")
    return s


def _count(s: str) -> int:
    n = int(s)
    if n < 0:
        raise ValueError(f"{n} is negative")
    return n


def _positive(s: str) -> int:
    n = int(s)
    if n < 1:
        raise ValueError(f"{n} is less than 1")
    return n


def _nonempty(s: str) -> str:
    if not s:
        raise ValueError("it is empty")
    return s


def _history(s: str) -> History:
    h = json.loads(s)
    return History([float(v) for v in h["train"]], {int(step): float(v) for step, v in h["heldout"]})


def restore(model, ckpt: Checkpoint, where: str | Path, optimizer=None) -> None:
    """Load a checkpoint's weights (and optimizer state); a model that does not fit is the user's mistake."""
    try:
        model.load_state_dict(ckpt.model)
        if optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        # load_state_dict's message is a header line, then one line per mismatch: show the first
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise TrainError(f"the checkpoint in {where} does not fit this model: {detail[:200]}{more}") from None


def checkpoint_source(ckpt: Checkpoint, spec_path: str | Path | None = None) -> Path | str:
    """What to build a checkpoint's model from: the spec file `spec_path` if one is named,
    else the spec text stored in the checkpoint. Never the file the run was trained from:
    a run folder from elsewhere could point that anywhere."""
    if spec_path is None:
        return _stored_spec(ckpt)
    path = runs.resolve_spec(spec_path)[0]  # an example's name too; the model is the run's
    if path.is_file() and not _holds(path, ckpt.spec_text):
        print(f"note: {path} has changed since this checkpoint was trained", file=sys.stderr)
    return path


def _holds(path: Path, text: str) -> bool:
    """Whether the file `path` holds exactly `text` (read no further than that)."""
    want = text.encode()
    try:
        return read_limited(path, len(want), "spec") == want
    except FileError:
        return False


def _stored_spec(ckpt: Checkpoint) -> str:
    """The spec text stored in a checkpoint, to build its model from. It may import only
    specs of nldsl's library, so that a run folder cannot make nldsl read other files."""
    from .compiler import ast
    from .compiler.diagnostics import Report
    from .compiler.load import library_root
    from .compiler.parse import parse
    text = ckpt.spec_text if ckpt.spec_text.endswith("\n") else ckpt.spec_text + "\n"  # never taken for a path
    module = parse(text, "<checkpoint>", Report())  # None on a syntax error, which building reports
    library = library_root().resolve()
    for item in module.items if module is not None else ():
        if isinstance(item, ast.Import) and not _in_library(item.path, library):
            raise TrainError(f'the spec stored in the checkpoint imports "{item.path}", which is not a spec of '
                             f"nldsl's library: give the spec file to build from (FILE)")
    return text


def _in_library(name: str, library: Path) -> bool:
    """Whether `import "name"` in spec text, looked up in the current directory and then in
    the library, finds a file of the library."""
    try:
        found, here = (library / name).resolve(), (Path.cwd() / name).resolve()
        return found.is_file() and found.is_relative_to(library) and (here == found or not here.exists())
    except (OSError, ValueError):
        return False


def load_run(ckpt_dir: str | Path, spec_path: str | Path | None = None, device: str | None = "auto"):
    """A trained model on `device` (runs.device's names) and its checkpoint, ready to evaluate
    or sample (with the run's tokenizer, `run_tokenizer`)."""
    ckpt = load_checkpoint(ckpt_dir)
    model = build_model(checkpoint_source(ckpt, spec_path), ckpt.overrides, ckpt.seed, ckpt.inner_clip,
                        run_tokenizer(ckpt, ckpt_dir), runs.device(device), ckpt.model_name)
    restore(model, ckpt, ckpt_dir)
    bad = _first_nonfinite(_norms(model))
    if bad is not None:
        raise TrainError(f"the checkpoint in {ckpt_dir} holds NaN or Inf in `{bad}`: its weights are not finite")
    model.eval()
    return model, ckpt


def run_tokenizer(ckpt: Checkpoint, ckpt_dir: str | Path) -> Tokenizer:
    """The tokenizer a run was trained with: bytes, or its file in the run folder, which must
    be the one the checkpoint recorded."""
    if ckpt.tokenizer_file is None:
        return BYTE_TOKENIZER
    path = Path(ckpt_dir) / ckpt.tokenizer_file
    raw = read_limited(path, MAX_TOKENIZER_BYTES, "tokenizer")
    if hashlib.sha256(raw).hexdigest() != ckpt.tokenizer_sha256:
        raise TrainError(f"the tokenizer {path} is not the one this run was trained with: its sha256 differs "
                         f"from the checkpoint's")
    return from_bytes(raw, ckpt.tokenizer_file, ckpt.tokenizer)


def run_corpus(ckpt: Checkpoint, data: str | None = None, tokenizer: Tokenizer = BYTE_TOKENIZER) -> Corpus:
    """The data to evaluate a run on (its own unless `data` is given), tokenized as the run
    was, with a note when the run's own data has changed since it was trained on."""
    data = data or ckpt.data
    corpus = sources.load(data, tokenizer)
    if data_key(data) == data_key(ckpt.data) and ckpt.data_sha256 not in (None, corpus.sha256):
        print(f"note: the data {data} has changed since this run was trained on it", file=sys.stderr)
    return corpus


@contextlib.contextmanager
def lock_run(out: Path):
    """Hold the run folder `out` for one training: created if need be, written to at once
    (so a read-only or full folder stops the run before it starts), and locked, so that a
    second training on it stops instead of overwriting. The kernel drops the lock when
    the process ends, however it ends."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot write to --out {out}: {reason(e)}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 40).decode(errors="replace").strip()
                raise TrainError(f"{out} is being trained by another process ({holder or 'pid unknown'}): "
                                 f"wait for it to end, or choose another --out") from None
            except OSError as e:
                raise TrainError(f"cannot lock {out / LOCK}: {reason(e)}") from None
        try:
            tempfile.TemporaryFile(dir=out).close()  # every write makes a new file in the folder
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}\n".encode())
            os.fsync(fd)
        except OSError as e:
            raise TrainError(f"cannot write to --out {out}: {reason(e)}") from None
        yield
    finally:
        os.close(fd)


class _NonFiniteLoss(ArithmeticError):
    pass


def _train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32",
                scaler: torch.amp.GradScaler | None = None, accumulate: int = 1,
                grad_clip: float | None = None) -> tuple[float, float]:
    """One update on one batch, the forward in `precision`; a NaN or Inf loss is refused
    before it reaches the weights. The batch runs as `accumulate` equal micro-batches, each
    loss divided by their number, so the summed gradient is the whole batch's (each sequence
    starts its own fast state, so none sees another); under FSDP only the last one's
    backward reduces across ranks (`World.holding`). With fp16, the gradient scaler scales the loss and skips a step whose
    gradients overflowed; `grad_clip` clips the gradient of all parameters to that norm.
    Returns the loss and the norm of the gradient the optimizer was given, before clipping:
    all ranks' (after DDP's or FSDP's reduction), unscaled."""
    optimizer.zero_grad(set_to_none=True)
    scaling = scaler is not None and scaler.is_enabled()
    total = 0.0
    for i, (xb, yb) in enumerate(zip(x.chunk(accumulate), y.chunk(accumulate))):
        with distributed.World.holding(model, i < accumulate - 1):
            with runs.autocast(model_device(model), precision):
                loss = runs.loss(model, xb, yb)
            if not torch.isfinite(loss):
                raise _NonFiniteLoss(f"the loss is {loss.item()}")
            share = loss / accumulate
            (scaler.scale(share) if scaling else share).backward()
        total += share.item()
    if scaling:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = distributed.whole(torch.nn.utils.get_total_norm([p.grad for p in params]))  # FSDP: its shards'
    if grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
    if scaling:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total, norm.item()


def _resumed(ckpt: Checkpoint, seed, data, overrides, inner_clip, tokenizer, model_name) -> Checkpoint:
    """A resumed run keeps its seed, data, overrides, tokenizer and model (asking for others
    is a mistake), and its inner clip unless a new one is given."""
    if tokenizer is not None and tokenizer != BYTES and bpe_vocab(tokenizer) is None:
        tokenizer = os.path.abspath(tokenizer)  # a file: recorded by its absolute path
    for flag, given, stored in (("--seed", seed, ckpt.seed),
                                ("--data", None if data is None else data_key(data), data_key(ckpt.data)),
                                ("--set", overrides, ckpt.overrides), ("--tokenizer", tokenizer, ckpt.tokenizer),
                                ("FILE:MODEL", model_name, ckpt.model_name)):
        if given is not None and given != stored:
            raise TrainError(f"the run was trained with {flag} {stored!r}, not {given!r}: "
                             f"--resume keeps it (leave {flag} out)")
    return dataclasses.replace(ckpt, inner_clip=inner_clip if inner_clip is not None else ckpt.inner_clip)


def train(spec_path: str | Path, data: str | None = None, steps: int = 1000, out_dir: str | Path | None = None,
          resume: bool = False, overrides: dict | None = None, seed: int | None = None,
          eval_every: int = 100, eval_batches: int = 8, ckpt_every: int = 100, sample: int = 200,
          quiet: bool = False, on_step=None, compile: bool | str = False, inner_clip: float | None = None,
          tokenizer: str | None = None, device: str | None = "auto", precision: str = "fp32",
          lr: float | None = None, lr_schedule: str | None = None, warmup: int | None = None,
          grad_clip: float | None = None, accumulate: int | None = None,
          fsdp: bool = False, backend: str | None = None, dist_timeout: float | None = None,
          wandb: bool = False) -> History:
    """Train a model of `spec_path` on `data` for `steps` steps in all, into `out_dir`.

    `spec_path` is a spec's path or an example's name, with `:MODEL` to pick a model of
    the file (default: its first). `device` is where to train (`auto`: CUDA when there
    is one), `precision` the forward's (fp32, bf16, fp16; docs/performance.md).

    `resume` continues the run in `out_dir` from its checkpoint. `on_step(step, loss)` is
    called after every step, once that step's checkpoint (if any) is written. `compile`
    compiles the training steps with `torch.compile` (the first step compiles;
    docs/performance.md): for a model with task levels, whose whole step as one graph
    unrolls every period and every task gradient, the levels' period steps alone, once
    for every length (nldsl.runtime.regions); for any other model the whole step as
    one graph. `compile="regional"` or `"whole"` picks either for any model. Evaluation,
    checkpoints and the sample use the model as is.
    `inner_clip` clips every inner update to that norm (nldsl.compile's option); it is
    stored in the checkpoint, for eval, generate and resume. `tokenizer` is what
    `--tokenizer` names: `bytes` (the default), `bpe:VOCAB` (trained on the data's training
    part) or a file; a prepared folder brings its own. Its file is kept in the run folder.
    `lr`, `lr_schedule`, `warmup`, `grad_clip` and `accumulate` are the flags of those
    names (nldsl/training.py; None: the spec's setting, else off); the run keeps them.
    A summary is printed before the first step; TensorBoard event files are written into
    `out_dir`, and with `wandb` a Weights & Biases run too (nldsl/logs.py).

    Started by torchrun, each process is a rank of a data-parallel job (nldsl/distributed.py):
    DDP, or FSDP with `fsdp`; `backend` (gloo, nccl) and `dist_timeout` (seconds a rank
    waits for the others) say how the ranks talk. The spec's batch is split among them.
    """
    if steps < 0:
        raise TrainError(f"--steps {steps}: the number of steps cannot be negative")
    if compile not in (False, True, "regional", "whole"):
        raise TrainError(f"compile={compile!r}: give True, False, 'regional' or 'whole'")
    inner_clip = check_inner_clip(inner_clip)
    if wandb:
        require_wandb()  # before anything is written
    given = training.check(lr=lr, lr_schedule=lr_schedule, warmup=warmup, grad_clip=grad_clip, accumulate=accumulate)
    where, precision = runs.device(device), runs.precision(precision)
    spec_path, model_name = runs.resolve_spec(spec_path)
    out = Path(out_dir) if out_dir is not None else default_out(spec_path)
    with contextlib.ExitStack() as held:
        world = distributed.join(where, fsdp, backend, dist_timeout)
        held.callback(world.close)
        held.enter_context(world.quiet())  # rank 0 alone prints
        where, quiet = world.device, quiet or not world.writer
        if resume:
            if not os.path.lexists(out / CHECKPOINT):
                raise TrainError(f"no checkpoint in {out}: {out / CHECKPOINT} does not exist")
            if world.writer:
                held.enter_context(lock_run(out))  # before reading what another training may be rewriting
            ckpt = _resumed(load_checkpoint(out), seed, data, overrides, inner_clip, tokenizer, model_name)
            if steps < ckpt.step:
                raise TrainError(f"the run in {out} is already at step {ckpt.step}: ask for --steps {ckpt.step} "
                                 f"or more")
        spec_text = _read_spec(spec_path)
        if resume:
            if spec_text != ckpt.spec_text:
                print(f"note: {spec_path} has changed since step {ckpt.step} of this run", file=sys.stderr)
            run = dataclasses.replace(ckpt, spec_path=str(spec_path.resolve()), spec_text=spec_text,
                                      eval_batches=eval_batches)
        else:
            run = Checkpoint(step=0, spec_path=str(spec_path.resolve()), spec_text=spec_text,
                             overrides=check_overrides(dict(overrides or {})), seed=seed if seed is not None else 0,
                             data=data_key(data or PYDOC), eval_batches=eval_batches, history=History(), model={},
                             optimizer={}, inner_clip=inner_clip, model_name=model_name)
        if resume:
            corpus = run_corpus(run, tokenizer=run_tokenizer(run, out))
        else:
            corpus = sources.load(data or PYDOC, tokenizer)
            tok = corpus.tokenizer
            run = dataclasses.replace(run, tokenizer=tok.name, tokenizer_file=tok.file, tokenizer_sha256=tok.sha256)
        model = build_model(spec_path, run.overrides, run.seed, run.inner_clip, corpus.tokenizer, where,
                            run.model_name)
        run.data_sha256 = corpus.sha256
        run.training = training.options(given, model.settings, steps, (run.training or Training()) if resume else None)
        world.check(model, precision)  # what FSDP cannot shard stops the run before it writes
        if not resume:
            if world.writer:
                held.enter_context(lock_run(out))  # only now: a mistake in the spec or the data leaves no folder
            if os.path.lexists(out / CHECKPOINT):
                raise TrainError(f"{out} already holds a run: --resume to continue it, or choose another --out")
            if run.tokenizer_file is not None and world.writer:
                atomic_write(out / run.tokenizer_file, corpus.tokenizer.raw)
        optimizer = world.shard(model, model.configure_optimizer())  # FSDP: over this rank's shards
        scheduler = training.scheduler(optimizer, run.training)  # before loading the optimizer, as torch asks
        if resume:
            restore(model, world.localize(ckpt), out, optimizer)
            training.restore(scheduler, ckpt.scheduler, ckpt.step, out)
        corpus = world.share(corpus, _size(model, "batch"), run.training.accumulate)  # this rank's windows
        logs = held.enter_context(RunLogs(out, model, optimizer, corpus, run, precision, wandb))  # prints the summary
        with world.watch(out):
            return _run(model, optimizer, corpus, run, out, steps, eval_every, ckpt_every, sample, quiet, on_step,
                        compile, precision, scheduler, world, logs=logs)


def _read_spec(spec_path: Path) -> str:
    """The spec's text, to store in checkpoints. Text that is not UTF-8 is kept replaced:
    building the model reports it, as it reports every mistake in a spec."""
    from .compiler.parse import MAX_BYTES
    return read_limited(spec_path, MAX_BYTES, "spec").decode("utf-8", errors="replace")


def _run(model, optimizer, corpus: Corpus, run: Checkpoint, out: Path, steps: int, eval_every: int,
         ckpt_every: int, sample: int, quiet: bool, on_step, compile: bool | str, precision: str,
         scheduler=None, world: distributed.World | None = None, *, logs: RunLogs) -> History:
    """The training loop of `train`, with its run folder held. In a job of several ranks
    (`world`) every rank trains, evaluates and samples alike; rank 0 alone writes."""
    world = world or distributed.World()
    start, history, seed, eval_batches = run.step, run.history, run.seed, run.eval_batches
    batch, context, unit = _size(model, "batch"), _size(model, "context"), corpus.tokenizer.unit
    corpus.require(context)
    model.train()
    saved = start if os.path.lexists(out / CHECKPOINT) else None  # a fresh run has none yet

    def save(step: int) -> None:
        save_checkpoint(out, dataclasses.replace(run, step=step, history=history, model=model.state_dict(),
                                                 optimizer=optimizer.state_dict(),
                                                 scheduler=scheduler and scheduler.state_dict()), world)

    def last() -> str:
        return f"; the last checkpoint (step {saved}) is in {out}" if saved is not None else ""

    size, growth = math.hypot(*_norms(model).values()), 1.0  # the weights' norm, and how the last step grew it

    def blame(step: int) -> str:
        """A NaN right after an outer update that blew the weights up is that update's doing."""
        return (f"; the outer update of step {step} grew the weights' norm {growth:.3g}×: lower the learning "
                f"rate on the spec's `optimizer` line" if growth > 2 else "")

    def heldout(step: int) -> float:
        try:
            loss = evaluate(model, corpus, eval_batches)
            problem = None if math.isfinite(loss) else f"the held-out loss is {loss}"
        except _nonfinite_errors() as e:
            problem = str(e)
        if problem is None:
            logs.heldout(step, loss)
            return loss
        if step == 0:
            raise TrainError(f"the model is not finite at initialisation, before any training: {problem}")
        if step == start:
            raise TrainError(f"the model is not finite at step {step}, where the run resumes: {problem}")
        raise TrainError(f"training diverged by step {step} (held-out evaluation): {problem}{blame(step)}{last()}")

    if start not in history.heldout:
        history.heldout[start] = heldout(start)
    print(f"held-out at step {start}: {describe(history.heldout[start], unit)}")

    stepper = world.wrap(model)  # DDP when ranks hold replicas; the same parameters either way
    if compile == "regional" or (compile is True and model.task_levels()):
        regional(model)  # the period steps, compiled once for every length (runtime/regions.py)
    elif compile:  # one graph of the whole step
        stepper = torch.compile(stepper)
    scaler = runs.grad_scaler(model_device(model), precision)
    began = time.perf_counter()
    with tqdm(total=steps, initial=start, disable=quiet, unit="step", dynamic_ncols=True) as bar:
        for step in range(start + 1, steps + 1):
            try:
                loss, grad_norm = _train_step(stepper, optimizer, *corpus.batch(seed, step, batch, context),
                                              precision, scaler, run.training.accumulate, run.training.grad_clip)
                if scheduler is not None:
                    scheduler.step()
            except (_NonFiniteLoss, *_nonfinite_errors()) as e:
                raise TrainError(f"training diverged at step {step}: {e}{blame(step - 1)}{last()}") from e
            loss = world.mean(loss)  # the whole batch's: the mean of the ranks' equal shares
            norms = _norms(model)
            bad = _first_nonfinite(norms)
            if bad is not None:  # the inner levels would be blamed at the next step: name the real cause
                raise TrainError(f"training diverged at step {step}: the outer optimizer's update made `{bad}` "
                                 f"NaN or Inf (the loss before it was {loss:.4g}); lower the learning rate on the "
                                 f"spec's `optimizer` line{last()}")
            now = math.hypot(*norms.values())
            size, growth = now, now / size if size else 1.0
            history.train.append(loss)
            tokens_per_s = (step - start) * batch * context / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix_str(f"loss {loss:.3f}, {tokens_per_s:,.0f} tok/s")
            bar.update()
            logs.step(step, loss, tokens_per_s, grad_norm)
            if eval_every and step % eval_every == 0 and step != steps:
                history.heldout[step] = heldout(step)
                tqdm.write(f"held-out at step {step}: {describe(history.heldout[step], unit)}")
            if ckpt_every and step % ckpt_every == 0 and step != steps:
                save(step)
                saved = step
            if on_step is not None:
                on_step(step, loss)

    if steps not in history.heldout:
        history.heldout[steps] = heldout(steps)
    save(steps)
    if world.writer:
        write_losses(out / "losses.csv", history)
        plot_losses(out / "loss.png", history, Path(run.spec_path).stem, unit)
    first, last_loss = history.heldout[start], history.heldout[steps]
    if start != steps:
        print(f"held-out, step {start} -> {steps}: loss {first:.4f} -> {last_loss:.4f} nats, "
              f"{bits(first):.4f} -> {bits(last_loss):.4f} bits/{unit}")
    if sample:
        model.eval()
        prompt = corpus.prompt()
        text = (prompt + generate(model, prompt, sample, seed=seed, tokenizer=corpus.tokenizer)).decode(
            "utf-8", errors="replace")
        if world.writer:
            atomic_write(out / "sample.txt", text.encode())
        print(f"sample:\n{text}")
    kept = f", {run.tokenizer_file}" if run.tokenizer_file else ""
    print(f"wrote {out}/: {CHECKPOINT}, losses.csv, loss.png{', sample.txt' if sample else ''}{kept}")
    return history


def write_losses(path: Path, history: History) -> None:
    """One row per step: the training loss of that step, the held-out loss where measured."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "train_loss", "heldout_loss"])
    for step in range(len(history.train) + 1):
        train = history.train[step - 1] if step else ""
        w.writerow([step, train, history.heldout.get(step, "")])
    atomic_write(path, buf.getvalue().encode())


def plot_losses(path: Path, history: History, title: str, unit: str = "byte") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(history.train) + 1), history.train, lw=0.8, label="train")
    held = sorted(history.heldout.items())
    ax.plot([s for s, _ in held], [v for _, v in held], "o-", label="held-out")
    ax.set(xlabel="step", ylabel=f"loss (nats per {unit})", title=title)
    ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2))).set_ylabel(f"bits per {unit}")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
