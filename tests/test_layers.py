"""The floors of docs/ARCHITECTURE.md, checked: every import of every module points down (or sideways where allowed).

Read with ast, so imports inside functions count as much as those at the top.
"""

from __future__ import annotations

from pathlib import Path

from tests.module_graph import PACKAGES, ROOT, imports_in, module_files

ROLES = frozenset({"balancer", "server_node", "client_node", "monitor"})
BOTTOM = frozenset({"wire", "process_supervisor"})

# Which of our packages each package may import, besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "wire": frozenset(),
    "process_supervisor": frozenset({"wire"}),
    **{role: frozenset({"wire"}) for role in ROLES},
    "http_gateway": frozenset({"wire", "client_node", "process_supervisor"}),
    "bench": BOTTOM | ROLES,
    "zlb": frozenset(PACKAGES) - {"tools"},
    # Developer tools run from a checkout; they may use everything, and nothing ships that imports them.
    "tools": frozenset(PACKAGES),
}


def test_the_table_places_every_package() -> None:
    """A new top-level package has to be given its floor here (and in module_graph.PACKAGES)."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk <= set(MAY_IMPORT), f"packages without a floor in test_layers: {sorted(on_disk - set(MAY_IMPORT))}"
    assert set(MAY_IMPORT) == set(PACKAGES)


def test_every_import_points_down() -> None:
    """Every absolute import of one of our packages is one its importer's floor allows."""
    bad = [
        f"{_where(imp.path, imp.line)}: `{imp.source}`: {_package_of(imp.path)} may not import {imp.package}"
        f" (it may import {_allowed_words(_package_of(imp.path))})"
        for path in module_files().values()
        for imp in imports_in(path)
        if imp.package in PACKAGES and imp.package != _package_of(path)
        if imp.package not in MAY_IMPORT[_package_of(path)]
    ]
    assert not bad, "imports that run up a floor or across roles:\n" + "\n".join(bad)


def _package_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def _allowed_words(package: str) -> str:
    return ", ".join(sorted(MAY_IMPORT[package])) or "none of our packages"


def test_imports_inside_functions_count(tmp_path: Path) -> None:
    """A deferred import is still an arrow: the walk finds it in a function body."""
    module = tmp_path / "late.py"
    module.write_text("def start():\n    from zlb.cli import main\n    return main\n", encoding="utf-8")
    assert [(imp.line, imp.module) for imp in imports_in(module)] == [(2, "zlb.cli.main")]
