"""Long runs here (marked slow) are opt-in: they run only when -m names them (e.g. -m slow)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect this folder's slow tests unless the marker expression asks for them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    here = __file__.rsplit("/", 1)[0]
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("slow") and str(item.fspath).startswith(here) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
