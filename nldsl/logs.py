"""What a training run reports besides its checkpoint and losses.csv (docs/training.md,
"What a run writes"): a summary printed before the first step, and TensorBoard event
files in the run folder (with `--wandb`, a Weights & Biases run too) holding at every step

- `loss/train`, `bits_per_byte/train` (`bits_per_token` with a tokenizer), and at every
  evaluation `loss/heldout`, `bits_per_byte/heldout`: the numbers of the run's History;
- `lr/GROUP`: the learning rate each parameter group stepped with (`adamw[matrices]`,
  `adamw[all].every1954` for a cross-sequence level's part);
- `tokens_per_s`: the progress bar's, since the run (re)started;
- `grad_norm`: the norm of all parameters' gradient as the optimizer is given it, before
  any clipping (fp16: unscaled): in a job of several ranks, the whole batch's, after DDP
  or FSDP combined the ranks' (the training step measures it, as clipping needs it);
- `update_norm/LEVEL.COPY`: for each level copy whose memories learn inside the
  sequence, the norm of its fast state's update over the step's last batch, S − θ₀,
  averaged over its sequences (`ModelState.update_norms`).

TensorBoard is the `logs` extra (`pip install 'nldsl[logs]'`: grpcio and a data server
come with it); without it a run says so in one note and writes its CSV as before. The
other values are taken by hooks on the model and the optimizer, so the training step
knows nothing of them. Only rank 0 (torch.distributed) prints and writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import types
from pathlib import Path

import torch

from .files import FileError, reason
from .run import RunError, model_device

INSTALL_TENSORBOARD = "pip install 'nldsl[logs]'"


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def require_wandb():
    """The wandb package, or one line saying how to install it (`--wandb` is never required)."""
    try:
        import wandb
    except ImportError:
        raise RunError("--wandb needs the wandb package, which is not installed: pip install wandb") from None
    return wandb


def groups(model, optimizer) -> list[tuple[str, dict]]:
    """The optimizer's parameter groups, each with a name: `SPEC[SELECTOR]` for a spec's
    optimizer line (`.everyK` for the part of cross-sequence levels that steps every K
    steps), else the optimizer's class and the group's index."""
    parts = getattr(optimizer, "parts", None)
    if parts is None:
        return [(f"{type(optimizer).__name__}[{i}]", g) for i, g in enumerate(optimizer.param_groups)]
    selectors = {id(use.optimizer): use.selector for use in getattr(model, "optimizers", ())}
    named = []
    for opt, every in parts:
        name = f"{opt.spec.name}[{selectors.get(id(opt.spec), '?')}]" + (f".every{every}" if every > 1 else "")
        several = len(opt.param_groups) > 1
        named += [(f"{name}.{i}" if several else name, g) for i, g in enumerate(opt.param_groups)]
    return named


def summary(model, optimizer, corpus, precision: str) -> list[str]:
    """What a run trains, in a few lines: parameters, tokens per step, the optimizer's
    groups, device, precision, world size, data and tokenizer."""
    params = list(model.parameters())
    batch, context = int(model.settings["batch"]), int(model.settings["context"])
    name = getattr(model, "name", type(model).__name__)
    tok, unit = corpus.tokenizer, corpus.tokenizer.unit
    lines = [f"model {name}: {sum(p.numel() for p in params):,} parameters "
             f"({sum(p.numel() for p in params if p.requires_grad):,} trainable), "
             f"{batch * context:,} tokens per step (batch {batch} × context {context})"]
    for label, g in groups(model, optimizer):
        lr = f", lr {float(g['lr']):.3g}" if "lr" in g else ""
        lines.append(f"optimizer {label}: {sum(p.numel() for p in g['params']):,} parameters in "
                     f"{len(g['params'])} tensors{lr}")
    lines.append(f"device {model_device(model)}, precision {precision}, world size {world()[1]}")
    sizes = getattr(corpus, "about", None) or \
        f"{len(corpus.train):,} {unit}s to train on, {len(corpus.heldout):,} held out"  # `about`: a task's own data
    lines.append(f"data {corpus.name}: {sizes}; tokenizer {tok.name} ({tok.vocab_size:,} tokens)")
    return lines


def config(run, model, precision: str) -> dict:
    """What a wandb run records of the training: the run's spec, settings and options."""
    training = getattr(run, "training", None)
    return {"spec": run.spec_path, "settings": dict(model.settings), "overrides": run.overrides, "seed": run.seed,
            "data": run.data, "tokenizer": run.tokenizer, "precision": precision, "inner_clip": run.inner_clip,
            **({"training": dataclasses.asdict(training)} if training is not None else {})}


