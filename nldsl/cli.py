"""The `nldsl` command: check, fmt, ir, stats, graph, compile, train, eval, generate, compare, bench, data, lsp.

A user's mistake prints located diagnostics and exits 1; only a bug in nldsl itself
prints a traceback (and says so).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .compiler import passes
from .compiler.diagnostics import NLError, Report, render
from .compiler.driver import check as check_source
from .files import FileError, atomic_write
from .training import SCHEDULES


SET_HELP = ("override a setting (--set dim=64) or edit a level (--set cms1=outer, --set 'titans.rule=gd(lr: 0.01)'; "
            "docs/language.md §3, Edits); repeatable")


def _overrides(args) -> dict:
    """`--set` items as overrides; a mistake in one ends the command with one line."""
    from .run import RunError, parse_overrides
    try:
        return parse_overrides(getattr(args, "set", None)) or {}
    except RunError as e:
        raise SystemExit(_fail(str(e))) from None


def _report_errors(e: NLError, fmt: str) -> int:
    print(render(e.diagnostics, e.sources, fmt), file=sys.stderr if fmt == "text" else sys.stdout)
    return 1


def _warnings(report: Report, fmt: str) -> None:
    if report.diagnostics and fmt == "text":
        print(render(report.sorted(), report.sources), file=sys.stderr)


def _specs(program, name: str | None):
    specs = list(program.models) + list(program.optimizers)
    if name is not None:
        specs = [s for s in specs if s.name == name]
    return specs


def cmd_check(args) -> int:
    status, all_diags = 0, []
    overrides = _overrides(args)
    for f in args.files:
        report = Report()
        try:
            program = check_source(Path(f), report, **overrides)
        except NLError as e:
            status = 1
            all_diags.extend(e.diagnostics)
            if args.error_format == "text":
                print(render(e.diagnostics, e.sources), file=sys.stderr)
            continue
        all_diags.extend(report.diagnostics)
        if args.error_format == "text":
            _warnings(report, "text")
            names = ", ".join(f"{'model' if hasattr(s, 'blocks') else 'optimizer'} {s.name}"
                              for s in _specs(program, None))
            print(f"{f}: ok ({names or 'nothing defined'})")
    if args.error_format == "json":
        print(render(all_diags, {}, "json"))
    return status


def _one(args):
    report = Report()
    program = check_source(Path(args.file), report, **_overrides(args))
    _warnings(report, "text")
    specs = _specs(program, args.name)
    if not specs:
        what = f"nothing named `{args.name}`" if args.name else "no model or optimizer"
        raise SystemExit(_fail(f"{args.file}: {what} to show"))
    if len(specs) > 1 and args.name is None:
        models = [s for s in specs if hasattr(s, "blocks")]
        specs = models[:1] or specs[:1]
    return specs[0]


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def cmd_ir(args) -> int:
    spec = _one(args)
    ir = passes.run(spec, print_after=args.print_after)
    if args.print_after is None:
        print(ir.describe_levels() if args.levels else ir.describe())
    return 0


def cmd_stats(args) -> int:
    from .compiler.stats import stats_table
    spec = _one(args)
    print(stats_table(passes.run(spec)))
    return 0


def cmd_graph(args) -> int:
    from .compiler.backends.graphviz import DotMissing, render as render_dot, to_dot
    spec = _one(args)
    dot = to_dot(passes.run(spec), schedule=args.schedule, view=args.view)
    out = Path(args.output) if args.output else None
    fmt = out.suffix.lstrip(".").lower() if out else "dot"
    if fmt not in ("dot", "gv", "svg", "png", "pdf"):
        return _fail(f"cannot write `.{fmt}`: choose .dot, .svg, .png or .pdf")
    if fmt in ("dot", "gv"):
        data = dot.encode()
    else:
        try:
            data = render_dot(dot, fmt)
        except DotMissing as e:
            fallback = out.with_suffix(".dot")
            atomic_write(fallback, dot.encode())
            print(f"note: {e}\nwrote DOT text to {fallback} instead", file=sys.stderr)
            return 1
    if out is None:
        sys.stdout.write(dot)
    else:
        atomic_write(out, data)
        print(f"wrote {out}")
    return 0


def cmd_fmt(args) -> int:
    from .compiler.format import format_text
    status = 0
    for f in args.files:
        report = Report()
        path = Path(f)
        from .compiler.load import read_source
        text = read_source(path, report)
        formatted = format_text(text, f, report, quote=path.suffix == ".nl") if text is not None else None
        if formatted is None:
            print(render(report.sorted(), report.sources), file=sys.stderr)
            status = 1
            continue
        if formatted == text:
            continue
        if args.check:
            print(f"{f}: would be reformatted")
            status = 1
        else:
            atomic_write(path, formatted.encode())
            print(f"formatted {f}")
    return status


def cmd_lsp(args) -> int:
    """A language server for editors, on standard input and output (docs/editors.md)."""
    try:
        from .lsp import serve
    except ModuleNotFoundError as e:
        if e.name not in ("pygls", "lsprotocol") and not (e.name or "").startswith(("pygls.", "lsprotocol.")):
            raise
        return _fail("`nldsl lsp` needs pygls, which is not installed: pip install 'nldsl[lsp]'")
    serve()
    return 0


def cmd_compile(args) -> int:
    """The model as one standalone Python file (needs torch and nldsl.runtime only)."""
    from .api import compile as compile_model
    from .compiler.backends.python import emit
    try:
        model = compile_model(Path(args.file), name=args.name, **_overrides(args))
    except ValueError as e:  # no such model
        return _fail(str(e))
    source = emit(model)
    if args.output is None:
        sys.stdout.write(source)
    else:
        atomic_write(Path(args.output), source.encode())
        print(f"wrote {args.output}")
    return 0


def _run_errors(fn):
    """Commands that run a model: subnormal floats flushed (nldsl.flush_subnormals), and the
    user's mistakes there (data, checkpoints, divergence) are one `error:` line."""
    def run(args) -> int:
        from .api import flush_subnormals
        from .train import user_errors
        flush_subnormals()
        try:
            return fn(args)
        except user_errors() as e:
            from .distributed import rank_prefix
            return _fail(rank_prefix() + str(e))  # in a job of several ranks, the rank that failed
        finally:  # `main` may run inside another program (the tests do)
            flush_subnormals(False)
    return run


