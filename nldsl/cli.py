"""The `nldsl` command: check, fmt, ir, stats, graph.

A user's mistake prints located diagnostics and exits 1; only a bug in nldsl itself
prints a traceback (and says so).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .compiler import passes
from .compiler.diagnostics import NLError, Report, render
from .compiler.driver import check as check_source


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
    for f in args.files:
        report = Report()
        try:
            program = check_source(Path(f), report)
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
    program = check_source(Path(args.file), report)
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
    dot = to_dot(passes.run(spec))
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
            _atomic_write(fallback, dot.encode())
            print(f"note: {e}\nwrote DOT text to {fallback} instead", file=sys.stderr)
            return 1
    if out is None:
        sys.stdout.write(dot)
    else:
        _atomic_write(out, data)
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
        formatted = format_text(text, f, report) if text is not None else None
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
            _atomic_write(path, formatted.encode())
            print(f"formatted {f}")
    return status


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nldsl", description="A compiler for Nested Learning specs (.nl files).")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check specs and report every mistake")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--error-format", choices=("text", "json"), default="text")
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
        if name == "ir":
            s.add_argument("--levels", action="store_true", help="only the derived level hierarchy")
            s.add_argument("--print-after", choices=passes.PASS_NAMES, help="print the graph after this pass")
        if name == "graph":
            s.add_argument("-o", "--output", help="out.dot (or .gv), out.svg, out.png or out.pdf (default: DOT on stdout)")
        s.set_defaults(run=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NLError as e:
        return _report_errors(e, getattr(args, "error_format", "text"))
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
