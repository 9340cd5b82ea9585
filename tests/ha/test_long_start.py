"""A member whose journal takes longer to replay than its lease's margin still leads, and serves.

An outside attack: with 250,000 requests in the journal, a standby that won took 2.2-3.6 s to start, then
stepped down at its first look at the lease (the renewals made meanwhile waited unread on the elector's
pipe), won again, replayed again, and never served: 41 step-downs in 120 s. Here the first member's journal
holds 400,000 finished requests (a ~2.5 s start on this machine, beyond the 1-1.5 s margin of a 2 s lease).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer import journal_format as jf
from balancer.records import FINISHED
from client_node.client import Client
from tests.ha.cluster import HEARTBEAT_MS, HaGroup
from tests.harness import ProcessGroup
from wire import protocol as p

FINISHED_REQUESTS = 400_000


def write_journal(path: Path, finished: int) -> None:
    """A journal of `finished` requests of client 1, each with a small result."""
    records = [jf.MAGIC, *((FINISHED, 1, rid, 5, "processed", 0, 1, b"ok", rid) for rid in range(finished))]
    path.write_bytes(jf.frame(p.encode_records(records)))


@pytest.mark.timeout(150)
def test_a_member_whose_start_outlasts_the_lease_margin_leads_once_and_serves(procs: ProcessGroup):
    write_journal(procs.workdir / "m0.journal", FINISHED_REQUESTS)
    group = HaGroup.start(procs)  # m0 (the big journal) leads, m1 follows and catches up
    try:
        leader = group.leader()
        assert leader is not None and leader.name == "m0"
        procs.start(
            "node", "server", "--id", "1", "--capacity", "2", "--handler", "echo",
            "--backend", group.list_of("backend"), "--heartbeat-ms", str(HEARTBEAT_MS), "--liveness", "10",
        )  # fmt: skip
        with Client(group.list_of("frontend"), client_id=2) as client:
            assert client.submit(b"after a long start").result(timeout=30).body == b"after a long start"
        status = leader.status()
        assert status is not None and status["counters"]["journal_restored_finished"] == FINISHED_REQUESTS
        assert leader.proc is not None
        said = leader.proc.stderr()
        assert said.count(" leads, epoch") == 1 and "stopped leading" not in said, said
    finally:
        group.stop()