@_run_errors
def cmd_train(args) -> int:
    from . import distributed
    from .run import device, parse_overrides
    from .train import default_out, train
    if args.task is not None:  # the task's synthetic data, into a folder of its own
        from .tasks import get, task_out
        for flag, value in (("--data", args.data), ("--tokenizer", args.tokenizer)):
            if value is not None:
                return _fail(f"--task {args.task} trains on the task's own data: leave out {flag}")
        args.data, args.out = get(args.task).data, args.out or str(task_out(args.file, args.task))
    if args.sample is None:
        args.sample = 0 if args.task is not None else 200  # no text to continue in a synthetic task
    if args.nproc is not None:
        if not distributed.launched():  # start torchrun, whose ranks run this same command
            out = Path(args.out) if args.out else default_out(args.file.partition(":")[0])
            return distributed.launch(args.nproc, args.argv, out, device(args.device))
        distributed.check_nproc(args.nproc)
    train(args.file, data=args.data, steps=args.steps, out_dir=args.out, resume=args.resume,
          overrides=parse_overrides(args.set), seed=args.seed, eval_every=args.eval_every,
          eval_batches=args.eval_batches, ckpt_every=args.ckpt_every, sample=args.sample, quiet=args.quiet,
          compile=args.compile, inner_clip=args.inner_clip, tokenizer=args.tokenizer, device=args.device,
          precision=args.precision, lr=args.lr, lr_schedule=args.lr_schedule, warmup=args.warmup,
          grad_clip=args.grad_clip, accumulate=args.accumulate, fsdp=args.fsdp, backend=args.backend,
          dist_timeout=args.dist_timeout, wandb=args.wandb)
    return 0


