"""Fixtures shared by the whole suite: fresh ports and tracked processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer


@pytest.fixture
def endpoints() -> Endpoints:
    """Four unused loopback endpoints."""
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
    """A live balancer with a 100 ms heartbeat on fresh ports."""
    return start_balancer(procs, endpoints, 100)