def bits(loss: float) -> float:
    """Nats per byte (or token) to bits per byte (or token)."""
    return loss / math.log(2)


class RunLogs:
    """A run's logs: prints the summary when made, then writes the scalars of each step
    (`step`) and each held-out evaluation (`heldout`) until closed. Only rank 0 writes."""

    def __init__(self, out: Path, model, optimizer, corpus, run, precision: str, wandb: bool = False):
        self.out, self.model, self.unit = out, model, corpus.tokenizer.unit
        self.writer = self.wandb = None
        self.hooks: list = []
        self.lrs: dict[str, float] = {}  # each group's lr as the last step used it
        self.updates: dict[str, float] = {}  # level copy -> its fast-state update's norm
        if world()[0] == 0:
            try:
                self._start(model, optimizer, corpus, run, precision, wandb)
            except BaseException:
                self.close()  # what was started: the hooks, a wandb run
                raise

    def _start(self, model, optimizer, corpus, run, precision: str, wandb: bool) -> None:
        """Rank 0's part: print the summary, open the event files (and the wandb run), hook
        the model and the optimizer."""
        out = self.out
        print("\n".join(summary(model, optimizer, corpus, precision)))
        if wandb:
            self.wandb = require_wandb().init(project=os.environ.get("WANDB_PROJECT", "nldsl"), name=out.name,
                                              dir=str(out), config=config(run, model, precision))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(f"note: no TensorBoard event files without the tensorboard package ({INSTALL_TENSORBOARD}): "
                  f"the losses are in losses.csv", file=sys.stderr)
        else:
            self._hush()
            with self._writing():
                self.writer = SummaryWriter(log_dir=str(out), flush_secs=10)  # a killed run loses 10 s at most
        self.hooks.append(model.register_forward_hook(self._forward))
        if hasattr(optimizer, "register_step_pre_hook"):
            self.hooks.append(optimizer.register_step_pre_hook(self._stepping))

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        try:
            self.close()
        except FileError:
            if kind is None:  # else the error that ends the run is the one to tell
                raise

    # -- hooks: they only keep numbers, so the model and the step run as they would
    @torch.compiler.disable
    def _forward(self, model, args, output) -> None:
        """A training forward (gradients on): its fast states' updates, from the state it returns."""
        state = output[1] if isinstance(output, tuple) and len(output) == 2 else None
        if torch.is_grad_enabled() and model.training and hasattr(state, "update_norms"):
            self.updates = state.update_norms()

    def _stepping(self, optimizer, args, kwargs) -> None:
        self.lrs = {name: float(g["lr"]) for name, g in groups(self.model, optimizer) if "lr" in g}

    # -- what the loop calls
    def step(self, step: int, loss: float, tokens_per_s: float, grad_norm: float) -> None:
        """The scalars of training step `step`, which has just been taken."""
        scalars = {"loss/train": loss, f"bits_per_{self.unit}/train": bits(loss), "tokens_per_s": tokens_per_s,
                   "grad_norm": grad_norm}
        scalars.update({f"lr/{name}": lr for name, lr in self.lrs.items()})
        scalars.update({f"update_norm/{key}": n for key, n in self.updates.items()})
        self.updates = {}
        self._write(step, scalars)

    def heldout(self, step: int, loss: float) -> None:
        """The held-out loss after `step` steps."""
        self._write(step, {"loss/heldout": loss, f"bits_per_{self.unit}/heldout": bits(loss)})

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            with self._writing():
                for tag, value in scalars.items():
                    self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._writing():
                writer.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def _hush(self) -> None:
        """TensorBoard's writer thread keeps an error it meets (a full disk) for the next
        write, where `_writing` tells it in one line, and re-raises it: its traceback is not
        printed as well."""
        told = threading.excepthook

        def hook(args):
            if not (type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, OSError)):
                told(args)
        threading.excepthook = hook
        self.hooks.append(types.SimpleNamespace(remove=lambda: setattr(threading, "excepthook", told)))

    @contextlib.contextmanager
    def _writing(self):
        """A failed write of the event files (a full disk: TensorBoard's thread reports it at
        the next write) is one line, as every write of a run is."""
        try:
            yield
        except OSError as e:
            raise FileError(f"cannot write the TensorBoard event files in {self.out}: {reason(e)}") from None