def _ckpt_dir(args) -> Path:
    """--ckpt, else the folder `train` writes the run of FILE into."""
    from .train import TrainError, default_out
    if args.ckpt is None and args.file is None:
        raise TrainError("give the run's folder with --ckpt DIR (or the FILE it was trained from)")
    return Path(args.ckpt) if args.ckpt is not None else default_out(args.file)


@_run_errors
def cmd_eval(args) -> int:
    from .train import TrainError, describe, evaluate, load_run, run_corpus, run_tokenizer
    if args.task is not None:
        return _eval_task(args)
    from .tasks import all_options
    for flag, value in [("--seed", args.seed), ("--out", args.out), ("--steps", args.steps), ("--set", args.set)] + \
            [(f"--{n.replace('_', '-')}", getattr(args, f"task_{n}")) for n in all_options()]:
        if value is not None:
            return _fail(f"{flag} is an option of the tasks: give --task NAME too (docs/evaluation.md)")
    ckpt_dir = _ckpt_dir(args)
    model, ckpt = load_run(ckpt_dir, args.file, args.device)
    corpus = run_corpus(ckpt, args.data, run_tokenizer(ckpt, ckpt_dir))
    corpus.require(int(model.settings["context"]))
    loss = evaluate(model, corpus, args.eval_batches or ckpt.eval_batches, args.precision)
    if not math.isfinite(loss):
        raise TrainError(f"the held-out loss of {ckpt_dir} (step {ckpt.step}) on {corpus.name} is {loss}: "
                         f"the model's outputs are not finite")
    print(f"{ckpt_dir} (step {ckpt.step}), held-out {corpus.name}: {describe(loss, corpus.tokenizer.unit)}")
    return 0


def _eval_task(args) -> int:
    """`eval --task NAME`: the task's evaluation of a run (trained first with --steps),
    written as eval-NAME.json and eval-NAME.png (nldsl/tasks)."""
    from . import tasks
    from .run import RunError, parse_overrides
    from .train import CHECKPOINT, TrainError, load_checkpoint, train
    task = tasks.get(args.task)
    options = tasks.given_options(task, args)
    if not task.heldout:
        for flag, value in (("--data", args.data), ("--eval-batches", args.eval_batches)):
            if value is not None:
                raise RunError(f"{flag} is an option of the lm task, not of {task.name}")
    if args.ckpt is None and args.file is None:
        raise TrainError("give the run's folder with --ckpt DIR (or the FILE it was trained from)")
    ckpt_dir = Path(args.ckpt) if args.ckpt is not None else tasks.task_out(args.file, task.name)
    if args.steps is not None:  # train what the task needs first: fresh, or on to --steps
        if args.file is None:
            raise TrainError(f"--steps trains the spec FILE for the {task.name} task: give FILE")
        trained = load_checkpoint(ckpt_dir).step if os.path.lexists(ckpt_dir / CHECKPOINT) else None
        if trained is None or trained < args.steps:
            train(args.file, data=None if trained is not None else args.data or task.data, steps=args.steps,
                  out_dir=ckpt_dir, resume=trained is not None, overrides=parse_overrides(args.set), seed=args.seed,
                  sample=0, device=args.device, precision=args.precision)
    elif args.set is not None:
        raise RunError("--set is a setting of the model to train: give --steps N too (a checkpoint keeps its own)")
    tasks.evaluate_run(task, ckpt_dir, Path(args.out) if args.out is not None else ckpt_dir, file=args.file,
                       seed=args.seed or 0, options=options, device=args.device, precision=args.precision,
                       data=args.data, eval_batches=args.eval_batches)
    return 0


@_run_errors
def cmd_generate(args) -> int:
    from .train import TrainError, generate, load_run, run_tokenizer
    try:
        prompt = args.prompt.encode()
    except UnicodeEncodeError:  # bytes of the command line that are not UTF-8
        raise TrainError("--prompt is not UTF-8 text") from None
    ckpt_dir = _ckpt_dir(args)
    model, ckpt = load_run(ckpt_dir, args.file, args.device)
    out = generate(model, prompt, args.n, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                   tokenizer=run_tokenizer(ckpt, ckpt_dir), precision=args.precision)
    print((prompt + out).decode("utf-8", errors="replace"))
    return 0


