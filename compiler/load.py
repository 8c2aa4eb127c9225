"""Load: a root `.nl` file and the files it imports, parsed, in dependency order.

Where an import may lead (docs/language.md, "Imports"): its path is relative to the
importing file's folder and must stay inside the folder of the spec being checked
(the current directory for a spec given as text), or else it names a spec of the
library shipped with nldsl (the `examples/` folder, e.g. `import "optim/adam.nl"`).
An import never reads a file whose name does not end in `.nl`, nor leaves those
folders by `..`, an absolute path or a symbolic link: a spec cannot make the checker
read, or quote in a diagnostic, any other file.

The loader also reads the library optimizers that the root file's models use by name
alone (`optimizer adam(...)` finds the library's `optim/adam.nl`, docs/language.md
§12): a name that is an identifier, under the library's own `optim/`
folder. All reading happens here; the checker only reads the `Program`.
"""
from __future__ import annotations

import errno
import posixpath
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..files import FileError, FileTooLarge, read_limited
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
    # optimizers the root file's models use by name alone, from the library: name -> (definition, file)
    library: dict[str, tuple[ast.OptimizerDef, str]] = field(default_factory=dict)
    # the optimizers the library offers by name, listed when a use names one it does not have
    library_names: tuple[str, ...] = ()


# ------------------------------------------------------------------ reading
def read_source(path: Path, report: Report, span: Span | None = None) -> str | None:
    """The file's text, or a diagnostic saying why it cannot be had."""
    try:
        data = read_limited(path, MAX_BYTES)
    except FileTooLarge as e:
        size = f"{e.size:,} bytes" if e.size is not None else f"more than {MAX_BYTES:,} bytes"
        report.error("NL001", f"{path} is {size}; a spec is at most {MAX_BYTES:,}", span or Span(str(path), 1, 1, 1, 2))
        return None
    except FileError as e:
        report.error("NL001", str(e), span)
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


# ------------------------------------------------------------------ loading
@dataclass(frozen=True)
class _Place:
    """Where a loaded file is: its folder, and the folder its imports must stay in."""

    folder: Path
    tree: Path


def find_root(path: Path) -> Path | None:
    """The file a root path names: as given, else (a relative path) in the library."""
    if path.is_absolute() or _exists(path):
        return path
    return _within(library_root() / path, library_root())


def load(source: str | Path, report: Report, text: str | None = None, folder: Path | None = None) -> Program | None:
    """Load `source` (a path; or a display name when `text` is given) and its imports.
    The imports of a spec given as text are looked up in `folder` (default: the current
    directory), which they must stay inside: an editor's buffer passes its file's folder."""
    root = str(source)
    if text is None:
        path = find_root(Path(source))
        if path is None:
            report.error("NL001", f"cannot read {root}: No such file or directory", None,
                         f"looked in the current directory ({_cwd()}) and in nldsl's library ({library_root()})")
            return None
        text = read_source(path, report)
        if text is None:
            return None
        key, folder = str(_real(path)), _real(path).parent
        quote = path.suffix == ".nl"  # a file the user named, but not a spec: never show its lines
    else:
        key, folder, quote = root, _real(folder) if folder is not None else _cwd(), True
    program = Program(root)
    _load(root, key, text, _Place(folder, folder), program, report, stack=[], quote=quote)
    if not report.errors:
        _load_library_optimizers(program, report)
    return program if not report.errors else None


def _load(file: str, key: str, text: str, place: _Place, program: Program, report: Report, stack: list[str],
          quote: bool = True) -> None:
    """Parse `file` (keyed `key` on the import stack) and load what it imports."""
    module = parse(text, file, report, quote)
    if module is None:
        return
    stack.append(key)
    program.imports[file] = []
    for item in module.items:
        if not isinstance(item, ast.Import):
            continue
        found = _resolve(item, place, report)
        if found is None:
            continue
        target, child_place = found
        child = str(target)
        program.imports[file].append(child)
        if child in stack:
            cycle = " -> ".join(Path(f).name for f in stack[stack.index(child):] + [child])
            report.error("NL021", f"circular import: {cycle}", item.span)
            continue
        if child not in program.modules:
            child_text = read_source(target, report, item.span)
            if child_text is not None:
                _load(child, child, child_text, child_place, program, report, stack)
    stack.pop()
    program.modules[file] = module


