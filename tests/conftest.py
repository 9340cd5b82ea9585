"""Fixtures shared by the whole suite: reserved ports, tracked processes, timeouts that stretch under load."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_timeout

from tests.harness import (
    WATCHFUL_LIVENESS,
    Endpoints,
    LiveBalancer,
    ProcessGroup,
    release_ports,
    slack,
    start_balancer,
)

# The `chromium` fixture of the web tests (tests/browser.py).
pytest_plugins = ["tests.browser"]


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool:
    """Each test keeps its timeout (60 s unless marked), stretched like every deadline by the load right now."""
    return pytest_timeout.pytest_timeout_set_timer(item, settings._replace(timeout=settings.timeout * slack()))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report on the test item (`item.rep_call`), so a fixture can tell at teardown that it failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _reserved_ports() -> Iterator[None]:
    """Ports a test reserved with free_port() are given back after its processes have stopped."""
    try:
        yield
    finally:
        release_ports()


@pytest.fixture
def endpoints() -> Endpoints:
    """Four loopback endpoints reserved for this test."""
    return Endpoints.fresh()


@pytest.fixture
def procs(tmp_path: Path, endpoints: Endpoints) -> Iterator[ProcessGroup]:
    """Start zlb processes pointed at `endpoints`; all are stopped by PID afterwards."""
    # The balancer's default log goes under XDG_STATE_HOME: keep it inside the test's own folder.
    env = {**os.environ, **endpoints.env(), "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(tmp_path / "state")}
    group = ProcessGroup(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def balancer(procs: ProcessGroup, endpoints: Endpoints) -> LiveBalancer:
    """A live balancer on reserved ports: 100 ms heartbeats, a node dead after 5 s of silence."""
    return start_balancer(procs, endpoints)


@pytest.fixture
def watchful_balancer(procs: ProcessGroup, endpoints: Endpoints) -> LiveBalancer:
    """A live balancer for tests that kill a node: 100 ms heartbeats, a node dead after 1 s of silence."""
    return start_balancer(procs, endpoints, liveness=WATCHFUL_LIVENESS)