@_run_errors
def cmd_bench(args) -> int:
    """Tokens/s, FLOP rate and peak memory of specs, the fused path against the reference
    (docs/benchmarks.md)."""
    from .bench import BenchError, int_list, run
    from .run import RunError, device, parse_overrides
    paths = {"both": ("fused", "reference"), "fused": ("fused",), "reference": ("reference",)}[args.paths]
    try:
        run(args.specs or None, batch=args.batch, context=args.context, settings=parse_overrides(args.set) or {},
            paths=paths, repeats=args.repeats, warmup=args.warmup, memory=not args.no_memory,
            scaling_specs=args.scaling_specs.split(",") if args.scaling_specs else [],
            scaling_tokens=int_list(args.scaling_tokens), device=str(device(args.device)), threads=args.threads,
            matmul_size=args.matmul_size, json_out=args.json)
    except (BenchError, RunError, ValueError) as e:
        return _fail(str(e))
    return 0


@_run_errors
def cmd_data_prepare(args) -> int:
    """Text files, folders, globs, .jsonl and .parquet into token shards (nldsl/shards.py)."""
    from .shards import prepare
    prepare(args.inputs, args.output, tokenizer=args.tokenizer, heldout=args.heldout,
            shard_tokens=args.shard_tokens, field=args.field)
    return 0


def _add_data_command(sub) -> None:
    from .data import HELDOUT
    from .shards import SHARD_TOKENS
    d = sub.add_parser("data", help="prepare text as token shards to train on")
    p = d.add_subparsers(dest="data_command", required=True).add_parser(
        "prepare", help="tokenize text files, folders, globs, .jsonl and .parquet into token shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a text file, a folder (its text files, recursively), "
                   "a glob, a .jsonl file or a .parquet file")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="a new or empty folder for the shards")
    p.add_argument("--tokenizer", metavar="TOK", help="`bytes` (the default), bpe:VOCAB (trained on the inputs), or "
                                                      "a tokenizer.json or SentencePiece .model file")
    p.add_argument("--heldout", type=float, default=HELDOUT, metavar="FRACTION",
                   help=f"the last FRACTION of the tokens is held out (default {HELDOUT})")
    p.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard (default {SHARD_TOKENS:,})")
    p.add_argument("--field", default="text", help="the field of a .jsonl record, or the column of a .parquet file, "
                                                   "that holds the text (default: text)")
    p.set_defaults(run=cmd_data_prepare)


