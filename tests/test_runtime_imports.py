"""How the runtime's modules import each other, read from their sources with `ast`:
the runtime never imports the compiler (a model emitted as source needs only
nldsl.runtime), and no reference reaches a Triton kernel or the fused path through
its imports (docs/architecture.md, "runtime")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "nldsl" / "runtime"


def module_name(path: Path) -> str:
    parts = ["nldsl", *path.relative_to(RUNTIME.parent).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(RUNTIME.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The absolute names of what a module imports: modules, and `from X import Y`'s
    X.Y wherever Y may be a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            out.add(source)
            out.update(f"{source}.{alias.name}" for alias in node.names)
    return out


def reached(name: str) -> set[str]:
    """Every runtime module that importing `name` loads: its imports, their packages,
    and so on."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for target in imports(current):
            parts = target.split(".")
            todo.extend(p for p in (".".join(parts[:i]) for i in range(2, len(parts) + 1)) if p in MODULES)
    return seen


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_runtime_never_imports_the_compiler(name):
    compiler = {t for t in imports(name) if t.split(".")[:2] == ["nldsl", "compiler"] or t.split(".")[0] == "compiler"}
    assert not compiler, f"{MODULES[name]} imports {sorted(compiler)}"


REFERENCES = sorted(n for n in MODULES if n.endswith(".naive") or n in (
    "nldsl.runtime.level", "nldsl.runtime.memories", "nldsl.runtime.memories.layout", "nldsl.runtime.memories.rules"))
FAST = {n for n in MODULES if n.endswith(".triton")} | {"nldsl.runtime.kernels", "nldsl.runtime.fused"}


@pytest.mark.parametrize("name", REFERENCES)
def test_a_reference_reaches_no_kernel_and_not_the_fused_path(name):
    assert not reached(name) & FAST, f"{name} loads {sorted(reached(name) & FAST)}"


def test_each_kernel_imports_its_own_reference():
    """A kernel falls back on, or differentiates, the reference beside it."""
    assert "nldsl.runtime.memories.linear.chunk" in imports("nldsl.runtime.memories.linear.triton")
    assert "nldsl.runtime.memories.mlp.naive" in imports("nldsl.runtime.memories.mlp.triton")
