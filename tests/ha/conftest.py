"""The HA tests' group: a real etcd and two members, stopped after the test like every process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ha.cluster import HaGroup
from tests.harness import ProcessGroup


@pytest.fixture
def ha_group(procs: ProcessGroup) -> Iterator[HaGroup]:
    group = HaGroup.start(procs)
    try:
        yield group
    finally:
        group.stop()