def _add_run_commands(sub) -> None:
    t = sub.add_parser("train", help="train a model on text (checkpoints, resumable)")
    t.add_argument("file", metavar="FILE", help="a .nl file or an example's name (hope, titans, ...), optionally "
                                                "FILE:MODEL (default: its first model)")
    t.add_argument("--data", help="`pydoc` (Python's help text, the default), a file of at most 1 GiB, or a folder "
                                  "made by `nldsl data prepare`")
    t.add_argument("--tokenizer", metavar="TOK", help="`bytes` (the default), bpe:VOCAB (a byte-level BPE trained on "
                                                      "the data), or a tokenizer.json or SentencePiece .model file")
    t.add_argument("--steps", type=int, default=1000, metavar="N", help="train up to step N (default 1000)")
    t.add_argument("--out", metavar="DIR", help="the run's folder (default: runs/<FILE's name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--compile", nargs="?", const=True, default=False, choices=("regional", "whole"), metavar="HOW",
                   help="compile the training steps with torch.compile: `regional`, each level's period step, once "
                        "for every context length; `whole`, the whole step as one graph; without HOW, regional "
                        "for a model with task levels, else whole; the first step compiles")
    t.add_argument("--seed", type=int, metavar="N", help="initialisation and batches (default 0; a resumed run keeps its own)")
    t.add_argument("--eval-every", type=int, default=100, metavar="N", help="held-out loss every N steps (default 100; 0: at the start and end only)")
    t.add_argument("--eval-batches", type=int, default=8, metavar="N", help="held-out batches per evaluation (default 8)")
    t.add_argument("--ckpt-every", type=int, default=100, metavar="N", help="checkpoint every N steps (default 100; 0: at the end only)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    t.add_argument("--inner-clip", type=float, metavar="X",
                   help="clip every inner update to norm X instead of stopping at a NaN or Inf (kept by the run)")
    t.add_argument("--lr", type=float, metavar="X",
                   help="the peak learning rate: every optimizer line's lr is scaled so that the largest is X "
                        "(default: the spec's)")
    t.add_argument("--lr-schedule", choices=SCHEDULES,
                   help="after the warmup, keep the lr (constant, the default) or decay it to 0 at --steps")
    t.add_argument("--warmup", type=int, metavar="N",
                   help="raise the lr linearly over the first N steps (default: the spec's `warmup`, else 0)")
    t.add_argument("--grad-clip", type=float, metavar="X",
                   help="clip the gradient of all parameters to norm X (default: the spec's `grad_clip`, else none)")
    t.add_argument("--accumulate", type=int, metavar="N",
                   help="run each step's batch as N micro-batches: the same step in less memory (default: the "
                        "spec's `accumulate`, else 1)")
    t.add_argument("--sample", type=int, metavar="N", help="tokens (bytes) to sample at the end (default 200, with "
                                                           "--task 0; 0: none)")
    t.add_argument("--task", choices=_training_tasks(), help="train on a task's synthetic data (mqar: multi-query "
                   "associative recall) into runs/<FILE's name>-TASK (docs/evaluation.md)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--wandb", action="store_true", help="log to Weights & Biases too (needs the wandb package; "
                                                        "WANDB_MODE=offline keeps it on this machine)")
    t.add_argument("--nproc", type=int, metavar="N", help="train data-parallel on N processes of this machine "
                   "(starts torchrun --standalone --nproc-per-node N; the spec's batch is split among them)")
    t.add_argument("--fsdp", action="store_true", help="shard the weights, gradients and optimizer state among the "
                   "ranks (FSDP2) instead of replicating them (DDP)")
    t.add_argument("--backend", choices=("gloo", "nccl"), help="how the ranks talk (default: nccl on CUDA, gloo on "
                   "the CPU)")
    t.add_argument("--dist-timeout", type=float, metavar="S", help="seconds a rank waits for the others to start "
                   "and at each exchange before the job stops with an error (default 300)")
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("eval", help="held-out loss and bits per byte (token) of a checkpoint")
    g = sub.add_parser("generate", help="sample text from a checkpoint")
    for s in (e, g):
        s.add_argument("file", metavar="FILE", nargs="?", help="the spec (default: the one stored in the checkpoint)")
        s.add_argument("--ckpt", metavar="DIR", help="the run's folder (default: runs/<FILE's name>)")
    e.add_argument("--data", help="`pydoc`, a file of at most 1 GiB or a prepared folder (default: the run's data)")
    e.add_argument("--eval-batches", type=int, metavar="N", help="held-out batches (default: as many as the run used)")
    from .tasks import TASKS, add_arguments
    e.add_argument("--task", choices=list(TASKS), help="an evaluation of the paper's kind, written as eval-TASK.json "
                   "and eval-TASK.png into the run's folder: " + "; ".join(f"{n}: {t.summary}" for n, t in TASKS.items()))
    e.add_argument("--out", metavar="DIR", help="where a task writes its files (default: the run's folder)")
    e.add_argument("--seed", type=int, metavar="N", help="a task's examples, and its training (default 0)")
    e.add_argument("--steps", type=int, metavar="N", help="with FILE: first train the task's run (runs/<FILE's name>"
                   "[-TASK]) up to step N on the task's data, as `nldsl train` does")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --steps: override a model setting of "
                   "the run to train, e.g. --set dim=64")
    add_arguments(e)
    e.set_defaults(run=cmd_eval)
    c = _add_compare_command(sub)
    for s in (t, e, g, c):
        s.add_argument("--device", default="auto", help="auto (CUDA when there is one; the default), cpu, cuda or cuda:N")
        s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                       help="the forward's precision: fp32 (the default), bf16 or fp16 (torch.autocast; fp16 with a "
                            "gradient scaler); weights, optimizer and fast states stay float32")
    g.add_argument("--prompt", default="\n", metavar="TEXT", help="the text to continue (default: a newline)")
    g.add_argument("-n", type=int, default=200, help="tokens (bytes, for a byte-level run) to generate (default 200)")
    g.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 picks the likeliest token (default 0.8)")
    g.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens only")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="the same seed draws the same text (default 0)")
    g.set_defaults(run=cmd_generate)


