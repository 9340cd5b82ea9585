"""Our modules and the arrows between them, read from the source with ast (nothing is imported).

Two tests read it: test_layers (which package may import which) and test_wheel
(the wheel holds exactly what the `zlb` command can run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Every package of ours, product and developer tools; a new one must be placed in test_layers' table.
PACKAGES = (
    "wire",
    "process_supervisor",
    "balancer",
    "server_node",
    "client_node",
    "monitor",
    "http_gateway",
    "bench",
    "zlb",
    "tools",
)


@dataclass(frozen=True)
class Import:
    """One import statement (or a module named in a string) pointing at one of our modules."""

    path: Path
    line: int
    source: str  # the statement as written, for failure messages
    module: str  # the dotted name it reaches, e.g. "wire.protocol" or "zlb.__main__"

    @property
    def package(self) -> str:
        return self.module.partition(".")[0]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under our packages (sitecustomize dirs included)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_in(path: Path) -> Iterator[Import]:
    """Absolute imports of our packages anywhere in a file, inside functions too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, ast.unparse(node), alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # `from bench import stats` reaches bench.stats when that is a module, else bench.
                yield Import(path, node.lineno, ast.unparse(node), f"{node.module}.{alias.name}")


def launched_in(path: Path) -> Iterator[Import]:
    """String constants that name one of our modules: what a process runs with `python -m NAME`, or a
    "module:attribute" the `zlb` group imports when that command runs (zlb/cli.py).

    Docstrings are left out: they name tools for a reader, they launch nothing.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = {id(doc) for doc in _docstrings(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            # "balancer.serve_cli:keys" reaches what `from balancer.serve_cli import keys` does.
            name = node.value.replace(":", ".", 1)
            if name.partition(".")[0] in PACKAGES and name.replace(".", "").replace("_", "").isalnum():
                yield Import(path, node.lineno, repr(node.value), name)


def _docstrings(tree: ast.Module) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def resolve(name: str, modules: dict[str, Path], run: bool = False) -> list[str]:
    """The modules a dotted name loads: the longest existing prefix and every package above it.

    With `run` (the name is launched with `python -m`), a package runs its __main__ as well.
    """
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    if not parts:
        return []
    loaded = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if run and len(parts) == len(name.split(".")) and f"{name}.__main__" in modules:
        loaded.append(f"{name}.__main__")
    return [m for m in loaded if m in modules]


def reachable(start: str = "zlb.cli", root: Path = ROOT) -> set[str]:
    """Every module the `zlb` command can load: imports from `start`, transitively, plus what those launch."""
    modules = module_files(root)
    seen: set[str] = set()
    todo = resolve(start, modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = modules[name]
        for edge in imports_in(path):
            todo.extend(resolve(edge.module, modules))
        for edge in launched_in(path):
            todo.extend(resolve(edge.module, modules, run=True))
    return seen