def library_optimizers() -> tuple[str, ...]:
    """The names of the optimizers the library offers without an import."""
    return tuple(p.stem for p in (library_root() / "optim").glob("*.nl"))


def _load_library_optimizers(program: Program, report: Report) -> None:
    """Load the library optimizers that the root file's models name in `optimizer NAME(...)`
    lines and that neither the root file nor a file it imports directly defines."""
    root = program.modules.get(program.root)
    if root is None:
        return
    defined = {item.name for f in program.imports.get(program.root, []) + [program.root] if f in program.modules
               for item in program.modules[f].items if isinstance(item, ast.OptimizerDef)}
    tried: set[str] = set()
    for model in (i for i in root.items if isinstance(i, ast.Model)):
        for use in (s for s in model.body if isinstance(s, ast.OptimizerUse)):
            name, _ = ast.head(use.value)
            if name is None or name in defined or name in tried:
                continue
            tried.add(name)
            found = _library_optimizer(name, program, report)
            if found is not None:
                program.library[name] = found
            elif not program.library_names:
                program.library_names = library_optimizers()


def _library_optimizer(name: str, program: Program, report: Report) -> tuple[ast.OptimizerDef, str] | None:
    """`optimizer NAME` in the library's `optim/NAME.nl`: its definition and file, or None."""
    path = library_root() / "optim" / f"{name}.nl"
    try:
        found = name.isidentifier() and path.is_file()
    except OSError:  # e.g. a name too long for the file system
        found = False
    if not found:
        return None
    key = str(path.resolve())
    module = program.modules.get(key)  # already loaded when a file imports it
    if module is None:
        text = read_source(path, report)
        module = parse(text, key, report) if text is not None else None
    if module is None:
        return None
    item = next((i for i in module.items if isinstance(i, ast.OptimizerDef) and i.name == name), None)
    return (item, key) if item else None


def _resolve(item: ast.Import, place: _Place, report: Report) -> tuple[Path, _Place] | None:
    """The file an import names and where it is, or None after reporting why not."""
    path, span = item.path, item.span
    rule = (f"imports stay inside the folder of the spec being checked ({place.tree}), or name a spec of "
            f"nldsl's library ({library_root()}), like \"optim/adam.nl\"")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
        report.error("NL022", f'"{path}" is an absolute path', span, rule)
        return None
    if not path.endswith(".nl"):
        report.error("NL023", f'"{path}" is not a .nl spec', span, "only `.nl` files can be imported")
        return None
    beside = Path(posixpath.normpath(place.folder / path))  # `..` taken away without following links
    if not beside.is_relative_to(place.tree):
        report.error("NL022", f'"{path}" leads outside the folder of the spec being checked', span, rule)
        return None
    if _exists(beside):
        real, tree = _within(beside, place.tree), place.tree
        if real is None:
            report.error("NL022", f'"{path}" links to a file outside the folder of the spec being checked', span, rule)
            return None
    else:
        real, tree = _within(library_root() / path, library_root()), _real(library_root())
        if real is None:
            report.error("NL020", f'cannot find "{path}"', span,
                         f"looked beside this file ({place.folder}) and in nldsl's library ({library_root()})")
            return None
    if real.suffix != ".nl":
        report.error("NL023", f'"{path}" links to a file that is not a .nl spec', span, "only `.nl` files can be imported")
        return None
    return real, _Place(real.parent, tree)


def _within(path: Path, tree: Path) -> Path | None:
    """The real path of `path`, links followed, if it exists and lies inside `tree`."""
    try:
        real = _real(path)
        return real if real.is_relative_to(_real(tree)) and real.exists() else None
    except (OSError, ValueError):  # a name too long for the file system, a loop of links: not found
        return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL in it
        return False


def _cwd() -> Path:
    try:
        return _real(Path.cwd())
    except OSError:  # the current directory was removed: a spec given as text sees the library only
        return _real(library_root())


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # a loop of links (Python < 3.13)
        raise OSError(errno.ELOOP, "a loop of symbolic links", str(path)) from None
