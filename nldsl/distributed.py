"""Data-parallel training with PyTorch's own engines: DDP, or FSDP2 with `--fsdp`.

A job is started by torchrun (`torchrun --nproc-per-node N -m nldsl train ...`, or
`nldsl train --nproc N ...`, which starts torchrun on this machine). Each process is a
rank; `join` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group, with a timeout, so an unreachable rendezvous
or a rank that never comes is an error, never a hang. Then:

- **Batches.** The spec's `batch` is the global batch: rank r trains on the r-th share of
  each step's windows (`Corpus.batch(..., rank, world_size)`), so the ranks together see
  the batch one process sees, and losses equal a one-process run's (float rounding apart).
- **DDP** (the default): every rank holds the whole model and optimizer; DDP averages the
  gradients (all-reduce) in the backward pass, so every rank applies the same update and
  the weights stay equal. Fast state is per sequence: it lives and dies inside one rank's
  forward and never crosses ranks; the inner `autograd.grad` of task levels takes
  gradients of fast state only, so it never fires DDP's hooks.
- **FSDP** (`--fsdp`): parameters, gradients and optimizer state are sharded along their
  first dimension (`fully_shard`); the forward gathers the weights. The spec optimizer
  steps each rank's shard as a plain tensor, which is exact for optimizers that act
  coordinate by coordinate (SGD, momentum, Adam, AdamW); one that looks at a whole
  parameter (Newton-Schulz, rows/cols, a memory over all coordinates) is refused.
- **Writing.** Rank 0 alone writes the run folder and prints; under FSDP each rank also
  writes its shard of the checkpoint (torch.distributed.checkpoint, as safetensors).
  The logged loss is the mean over the ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from dataclasses import field
from pathlib import Path

import torch
from torch import nn

from .files import read_limited
from .run import MAX_CHECKPOINT_BYTES, RunError

DEFAULT_TIMEOUT = 300.0  # seconds a rank waits for the others: to start, and at each exchange
SHARDS = re.compile(r"shards-\d{8}")  # a sharded checkpoint's folder, named by its step
SHARD_FILE = re.compile(r"shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors")  # torch's name for a rank's file
# functions of an optimizer step that read a whole parameter, not one coordinate
WHOLE_PARAMETER = ("newton_schulz", "rows", "cols", "l2norm")


class Stopped(RunError):
    """torchrun stopped this rank (SIGTERM) because another rank failed."""


@dataclasses.dataclass
class World:
    """The ranks of a job, as this process sees them: one rank of one, unless torchrun started it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    fsdp: bool = False
    device: torch.device = torch.device("cpu")
    joined: bool = False  # the process group was made here, and is destroyed here
    mesh: object = None  # FSDP's device mesh
    placed: dict = field(default_factory=dict)  # FSDP: each sharded weight's name -> how it is laid out
    sigterm: object = None  # the SIGTERM handler before `join`'s, put back by `close`

    @property
    def writer(self) -> bool:
        """Rank 0 writes the run folder and prints; the others only train."""
        return self.rank == 0

    def close(self) -> None:
        import torch.distributed as dist
        if self.sigterm is not None:
            signal.signal(signal.SIGTERM, self.sigterm)
            self.sigterm = None
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
        self.joined = False

    @contextlib.contextmanager
    def quiet(self):
        """Rank 0 alone prints: the other ranks' output (notes, progress) goes nowhere, while
        their errors, raised out of here, still reach the user."""
        if self.writer:
            yield
            return
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            yield

    # --- batches and losses
    def share(self, corpus, batch: int, accumulate: int = 1):
        """The corpus as this rank trains on it: asked for a step's `batch` windows, it gives
        this rank its share of them."""
        if batch % (self.size * accumulate):
            parts = f"{self.size} ranks" + (f" × {accumulate} micro-batches" if accumulate > 1 else "")
            raise RunError(f"the batch of {batch} sequences does not split evenly among {parts}: give a batch "
                           f"that {self.size * accumulate} divides (--set batch=N)")
        return corpus if self.size == 1 else RankShare(corpus, self.rank, self.size)

    def mean(self, value: float) -> float:
        """The mean over the ranks of a number each holds (a step's loss on its share)."""
        if self.size == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.size

    # --- the model and its optimizer
    def wrap(self, model):
        """What the training steps run: the model in DDP when ranks hold replicas, else the
        model itself (alone, or sharded in place by `shard`). Every step uses the same
        parameters (a spec's graph is static), so DDP runs with `static_graph`: no search for
        unused parameters at each step, and a parameter that never gets a gradient is allowed."""
        if self.size == 1 or self.fsdp:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, static_graph=True, forward_sync_buffers=False)

    @staticmethod
    @contextlib.contextmanager
    def holding(stepper, hold: bool):
        """Inside, a backward of `stepper` (what `wrap` gave) keeps its gradient on this rank
        when `hold`: the micro-batches of an accumulated step but the last, whose backward
        then reduces the sum once. FSDP switches its gradient sync off for them; DDP reduces
        every micro-batch, because its `no_sync` under `static_graph` fails on the first step
        and then stops reducing at all (pytorch/pytorch#143580, #187732)."""
        if hold and hasattr(stepper, "set_requires_gradient_sync"):
            stepper.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                stepper.set_requires_gradient_sync(True)
        else:
            yield

    def check(self, model, precision: str) -> None:
        """Under FSDP, refuse what cannot be sharded, before anything is written."""
        if not self.fsdp:
            return
        if precision == "fp16":
            raise RunError("--fsdp with --precision fp16: the gradient scaler cannot see the sharded gradients; "
                           "train in bf16 (no scaler needed) or fp32")
        check_shardable(model)

    def shard(self, model, optimizer):
        """Under FSDP: shard `model` in place and return its optimizer rebuilt over this rank's
        shards, holding this rank's part of `optimizer`'s state; else `optimizer` itself."""
        if not self.fsdp:
            return optimizer
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor
        full = optimizer.state_dict()
        fully_shard(model, mesh=self.mesh)
        self.placed = {k: v for k, v in model.state_dict().items() if isinstance(v, DTensor)}
        with _local_views(model) as views:
            local = model.configure_optimizer()
        local.load_state_dict(_slice(full, self.rank, self.size))
        _bridge_gradients(local, views)
        return local

    def localize(self, ckpt):
        """A checkpoint's whole tensors as this rank holds them: under FSDP its shards of the
        weights and of the optimizer's state (a checkpoint always holds whole tensors)."""
        if not self.fsdp:
            return ckpt
        from torch.distributed.tensor import DTensor
        model = {}
        for name, t in ckpt.model.items():
            placed = self.placed.get(name)
            model[name] = t if placed is None else DTensor.from_local(
                _chunk(t, self.rank, self.size).to(placed.device), placed.device_mesh, placed.placements,
                shape=t.shape, stride=t.stride())
        return dataclasses.replace(ckpt, model=model, optimizer=_slice(ckpt.optimizer, self.rank, self.size))

    # --- checkpoints
    def write_shards(self, out: Path, step: int, tensors: dict[str, torch.Tensor]) -> str:
        """FSDP: every rank writes its shards of a checkpoint's tensors into out/shards-STEP/,
        one safetensors file a rank, with torch.distributed.checkpoint. Returns (on rank 0)
        the JSON that names the folder and each file's sha256, for the checkpoint's metadata.

        The optimizer's state of a coordinate-wise optimizer is shaped like its parameter, so
        every optimizer tensor with a dimension is this rank's shard of one (FSDP's split of
        the first dimension: torch.chunk); a number (a step count) is the same on every rank."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor, Shard
        local = {k: t for k, t in tensors.items() if k.startswith("optimizer.") and t.dim()
                 and not isinstance(t, DTensor)}
        sizes = [None] * self.size
        dist.all_gather_object(sizes, [t.shape[0] for t in local.values()])
        state = dict(tensors)
        for i, (key, t) in enumerate(local.items()):
            rows = [s[i] for s in sizes]
            whole = (sum(rows), *t.shape[1:])
            if rows != [len(c) for c in _chunks(torch.empty(whole[0]), self.size)]:
                raise RunError(f"cannot checkpoint the sharded optimizer: its state `{key}` is not shaped like a "
                               f"shard of a parameter ({rows} rows on the ranks)")
            state[key] = DTensor.from_local(t, self.mesh, [Shard(0)], shape=torch.Size(whole),
                                            stride=torch.empty(whole, device="meta").stride())
        folder = out / f"shards-{step:08d}"
        if self.writer and folder.exists():  # left by a run killed while writing it
            shutil.rmtree(folder)
        dist.barrier()
        dcp.save(state, storage_writer=dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True))
        dist.barrier()
        if not self.writer:
            return ""
        files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
        return json.dumps({"folder": folder.name, "files": files})

    # --- failures
    @contextlib.contextmanager
    def watch(self, out: Path):
        """A rank that lost its peers (one died or was killed) says so in one line."""
        try:
            yield
        except RuntimeError as e:
            if self.size == 1 or isinstance(e, RunError) or not _lost_peer(e):
                raise
            raise RunError(f"lost the connection to the other ranks of the job (one of them stopped, hung or "
                           f"was killed: {_first_line(e)}); the job stops, and `nldsl train --resume` continues from "
                           f"the last checkpoint in {out}") from None


class RankShare:
    """A corpus whose training batches are one rank's share. Asked for a step's `batch`
    windows, it gives rank r of N the r-th batch/N of the windows one process draws for
    that step; asked for a share of those (micro-batches: `rank` i of `world_size` M), it
    gives the part of that share that one process's i-th micro-batch holds."""

    def __init__(self, corpus, rank: int, size: int):
        self.corpus, self.rank, self.size = corpus, rank, size

    def __getattr__(self, name):
        return getattr(self.corpus, name)

    def batch(self, seed: int, step: int, batch: int, context: int, rank: int = 0, world_size: int = 1):
        if batch % self.size:
            raise RunError(f"a batch of {batch} sequences does not split evenly among {self.size} ranks")
        return self.corpus.batch(seed, step, batch // self.size, context, rank * self.size + self.rank,
                                 world_size * self.size)


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as a rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(where: torch.device, fsdp: bool = False, backend: str | None = None,
         timeout: float | None = None) -> World:
    """This process's place in its job: join the process group torchrun's environment
    describes (gloo on the CPU, nccl on CUDA, unless `backend` says), waiting at most
    `timeout` seconds for the others; one rank of one when not started by a launcher."""
    import torch.distributed as dist
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if not (timeout > 0):
        raise RunError(f"--dist-timeout {timeout:g}: give a positive number of seconds")
    if not (launched() or dist.is_available() and dist.is_initialized()):
        if fsdp:
            raise RunError("--fsdp shards the model over the ranks of a job: start it with torchrun "
                           "(torchrun --nproc-per-node N -m nldsl train ... --fsdp) or with --nproc N")
        return World(device=where)
    if not dist.is_available():
        raise RunError(f"this torch ({torch.__version__}) was built without torch.distributed: it cannot train "
                       f"as one rank of a job")
    world = World(rank=int(os.environ.get("RANK", 0)), size=int(os.environ.get("WORLD_SIZE", 1)),
                  local_rank=int(os.environ.get("LOCAL_RANK", 0)), fsdp=fsdp)
    if where.type == "cuda":  # each rank its own GPU: cuda:LOCAL_RANK
        if where.index is not None and world.size > 1 and where.index != world.local_rank:
            raise RunError(f"--device {where}: each rank of a job takes the GPU of its LOCAL_RANK; give --device "
                           f"cuda (or auto)")
        where = torch.device("cuda", world.local_rank if where.index is None else where.index)
        torch.cuda.set_device(where)
    world.device = where
    backend = backend or ("nccl" if where.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl") or not dist.is_backend_available(backend):
        raise RunError(f"--backend {backend}: this torch has {_backends()}")
    if backend == "nccl" and where.type != "cuda":
        raise RunError(f"--backend nccl exchanges CUDA tensors, but the ranks train on {where}: give --device cuda, "
                       f"or --backend gloo")
    if not dist.is_initialized():
        address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            with _native_stderr_held():
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            raise RunError(f"could not join the job of {world.size} ranks at {address} within {timeout:g} s "
                           f"(--dist-timeout): {_first_line(e)}") from None
        world.joined = True
        _on_sigterm(world)
    world.rank, world.size = dist.get_rank(), dist.get_world_size()
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        world.mesh = init_device_mesh(where.type, (world.size,))
    return world


@contextlib.contextmanager
def _native_stderr_held():
    """torch.distributed's C++ side logs every failed try to reach the rendezvous to the
    process's stderr, stack frames included: hold what it writes while joining, and let it
    through only if joining succeeds (a failure is one line, ours)."""
    sys.stderr.flush()
    saved = os.dup(2)
    joined = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            joined = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if joined:
                held.seek(0)
                os.write(2, held.read())


def _backends() -> str:
    import torch.distributed as dist
    found = [b for b in ("gloo", "nccl") if dist.is_backend_available(b)]
    return f"the backends {', '.join(found)}" if found else "no backend"


def _on_sigterm(world: World) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: end with one line."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Stopped("stopped by the launcher: another rank of the job failed")
    world.sigterm = signal.signal(signal.SIGTERM, stop)


def _first_line(e: BaseException) -> str:
    """The gist of a backend's error: its first line, without the C++ source it came from
    (`[.../pair.cc:537] `) or its generic advice."""
    line = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return re.sub(r"^\[[^\]]*\]\s*", "", line).split(". This is typically")[0].rstrip(".")


def _lost_peer(e: BaseException) -> bool:
    import torch.distributed as dist
    text = str(e)
    return isinstance(e, dist.DistError) or any(w in text for w in ("gloo", "NCCL", "Connection", "connection"))


def rank_prefix() -> str:
    """`[rank R] ` for the messages of a rank of a job of several, so that a failure names its rank."""
    return f"[rank {os.environ['RANK']}] " if launched() and os.environ.get("WORLD_SIZE", "1") != "1" else ""


# --- FSDP: the spec optimizer on each rank's shards -----------------------------------

def check_shardable(model) -> None:
    """FSDP hands the optimizer each rank's rows of a parameter: only an optimizer whose
    step acts coordinate by coordinate steps those rows as it would step the whole."""
    for use in getattr(model, "optimizers", ()):
        name = use.optimizer.name
        for level in use.optimizer.levels:
            for m in level.memories:
                if m.kind != "elementwise":
                    raise RunError(f"--fsdp: optimizer `{name}`'s memory `{m.name}` ({m.kind}) learns from all the "
                                   f"coordinates of a parameter together, but FSDP gives each rank some of its rows; "
                                   f"train it with DDP (leave --fsdp out)")
        graph = getattr(use.step, "graph", None)
        if graph is None:
            raise RunError(f"--fsdp: optimizer `{name}`'s step is not a torch.fx graph, so nldsl cannot tell whether "
                           f"it acts coordinate by coordinate; train it with DDP (leave --fsdp out)")
        called = {getattr(n.target, "__name__", str(n.target)) for n in graph.nodes if n.op == "call_function"}
        whole = [f for f in WHOLE_PARAMETER if f in called]
        if whole:
            raise RunError(f"--fsdp: optimizer `{name}` reads a whole parameter ({', '.join(f'`{f}`' for f in whole)}), "
                           f"but FSDP gives each rank some of its rows; train it with DDP (leave --fsdp out)")


@contextlib.contextmanager
def _local_views(model):
    """While inside, each sharded parameter of `model` is a plain parameter viewing this
    rank's shard (the same memory): an optimizer made then steps the shards in place."""
    from torch.distributed.tensor import DTensor
    views, swapped = {}, []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in views:
                    with torch.no_grad():
                        views[id(p)] = (p, nn.Parameter(p.to_local(), requires_grad=p.requires_grad))
                module._parameters[name] = views[id(p)][1]
                swapped.append((module, name, p))
    try:
        yield list(views.values())
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def _bridge_gradients(optimizer: torch.optim.Optimizer, views) -> None:
    """FSDP leaves each sharded parameter's gradient (reduced over the ranks) on the
    parameter; the optimizer, over the plain views, takes it just before its step, and
    both are cleared after it, so the next step's backward starts from none."""
    def before(*_):
        for sharded, local in views:
            local.grad = None if sharded.grad is None else sharded.grad.to_local()

    def after(*_):
        for sharded, local in views:
            sharded.grad = local.grad = None

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)