def _add_compare_command(sub):
    from .compare import EVALS, SEEDS, TOLERANCE
    from .tasks import TASKS, add_arguments
    c = sub.add_parser("compare", help="train specs on the same tokens at matched parameters and evaluate them "
                                       "on the same tasks")
    c.add_argument("variants", nargs="+", metavar="VARIANT", help="[NAME=]SPEC[,KEY=VALUE...]: a .nl file or an "
                   "example's name, optionally FILE:MODEL, with settings of its own (an ablation: "
                   "slow=mine.nl,cms_period=256); NAME defaults to the model's or the file's name")
    c.add_argument("--budget", required=True, metavar="TOKENS", help="tokens each run trains on, e.g. 2M (rounded "
                   "down to a whole number of every variant's steps of batch × context)")
    c.add_argument("--seeds", type=int, default=SEEDS, metavar="N", help=f"runs of each variant, seeds 0 to N-1: "
                   f"initialisation, batches and the tasks' examples (default {SEEDS})")
    c.add_argument("--tasks", default="lm", metavar="A,B", help=f"the evaluations, of {', '.join(TASKS)} "
                   f"(default lm; docs/evaluation.md)")
    c.add_argument("--params", metavar="N", help="the parameter count to match (default: the first variant's)")
    c.add_argument("--tolerance", type=float, default=TOLERANCE, metavar="F", help=f"how far a variant's "
                   f"parameters may be from it, as a fraction (default {TOLERANCE}: ±{TOLERANCE * 100:g}%%)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setting of every variant, e.g. "
                   "--set context=128 (a variant's own settings win; matching may change dim and depth)")
    c.add_argument("--data", help="the text to train on: `pydoc` (the default), a file of at most 1 GiB, or a "
                                  "folder made by `nldsl data prepare`")
    c.add_argument("--out", metavar="DIR", help="the report's folder, with every run's under runs/ (default: "
                                                "runs/compare-NAME-NAME...)")
    c.add_argument("--evals", type=int, default=EVALS, metavar="N", help=f"held-out evaluations during each "
                   f"run, at the same token counts in every run (default {EVALS})")
    c.add_argument("--eval-batches", type=int, default=8, metavar="N", help="held-out batches per evaluation "
                                                                            "(default 8)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(c)
    c.set_defaults(run=cmd_compare)
    return c


@_run_errors
def cmd_compare(args) -> int:
    """Variants trained at a matched budget and evaluated on the same tasks (nldsl/compare.py)."""
    from .compare import compare
    from .run import parse_overrides
    from .tasks import all_options
    compare(args.variants, args.budget, seeds=args.seeds, tasks=args.tasks, out=args.out,
            overrides=parse_overrides(args.set), params=args.params, tolerance=args.tolerance,
            options={n: getattr(args, f"task_{n}") for n in all_options()}, data=args.data, evals=args.evals,
            eval_batches=args.eval_batches, device=args.device, precision=args.precision, quiet=args.quiet,
            command=["nldsl", *args.argv])
    return 0


def _training_tasks() -> list[str]:
    """The tasks that make their own data to train on (`nldsl train --task`)."""
    from .tasks import TASKS
    return [name for name, task in TASKS.items() if task.data != "pydoc"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nldsl", description="A compiler for Nested Learning specs (.nl files).")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check specs and report every mistake")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--error-format", choices=("text", "json"), default="text")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    c.set_defaults(run=cmd_check)

    f = sub.add_parser("fmt", help="format specs canonically (keeps comments)")
    f.add_argument("files", nargs="+", metavar="FILE")
    f.add_argument("--check", action="store_true", help="only report files that would change")
    f.set_defaults(run=cmd_fmt)

    for name, fn, text in (("ir", cmd_ir, "print the level graph"),
                           ("stats", cmd_stats, "parameters, inner state and FLOPs per level"),
                           ("graph", cmd_graph, "draw the levels (DOT, SVG, PNG)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("file", metavar="FILE")
        s.add_argument("--name", help="which model or optimizer of the file (default: the first model, else the first optimizer)")
        s.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
        if name == "ir":
            s.add_argument("--levels", action="store_true", help="only the derived level hierarchy")
            s.add_argument("--print-after", choices=passes.PASS_NAMES, metavar="PASS",
                           help=f"print the graph after this pass, one of: {', '.join(passes.PASS_NAMES)}")
        if name == "graph":
            s.add_argument("-o", "--output", help="out.dot (or .gv), out.svg, out.png or out.pdf (default: DOT on stdout)")
            s.add_argument("--schedule", action="store_true",
                           help="also say how each level runs: whole periods at once, stacked memories, tile, kernel")
            s.add_argument("--view", choices=("full", "levels"), default="full",
                           help="full: each level's memories and their flows (default); levels: one box per level, "
                                "only the flows between levels")
        s.set_defaults(run=fn)
    k = sub.add_parser("compile", help="write the model as a standalone Python file")
    k.add_argument("file", metavar="FILE")
    k.add_argument("-o", "--output", metavar="model.py", help="where to write it (default: stdout)")
    k.add_argument("--name", help="which model of the file (default: the first)")
    k.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    k.set_defaults(run=cmd_compile)
    _add_run_commands(sub)
    _add_data_command(sub)
    b = sub.add_parser("bench", help="tokens/s, FLOP rate and peak memory, fused against reference")
    b.add_argument("specs", nargs="*", metavar="SPEC", help="an example's name (hope, titans, ...) or a .nl file, "
                   "optionally FILE:MODEL (default: every example)")
    b.add_argument("--batch", type=int, default=4, metavar="N", help="sequences per call (default 4)")
    b.add_argument("--context", type=int, metavar="N", help="tokens per sequence (default: each spec's own context)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
    b.add_argument("--paths", choices=("both", "fused", "reference"), default="both", help="which paths (default both)")
    b.add_argument("--repeats", type=int, default=5, metavar="N", help="timed calls per path and mode (default 5)")
    b.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed calls first (default 1)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (fresh processes)")
    b.add_argument("--scaling-specs", default="gated_deltanet,titans,hope", metavar="A,B",
                   help="specs for the memory-by-tokens table (default gated_deltanet,titans,hope)")
    b.add_argument("--scaling-tokens", default="512,2048,8192", metavar="N,N",
                   help="lengths for that table (default 512,2048,8192; '' skips it)")
    b.add_argument("--device", default="auto", help="auto (CUDA when there is one; the default), cpu, cuda or cuda:N")
    b.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's own choice)")
    b.add_argument("--matmul-size", type=int, default=2048, metavar="N", help="n of the n×n matmuls that measure the peak")
    b.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    b.set_defaults(run=cmd_bench)
    ls = sub.add_parser("lsp", help="a language server for editors, on stdin and stdout")
    ls.add_argument("--stdio", action="store_true", help="talk over stdin and stdout (the only way; accepted "
                                                         "because editors' clients pass it)")
    ls.set_defaults(run=cmd_lsp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` gives them to the ranks it starts
    try:
        return args.run(args)
    except SystemExit as e:  # a command's own one-line refusal (`_fail` said why)
        return e.code
    except NLError as e:
        return _report_errors(e, getattr(args, "error_format", "text"))
    except FileError as e:  # an output that cannot be written
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # a bug in nldsl, not the user's mistake
        import traceback
        traceback.print_exc()
        print("\ninternal error: this is a bug in nldsl, not in your spec; please report it with the spec.",
              file=sys.stderr)
        return 2
