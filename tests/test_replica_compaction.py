"""A standby compacts its own journal in a child process while the leader's stream goes on (no new snapshot)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from balancer import journal as jr
from balancer import journal_format as jf
from balancer import replica as replica_module
from balancer.config import BalancerConfig
from balancer.replica import Replica
from balancer.replica_compaction import compact
from balancer.scheduler import Scheduler
from wire import protocol as p
from wire.protocol import MsgType

OPTIONS = BalancerConfig(journal="j").scheduler_options()
_ENDPOINTS = (f"inproc://replica-compaction-{n}" for n in itertools.count())  # one each: see Leader


def state(path: str, upto: int = -1) -> dict:
    """What a start would restore from the journal at `path`: each request's status, priority and body."""
    sched = Scheduler(**OPTIONS)
    jr.restore(sched, jr.replay(path, OPTIONS["keep_finished"], upto=upto))
    return {(r.client_id, r.request_id): (r.status, r.priority, r.body) for r in sched.requests()}


class Leader:
    """Stands in for the leader's replication socket, its records made by a real journaled scheduler."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        # A name of its own: a closed socket's inproc name is released by the context's reaper, maybe after
        # the next test binds.
        self.endpoint = next(_ENDPOINTS)
        self.sock.bind(self.endpoint)
        self.sched = Scheduler(**OPTIONS)
        self.sched.hello(b"n", 0, 5, 1, "h", 0.0)
        self.route = b""
        self.seq = 0
        self.follows = 0
        self.applied: list[int] = []
        self.next_id = 0
        self.sent_bytes = 0  # journal bytes streamed, snapshots included: the file without compaction

    def read(self, timeout_ms: int = 2000) -> None:
        assert self.sock.poll(timeout_ms), "the standby said nothing"
        while self.sock.poll(0):
            route, header = self.sock.recv_multipart()
            msg_type, fields = p.decode(header)
            if msg_type is MsgType.FOLLOW:
                self.follows += 1
                self.route = route
            elif msg_type is MsgType.APPLIED:
                self.applied.append(fields[0])

    def snapshot(self) -> None:
        records = [jf.MAGIC, *jr.snapshot(self.sched)]
        data = jf.frame(p.encode_records(records))
        self.sent_bytes = len(data)
        self.sock.send_multipart([self.route, p.encode(MsgType.SNAPSHOT, self.seq, len(records), 100), data])

    def batch(self, requests: int = 5) -> None:
        """Submit `requests`, finish the ones running, and ship the records as one RECORDS."""
        sched = self.sched
        for _ in range(requests):
            sched.submit(1, self.next_id, 3, b"c", b"x" * 200)
            self.next_id += 1
        for node, ticket, _req in sched.dispatch():
            sched.complete(node.route, ticket, True, b"done", 1.0)
        records = sched.outbox.take_journal()
        self.seq += 1
        data = jf.frame(p.encode_records(records))
        self.sent_bytes += len(data)
        self.sock.send_multipart([self.route, p.encode(MsgType.RECORDS, self.seq, len(records)), data])


@pytest.fixture
def pair(tmp_path: Path, monkeypatch) -> Iterator[tuple[Leader, Replica]]:
    monkeypatch.setattr(replica_module, "COMPACT_SLACK_RECORDS", 60)
    leader = Leader()
    replica = Replica(zmq.Context.instance(), str(tmp_path / "standby.journal"), "standby", OPTIONS)
    epoch = p.decode_with_epoch(p.encode(MsgType.APPLIED, 0))[1]  # what this process stamps
    replica.follow(leader.endpoint, epoch, time.monotonic())
    leader.read()
    leader.snapshot()
    assert replica.wait(2000)
    leader.read()
    yield leader, replica
    replica.close()
    leader.sock.close(0)


def stream_until(leader: Leader, replica: Replica, done, deadline_s: float = 30.0) -> None:
    """Batches flow, each applied and answered, the standby ticking, until done() or the deadline."""
    deadline = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < deadline, replica.view(time.monotonic())
        leader.batch()
        assert replica.wait(2000)
        leader.read()
        replica.tick(time.monotonic())


def test_compact_writes_what_a_start_restores_from_the_first_bytes(tmp_path: Path):
    path = str(tmp_path / "j")
    sched = Scheduler(**OPTIONS)
    sched.hello(b"n", 0, 3, 1, "h", 0.0)
    journal = jr.Journal(path)
    journal.open([])
    for rid in range(40):
        sched.submit(rid % 2, rid, rid % 4, b"c", f"p{rid}".encode())
        for node, ticket, _req in sched.dispatch():
            sched.complete(node.route, ticket, rid % 3 != 0, b"r", 1.0)
        journal.append(sched.outbox.take_journal())
    upto = os.path.getsize(path)
    sched.submit(5, 99, 1, b"c", b"after")  # beyond `upto`: not in the compacted file
    journal.append(sched.outbox.take_journal())
    journal.close()
    written = compact(path, upto, str(tmp_path / "out"), OPTIONS)
    assert state(str(tmp_path / "out")) == state(path, upto) != state(path)
    assert written == jr.replay(str(tmp_path / "out")).records
    assert os.path.getsize(tmp_path / "out") < upto


def test_a_standby_compacts_its_journal_while_the_stream_goes_on(pair):
    """No second FOLLOW (the leader's snapshot kept a standby silent long enough to be dropped); every batch
    answered; the compacted file restores what the leader's records describe, and is smaller."""
    leader, replica = pair
    stream_until(leader, replica, lambda: replica.view(0)["compacting"])
    stream_until(leader, replica, lambda: replica.compactions == 1)
    stream_until(leader, replica, lambda: replica.records > replica.base_records + 20)  # appends go on
    assert leader.follows == 1 and replica.snapshots == 1 and replica.compaction_failures == 0
    assert leader.applied == list(range(leader.seq + 1))
    replica.tick(time.monotonic())
    expected = {(r.client_id, r.request_id): (r.status, r.priority, r.body) for r in leader.sched.requests()}
    assert state(replica.path) == expected
    assert jr.replay(replica.path).records == replica.records
    assert replica.size == os.path.getsize(replica.path) < leader.sent_bytes
    assert not os.path.exists(f"{replica.path}.compacting")


def test_a_snapshot_during_a_compaction_drops_it(pair):
    """A snapshot the leader sends meanwhile replaces the file: the compaction's new file must not replace it."""
    leader, replica = pair
    stream_until(leader, replica, lambda: replica.view(0)["compacting"])
    leader.snapshot()
    assert replica.wait(2000)
    leader.read()
    assert not replica.view(0)["compacting"] and not os.path.exists(f"{replica.path}.compacting")
    stream_until(leader, replica, lambda: replica.records > replica.base_records + 20)
    assert replica.compactions == 0 and replica.snapshots == 2
    expected = {(r.client_id, r.request_id): (r.status, r.priority, r.body) for r in leader.sched.requests()}
    assert state(replica.path) == expected


def test_a_journal_it_cannot_write_leaves_the_standby_up_and_following_again_later(pair, monkeypatch):
    """A full disk: no APPLIED (the leader drops it), no exit (an outsider's standby died of ENOSPC); it says why
    and follows afresh WRITE_RETRY_S later, from a new snapshot."""
    leader, replica = pair
    real_write = jf.write_all

    def full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replica_module.jf, "write_all", full)
    leader.batch()
    assert not replica.wait(2000) or replica.sock is None
    assert replica.sock is None and replica.view(0)["write_failures"] == 1
    assert "No space left" in replica.view(0)["why_afresh"]
    monkeypatch.setattr(replica_module.jf, "write_all", real_write)
    replica.tick(time.monotonic())  # too soon: still waiting
    assert replica.sock is None
    replica.tick(time.monotonic() + replica_module.WRITE_RETRY_S + 0.1)
    leader.read()
    assert leader.follows == 2
    leader.snapshot()
    assert replica.wait(2000)
    leader.read()
    stream_until(leader, replica, lambda: replica.records > replica.base_records + 20)
    expected = {(r.client_id, r.request_id): (r.status, r.priority, r.body) for r in leader.sched.requests()}
    assert state(replica.path) == expected


def test_a_stream_that_outruns_the_compaction_is_followed_afresh(pair, monkeypatch):
    """A child that cannot keep up (it replays the whole file) would let the file grow without bound: past twice
    the size a compaction is due at, the standby follows afresh and the leader's snapshot bounds it."""
    leader, replica = pair
    monkeypatch.setattr(jr, "COMPACT_SLACK_BYTES", 20_000)
    monkeypatch.setattr(replica_module.LocalCompaction, "step", lambda self, size: False)  # never done
    stream_until(leader, replica, lambda: replica.view(0)["compacting"])
    deadline = time.monotonic() + 30
    while replica.followed_afresh == 0:
        assert time.monotonic() < deadline
        leader.batch()
        replica.wait(2000)
        leader.read()
    assert replica.why_afresh == "the stream outran the compaction" and not replica.view(0)["compacting"]
    assert not os.path.exists(f"{replica.path}.compacting")
    assert leader.follows == 2