def _chunks(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    """FSDP's split of a tensor's first dimension among n ranks: torch.chunk's, with empty
    pieces for ranks beyond its chunks."""
    parts = list(torch.chunk(t, n, 0))
    return parts + [t[:0]] * (n - len(parts))


def _chunk(t: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    return _chunks(t, n)[rank].clone() if t.dim() else t


def _slice(state, rank: int, n: int):
    """An optimizer's state_dict as one rank holds it: every tensor with a dimension (shaped
    like its parameter, for a coordinate-wise optimizer) cut to the rank's rows."""
    if isinstance(state, torch.Tensor):
        return _chunk(state, rank, n)
    if isinstance(state, dict):
        return {k: _slice(v, rank, n) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_slice(v, rank, n) for v in state)
    return state


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor computed from sharded parameters, as one tensor on every rank."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# --- sharded checkpoints --------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(read_limited(path, MAX_CHECKPOINT_BYTES, "checkpoint shard")).hexdigest()


def read_shards(out: Path, stored: str, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The whole tensors of a checkpoint that an FSDP run wrote as shards: the folder and
    files its metadata names (`stored`), each checked against its sha256, then read and put
    together by torch.distributed.checkpoint (whatever the number of ranks that wrote them)."""
    def bad(why: str):
        return RunError(f"the checkpoint {checkpoint} is malformed: `shards`: {why}")
    try:
        spec = json.loads(stored)
        folder, files = spec["folder"], spec["files"]
    except (ValueError, TypeError, KeyError):
        raise bad("it is not an object with `folder` and `files`") from None
    if not (isinstance(folder, str) and SHARDS.fullmatch(folder)):
        raise bad("`folder` is not a folder of shards (shards-NNNNNNNN)")
    if not (isinstance(files, dict) and files and all(isinstance(k, str) and SHARD_FILE.fullmatch(k)
                                                      and isinstance(v, str) for k, v in files.items())):
        raise bad("`files` does not name shard files and their sha256")
    where = out / folder
    try:
        found = sorted(p.name for p in where.iterdir())
    except OSError as e:
        raise RunError(f"the shards of the checkpoint {checkpoint} are missing: cannot read {where} "
                       f"({e.strerror or e})") from None
    if found != sorted(files):
        raise RunError(f"the shards folder {where} does not hold the files the checkpoint {checkpoint} names")
    for name, digest in files.items():
        if _sha256(where / name) != digest:
            raise RunError(f"the checkpoint shard {where / name} is corrupt: its content does not match the "
                           f"sha256 stored in {checkpoint}")
    import torch.distributed.checkpoint as dcp
    try:
        with warnings.catch_warnings():  # "loading in a single process": as meant
            warnings.simplefilter("ignore")
            stored_tensors = dcp.HuggingFaceStorageReader(str(where)).read_metadata().state_dict_metadata
            for key, m in stored_tensors.items():  # so a tensor is never larger than the bytes that fill it
                if sum(math.prod(c.sizes) for c in m.chunks) != math.prod(m.size):
                    raise RunError(f"the shards of `{key}` do not make up its {tuple(m.size)} elements")
            tensors = {k: torch.zeros(m.size, dtype=m.properties.dtype) for k, m in stored_tensors.items()}
            dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(where)), no_dist=True)
    except Exception as e:  # a forged file may fail anywhere in the reader: one line, naming it
        raise RunError(f"cannot read the checkpoint shards in {where}: {_first_line(e)}") from None
    return tensors


def drop_stale_shards(out: Path, stored: str | None) -> None:
    """Remove the shards folders that the checkpoint just written no longer names."""
    keep = json.loads(stored)["folder"] if stored else None
    with contextlib.suppress(OSError):
        for p in out.iterdir():
            if SHARDS.fullmatch(p.name) and p.name != keep and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


# --- `nldsl train --nproc N` ----------------------------------------------------------

def launch(nproc: int, argv: list[str], out: Path, where: torch.device) -> int:
    """`nldsl train --nproc N ...`: torchrun on this machine (`--standalone`) starting N ranks,
    each running this same command (which, as a rank, trains). A rank that fails stops the
    job, and the failure is one line."""
    if nproc < 1:
        raise RunError(f"--nproc {nproc}: give the number of processes, at least 1")
    if where.type == "cuda" and nproc > torch.cuda.device_count():
        raise RunError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} CUDA devices, one a rank")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "nldsl"])
    args.training_script_args = list(argv)  # given after parsing: torchrun's parser would read `--nproc` as its own
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"stopped with exit code {failure.exitcode} (its error is above)")
        raise RunError(f"the job stopped: rank {rank} {how}, and the other ranks were stopped; "
                       f"`--resume` continues from the last checkpoint in {out}") from None
    return 0


def check_nproc(nproc: int) -> None:
    """A rank started by `--nproc N` sees the flag again: it must describe this job."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local is not None and int(local) != nproc:
        raise RunError(f"--nproc {nproc}: this process is already one of the {local} ranks that torchrun started "
                       f"on this machine; leave --nproc out under torchrun")
