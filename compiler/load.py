"""Load: a root `.nl` file and the files it imports, parsed, in dependency order.

An import path is looked up beside the importing file, then in the standard library
of specs shipped with nldsl (the `examples/` folder, e.g. `import "optim/adam.nl"`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import ast
from .diagnostics import Report, Span
from .parse import MAX_BYTES, parse


def library_root() -> Path:
    return Path(str(resources.files("nldsl.examples")))


@dataclass
class Program:
    root: str
    modules: dict[str, ast.Module] = field(default_factory=dict)  # imports before importers
    imports: dict[str, list[str]] = field(default_factory=dict)  # file -> files it imports


def read_source(path: Path, report: Report, span: Span | None = None) -> str | None:
    """The file's text, or a diagnostic saying why it cannot be had."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            report.error("NL001", f"{path} is {size:,} bytes; a spec is at most {MAX_BYTES:,}",
                         span or Span(str(path), 1, 1, 1, 2))
            return None
        data = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        report.error("NL001", f"cannot read {path}: {getattr(e, 'strerror', None) or e}", span)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        what = path
        if span is None:  # the root file: point at the byte
            line, col = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
            span, what = Span(str(path), line, col, line, col + 1), "file"
        report.error("NL001", f"{what} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); is it a binary file?", span)
        return None


def load(source: str | Path, report: Report, text: str | None = None) -> Program | None:
    """Load `source` (a path; or a display name when `text` is given) and its imports."""
    root = str(source)
    if text is None:
        text = read_source(Path(source), report)
        if text is None:
            return None
    program = Program(root)
    _load(root, text, program, report, stack=[])
    return program if not report.errors else None


def _load(file: str, text: str, program: Program, report: Report, stack: list[str]) -> None:
    module = parse(text, file, report)
    if module is None:
        return
    # imports are keyed by resolved path; the root by the name it was given
    stack.append(str(Path(file).resolve()) if Path(file).exists() else file)
    program.imports[file] = []
    base = Path(file).parent if Path(file).exists() else Path.cwd()
    for item in module.items:
        if not isinstance(item, ast.Import):
            continue
        target = _resolve(item.path, base)
        if target is None:
            report.error("NL020", f'cannot find "{item.path}"', item.span,
                         f"looked beside this file ({base}) and in nldsl's library ({library_root()})")
            continue
        key = str(target)
        program.imports[file].append(key)
        if key in stack:
            cycle = " -> ".join(Path(f).name for f in stack[stack.index(key):] + [key])
            report.error("NL021", f"circular import: {cycle}", item.span)
            continue
        if key not in program.modules:
            child = read_source(target, report, item.span)
            if child is not None:
                _load(key, child, program, report, stack)
    stack.pop()
    program.modules[file] = module


def _resolve(path: str, base: Path) -> Path | None:
    for root in (base, library_root()):
        try:
            candidate = (root / path).resolve()
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):  # e.g. a name too long for the file system: not found
            continue
    return None
