"""The wheel ships the product and nothing else: every module the `zlb` command can run, and only those.

Reachable means imported from zlb.cli, transitively (function bodies included),
or launched by reachable code as `python -m NAME` (tests/module_graph.py).
Developer tools (tools/, run from a checkout) stay out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator

import pytest

from tests.module_graph import ROOT, reachable

# Building takes a few seconds; with build isolation pip may first fetch setuptools.
BUILD_TIMEOUT_S = 150
# What a checkout holds that a build must not see: a stale build/ would put old modules in the wheel.
NOT_SOURCE = (".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
# Data files shipped code reads at run time: web.py serves the dashboard page from here.
DATA_DIRS = ("http_gateway/static",)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel built from a clean copy of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "out"), str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    (built,) = (tmp / "out").glob("zlb-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _shipped(archive: zipfile.ZipFile) -> list[str]:
    return [n for n in archive.namelist() if not n.split("/")[0].endswith(".dist-info")]


def _module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 30)
def test_the_wheel_holds_exactly_the_modules_zlb_can_run(wheel: zipfile.ZipFile) -> None:
    """No module in the wheel is unreachable from `zlb`, and none that `zlb` can run is left out."""
    shipped = {_module_name(n) for n in _shipped(wheel) if n.endswith(".py")}
    needed = reachable()
    assert not shipped - needed, f"shipped but no zlb command reaches them: {sorted(shipped - needed)}"
    assert not needed - shipped, f"reached from zlb.cli but missing from the wheel: {sorted(needed - shipped)}"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 30)
def test_the_wheel_carries_only_the_data_shipped_code_reads(wheel: zipfile.ZipFile) -> None:
    """Every file of the data directories is in the wheel, and no other non-Python file is."""
    data = {n for n in _shipped(wheel) if not n.endswith(".py")}
    files = [path for folder in DATA_DIRS for path in (ROOT / folder).rglob("*") if path.is_file()]
    wanted = {path.relative_to(ROOT).as_posix() for path in files}
    assert data == wanted, f"extra: {sorted(data - wanted)}; missing: {sorted(wanted - data)}"
