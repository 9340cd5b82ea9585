"""Every import the product makes is declared, and none reaches into another project's internals unpinned.

The product is the packages pyproject.toml ships (its setuptools include list), read from there so a
new package is checked the day it is added. Each third-party module a product file imports (at any
depth of the file: a function's lazy import counts) must belong to a distribution named in
[project].dependencies, or an install from the wheel fails at the first request that needs it.

Issue 19: another project's internals (a module or name starting with `_`, or the ones below that are
internal without saying so) are kept only where a measured win needs one, with its distribution pinned
below the next minor release (`<X.Y`) and a test that fails if the internal changes. ALLOWED_INTERNALS
lists those, each with the distribution whose pin it relies on.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check needs to run on one version only

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Modules internal to their project although no component of their name starts with `_`.
INTERNAL_MODULES = ("zmq.backend", "zmq.sugar", "uvicorn.protocols")

# (product module, what it imports) -> the distribution pinned below its next minor release for it,
# and the test that fails if the internal changes.
ALLOWED_INTERNALS = {
    # The request-head deadline against slowloris clients: uvicorn has no public way (http_gateway/serve.py).
    ("http_gateway.serve", "uvicorn.protocols.http.h11_impl.H11Protocol"): "uvicorn",
}


@dataclass(frozen=True)
class Import:
    """One name a product file takes from another project: `zmq.Socket`, `uvicorn.protocols.http`."""

    module: str  # the product module importing it, e.g. "wire.sockets"
    line: int
    dotted: str  # what it imports, module path and (for `from X import y`) the name
    by_attribute: bool = False  # reached as `module.attr...` in the code, not in an import statement

    @property
    def top(self) -> str:
        return self.dotted.split(".")[0]

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) {'uses' if self.by_attribute else 'imports'} {self.dotted}"


def normalised(distribution: str) -> str:
    """A distribution name as PEP 503 compares them: prometheus_client and Prometheus-Client are one."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def product_packages() -> list[str]:
    """The top-level packages pyproject ships, from its setuptools include list (patterns allowed)."""
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = {
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    }
    assert found, f"no package directory matches pyproject's include list {patterns}"
    return sorted(found)


def declared_requirements() -> dict[str, str]:
    """[project].dependencies by normalised distribution name: {"pyzmq": "pyzmq>=27"}."""
    requirements = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert name, f"cannot read a distribution name from {requirement!r}"
        requirements[normalised(name.group())] = requirement
    return requirements


def product_files() -> Iterator[tuple[str, Path]]:
    """(module name, path) for every Python file in the product packages, data scripts included."""
    for package in product_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield module.removesuffix(".__init__"), path


def _attribute_path(node: ast.Attribute, aliases: dict[str, str]) -> str | None:
    """`zmq.sugar.socket.Socket` for that chain of attributes on an imported module; None otherwise."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value  # type: ignore[assignment]
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Absolute imports in one file, `from X import y` as X.y, and attribute chains on an imported module."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}  # a name an import binds -> the dotted path it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import a.b` binds `a`
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
                yield Import(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                yield Import(module, node.lineno, f"{node.module}.{alias.name}")
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # whole chains only: a.b.c, not a.b too
            dotted = _attribute_path(node, aliases)
            if dotted is not None:
                yield Import(module, node.lineno, dotted, by_attribute=True)


def third_party_imports() -> list[Import]:
    """Every import in the product of a module that is neither the standard library's nor the product's."""
    ours = set(product_packages())
    return [
        found
        for module, path in product_files()
        for found in imports_of(module, path)
        if found.top not in sys.stdlib_module_names and found.top not in ours
    ]


def is_internal(dotted: str) -> bool:
    """A name another project keeps to itself: a component starting with `_` (dunders aside), or INTERNAL_MODULES."""
    parts = dotted.split(".")
    if any(part.startswith("_") and not (part.startswith("__") and part.endswith("__")) for part in parts):
        return True
    return any(dotted == internal or dotted.startswith(internal + ".") for internal in INTERNAL_MODULES)


def test_the_product_packages_are_read_from_pyproject():
    assert {"wire", "balancer", "http_gateway", "zlb"} <= set(product_packages())


def test_every_third_party_import_belongs_to_a_declared_dependency():
    declared = declared_requirements()
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for found in third_party_imports():
        if found.by_attribute:
            continue  # the import statement that bound its module is checked
        owners = [normalised(d) for d in distributions.get(found.top, [])]
        if not owners:
            undeclared.append(f"{found}: no installed distribution provides the module {found.top!r}")
        elif not any(owner in declared for owner in owners):
            undeclared.append(f"{found}: its distribution {', '.join(owners)} is not in [project].dependencies")
    assert not undeclared, "undeclared imports:\n" + "\n".join(sorted(set(undeclared)))


def test_no_product_module_uses_another_projects_internals_unless_allowed_and_pinned():
    used = [found for found in third_party_imports() if is_internal(found.dotted)]
    unallowed = [str(found) for found in used if (found.module, found.dotted) not in ALLOWED_INTERNALS]
    assert not unallowed, "internals of another project (use its public API, or pin and allow-list it):\n" + "\n".join(
        unallowed
    )


@pytest.mark.parametrize(("where", "distribution"), ALLOWED_INTERNALS.items(), ids=lambda v: str(v))
def test_each_allowed_internal_is_used_and_its_distribution_pinned_below_the_next_minor(
    where: tuple[str, str], distribution: str
):
    module, dotted = where
    assert any((f.module, f.dotted) == where for f in third_party_imports()), (
        f"{module} no longer imports {dotted}: drop it from ALLOWED_INTERNALS (and the pin, if nothing else needs it)"
    )
    requirement = declared_requirements().get(normalised(distribution), "")
    bound = re.search(r"<\s*(\d+)\.(\d+)\s*(?:,|$)", requirement)
    assert bound, f"{module} uses {dotted}: pyproject must pin {distribution} below a minor release (<X.Y)"
    installed = importlib.metadata.version(distribution)
    major, minor = map(int, installed.split(".")[:2])
    assert tuple(map(int, bound.groups())) == (major, minor + 1), (
        f"{distribution} {installed} is installed, but {requirement!r} does not stop at its next minor release "
        f"({major}.{minor + 1}), the one {dotted} was not tested on"
    )


def test_the_checks_see_the_internals_they_look_for(tmp_path: Path):
    """The walker finds a private module, a private name, and an internal reached by attribute."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import zmq\nimport zmq.backend as zb\nfrom zmq import _private\nfrom uvicorn.protocols.http import h11_impl\n"
        "x = zmq.sugar.socket.Socket\ny = zmq.Socket\nz = zmq.__version__\n"
    )
    found = {(f.line, f.dotted) for f in imports_of("probe", source) if is_internal(f.dotted)}
    assert found == {
        (2, "zmq.backend"),
        (3, "zmq._private"),
        (4, "uvicorn.protocols.http.h11_impl"),
        (5, "zmq.sugar.socket.Socket"),
    }
