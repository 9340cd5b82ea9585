"""next_request_id: request ids a client id has not used, reserved per caller, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer import compaction, control, sessions
from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.eventlog import EventLog
from balancer.records import RESERVED
from balancer.scheduler import Scheduler
from tests.harness import wait_until
from wire import protocol as p


def finish_all(sched: Scheduler) -> None:
    for node, ticket, _req in sched.dispatch():
        sched.complete(node.route, ticket, True, b"done", 1.0)


def test_a_client_id_never_used_starts_at_1_and_callers_get_ranges_of_their_own():
    """Two runs asking at once get disjoint ranges; a client id is numbered on its own."""
    sched = Scheduler()
    assert sched.next_request_id(5, 5) == 1
    assert sched.next_request_id(5, 5) == 6
    assert sched.next_request_id(6, 1) == 1
    assert sched.next_request_id(5, 1) == 11


def test_the_next_id_is_above_every_id_remembered_waiting_finished_or_past_its_result():
    """Pending, kept with their results, and kept as ids only (EarlierIds): all count, whoever sent them."""
    sched = Scheduler(keep_finished=0)  # every result let go of at once: only the ids stay
    sched.hello(b"n", 0, 10, 1, "h", 0.0)
    sched.submit(5, 130, 5, b"r", b"x")
    finish_all(sched)
    assert 5 not in sched.sessions and sched.get(5, 130).status == p.PROCESSED  # an id past its result
    assert sched.next_request_id(5, 1) == 131
    sched.submit(5, 200, 5, b"r", b"y")  # waiting
    assert sched.next_request_id(5, 3) == 201
    sched.submit(5, 400, 5, b"r2", b"z")  # someone's explicit id above the range handed out
    assert sched.next_request_id(5, 1) == 401


def test_an_id_past_its_result_at_the_end_of_a_page_counts(monkeypatch):
    """The highest id kept past its result is read from its page's bitmap: the last slot of a page too."""
    sched = Scheduler(keep_finished=0)
    sched.hello(b"n", 0, 10, 1, "h", 0.0)
    for rid in (63, 64 + 63, 2**64 - 2):
        sched.submit(5, rid, 5, b"r", b"x%d" % rid)
    finish_all(sched)
    assert 5 not in sched.sessions
    assert sched.next_request_id(5, 1) == 2**64 - 1
    with pytest.raises(ValueError, match="no 1 unused request ids left"):
        sched.next_request_id(5, 1)


def test_counts_out_of_range_are_refused_and_reservations_are_bounded(monkeypatch):
    sched = Scheduler()
    for count in (0, sessions.MAX_RESERVE + 1):
        with pytest.raises(ValueError, match="out of range"):
            sched.next_request_id(1, count)
    monkeypatch.setattr(sessions, "MAX_RESERVATIONS", 3)
    for cid in range(5):
        sched.next_request_id(cid, 10)
    assert list(sched.sessions.reserved) == [2, 3, 4]  # the oldest let go of
    sched.next_request_id(2, 10)
    assert list(sched.sessions.reserved) == [3, 4, 2]


def test_the_control_query_answers_and_refuses_bad_arguments():
    state = control.BalancerState(Scheduler(), EventLog(None), {}, started_mono=0.0, started_wall=0.0)
    reply = control.handle(state, {"cmd": "next_request_id", "client_id": 9, "count": 20}, 0.0, admin=False)
    assert reply == {"ok": True, "result": {"client_id": 9, "first_request_id": 1, "count": 20}}
    again = control.handle(state, {"cmd": "next_request_id", "client_id": 9}, 0.0)
    assert again["result"] == {"client_id": 9, "first_request_id": 21, "count": 1}
    for bad in ({"client_id": -1}, {"client_id": 2**64}, {"client_id": 1, "count": 0}, {"count": 3}):
        reply = control.handle(state, {"cmd": "next_request_id", **bad}, 0.0)
        assert not reply["ok"] and ("client_id" in reply["error"] or "count" in reply["error"]), reply


def test_reservations_are_journaled_and_survive_a_restart_and_a_compaction(tmp_path: Path, monkeypatch):
    """A range handed out and never used yet is not handed out again after a restart on the journal, whether
    the journal was replayed as appended, compacted slice by slice, or written whole at start."""
    monkeypatch.setattr(compaction, "CHUNK", 3)
    path = tmp_path / "j"
    sched = Scheduler(journal=True)
    journal = jr.Journal(str(path))
    journal.open([])
    for cid in range(10):
        assert sched.next_request_id(cid, 100) == 1
    sched.submit(3, 7, 5, b"r", b"x")
    records = sched.outbox.take_journal()
    assert records[0] == (RESERVED, 0, 101)
    journal.append(records)
    journal.close()

    def restarted() -> Scheduler:
        again = Scheduler()
        jr.restore(again, jr.replay(str(path)))
        return again

    assert [restarted().next_request_id(cid, 1) for cid in range(10)] == [101] * 10
    journal = jr.Journal(str(path))
    journal.open(jr.snapshot(sched))  # a start's rewrite
    run = Compaction(journal, sched)
    slices = []
    run.journal.write_rewrite = lambda records, write=journal.write_rewrite: slices.append(records) or write(records)
    wait_until(run.step, 10, "the compaction to finish")
    journal.close()
    assert len(slices) >= 4 and {len(s) for s in slices} <= {1, 2, 3}  # the reservations a slice at a time
    replayed = restarted()
    assert [replayed.next_request_id(cid, 1) for cid in range(10)] == [101] * 10
    assert replayed.get(3, 7).status == p.PENDING
