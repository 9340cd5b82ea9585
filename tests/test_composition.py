"""No product class is built from two or more of the product's own classes: parts are held, not mixed in.

A class made of mixins spreads one `self` over many files, and every file can read every other's
state; a class that holds its parts gives each part its own state and a few named methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _product_modules() -> list[Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def test_no_product_class_has_two_product_classes_as_bases():
    trees = {path: ast.parse(path.read_text(), str(path)) for path in _product_modules()}
    classes = [node for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    ours = {node.name for node in classes}
    assert "Balancer" in ours and "Scheduler" in ours  # the scan reads the product
    mixed = [
        (path.relative_to(ROOT), node.name, names)
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and len(names := [n for n in map(_base_name, node.bases) if n in ours]) >= 2
    ]
    assert not mixed, "classes made of two or more of our classes (hold the parts instead): " + "; ".join(
        f"{path}: {name}({', '.join(bases)})" for path, name, bases in mixed
    )
