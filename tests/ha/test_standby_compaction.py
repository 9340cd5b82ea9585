"""A standby under 1 MiB payloads compacts its own journal and stays in sync (it used to follow afresh).

An outside attack found that a standby compacting by a new snapshot from the leader, with a state that holds
big payloads, went silent long enough to be dropped: the leader ran alone for ~2.5 s, every time. Here 1 MiB
requests stream through a real pair until the standby has compacted (by its file's bytes) at least once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from client_node.client import Client
from tests.ha.cluster import HEARTBEAT_MS, HaGroup
from tests.harness import ProcessGroup, wait_until

MIB = 1024 * 1024
# The leader drops a standby whose answers lag by more than this. The default (1 s) is what the standby's old
# compaction overran, but also what a standby writing 40 MiB batches can lag on a 2-core machine under other
# load (this test failed so, three times in one CI run beside other benchmarks). Here the lag bound is looser;
# the old failure is still caught by what it did: it followed afresh (a second snapshot), which is asserted.
MAX_LAG_MS = 3000


@pytest.fixture
def ha_group(procs: ProcessGroup) -> Iterator[HaGroup]:
    group = HaGroup.start(procs, member_args=("--standby-max-lag-ms", str(MAX_LAG_MS)))
    try:
        yield group
    finally:
        group.stop()


@pytest.mark.timeout(180)
def test_a_standby_compacts_under_big_payloads_without_being_dropped(ha_group: HaGroup):
    for node_id in (1, 2):
        ha_group.procs.start(
            f"node-{node_id}", "server", "--id", str(node_id), "--capacity", "4", "--handler", "echo",
            "--backend", ha_group.list_of("backend"), "--heartbeat-ms", str(HEARTBEAT_MS), "--liveness", "10",
        )  # fmt: skip
    leader = ha_group.leader()
    assert leader is not None
    standby = next(m for m in ha_group.members if m is not leader)
    wait_until(lambda: leader.status()["servers_active"] == 2, 15, "two nodes")
    answered = 0
    with Client(ha_group.list_of("frontend"), client_id=3) as client:
        for _batch in range(12):  # 40 MiB a batch: the standby's file is due at 256 MiB beyond twice its base
            ids = [client.submit(os.urandom(16) * (MIB // 16)).request_id for _ in range(40)]
            for request_id in ids:
                assert len(client.wait(request_id, 60).body) == MIB
                answered += 1
            replica = standby.status()["ha"]["replica"]
            if replica["compactions"] >= 1 or replica["compacting"]:
                break
        # The child may still be writing (on a loaded machine): the standby ends it on its ticks.
        wait_until(lambda: standby.status()["ha"]["replica"]["compactions"] >= 1, 60, "the standby's compaction")
    replica = standby.status()["ha"]["replica"]
    assert replica["compactions"] >= 1, str(replica)
    # Never followed afresh (the leader's events say why if it did).
    assert replica["snapshots"] == 1 and replica["compaction_failures"] == 0, replica["why_afresh"]
    status = leader.status()
    assert status["counters"]["ha_standby_dropped"] == 0 and status["ha"]["in_sync"], status["ha"]
    # Every payload and result went through the file (2 MiB a request); the compaction let most of them go.
    assert os.path.getsize(standby.journal) < 2 * answered * MIB
    print(f"{answered} MiB requests; standby {replica}")
