"""Unit tests of the journal: replay, torn tails, compaction and restoring a scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer import journal as jr
from balancer.scheduler import ACCEPTED, FINISHED, Scheduler
from wire import protocol as p


def written(path: Path, *batches: list[tuple]) -> jr.Journal:
    journal = jr.Journal(str(path), fsync_interval_s=0.001)
    journal.open([])
    for batch in batches:
        journal.append(batch)
    journal.close()
    return journal


def accepted(cid: int, rid: int, prio: int = 5) -> tuple:
    return (ACCEPTED, cid, rid, prio, b"route", f"payload {rid}".encode())


def finished(cid: int, rid: int, prio: int = 5) -> tuple:
    return (FINISHED, cid, rid, prio, p.PROCESSED, 0, 1, f"result {rid}".encode())


def test_replay_splits_unfinished_from_finished_in_order(tmp_path: Path):
    """The last record per request decides; unfinished ones come back in arrival order."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1), accepted(1, 2), accepted(2, 1)], [finished(1, 2)], [accepted(1, 3)])
    rec = jr.replay(str(path), keep_finished=100)
    assert [(r[1], r[2]) for r in rec.pending] == [(1, 1), (2, 1), (1, 3)]
    assert [(r[1], r[2], r[7]) for r in rec.finished] == [(1, 2, b"result 2")]
    assert rec.torn_bytes == 0


def test_a_torn_tail_is_cut_off_and_the_rest_survives(tmp_path: Path):
    """A crash in the middle of a write loses only the incomplete record."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1)], [accepted(1, 2)])
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    rec = jr.replay(str(path), keep_finished=100)
    assert [r[2] for r in rec.pending] == [1]
    assert rec.torn_bytes > 0


def test_missing_journal_is_empty_and_foreign_file_is_refused(tmp_path: Path):
    """No file means a fresh start; a file that is not a journal is an error, never silently overwritten."""
    assert jr.replay(str(tmp_path / "none"), 10).records == 0
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"".join(p.encode_records([[1, 2, 3]])))
    with pytest.raises(jr.JournalError, match="not a zlb journal"):
        jr.replay(str(foreign), 10)


def test_replay_keeps_only_the_newest_finished(tmp_path: Path):
    """Finished requests beyond keep_finished are forgotten, as they are in memory."""
    path = tmp_path / "j"
    written(path, [accepted(1, i) for i in range(5)], [finished(1, i) for i in range(5)])
    assert [r[2] for r in jr.replay(str(path), keep_finished=2).finished] == [3, 4]
    assert jr.replay(str(path), keep_finished=0).finished == []


def test_restore_requeues_unfinished_and_answers_finished_resubmissions(tmp_path: Path):
    """A restored scheduler dispatches the unfinished work and re-answers a finished request without running it."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1, prio=5), accepted(1, 2, prio=1), accepted(1, 3)], [finished(1, 3)])
    sched = Scheduler(journal=True)
    jr.restore(sched, jr.replay(str(path), 100))
    sched.hello(b"n", 0, 4, 1, "h", 0.0)
    assert [(req.request_id, req.priority) for _n, _t, req in sched.dispatch()] == [(2, 1), (1, 5)]
    assert sched.submit(1, 3, 5, b"new-route", b"again").name == "FINISHED"
    # Restored, it was finished by an earlier balancer: the answer is marked as a replay.
    assert [(r.request_id, r.body, r.route) for r in sched.outbox.replays] == [(3, b"result 3", b"new-route")]
    assert sched.journal == []  # restoring writes nothing new


def test_compaction_rewrites_the_file_to_the_live_state(tmp_path: Path):
    """After compaction the file replays to the same state and holds only live records."""
    path = tmp_path / "j"
    sched = Scheduler(journal=True, keep_finished=1)
    journal = jr.Journal(str(path))
    journal.open([])
    sched.hello(b"n", 0, 10, 1, "h", 0.0)
    for rid in range(1, 4):
        sched.submit(1, rid, 5, b"r", b"x")
    for _node, ticket, _req in sched.dispatch()[:2]:
        sched.complete(b"n", ticket, True, b"ok", 1.0)
    journal.append(sched.journal)
    journal.compact(jr.snapshot(sched))
    journal.close()
    rec = jr.replay(str(path), 10)
    assert rec.records == 1 + 2  # the magic record, one finished (keep_finished=1) and one assigned
    assert [r[2] for r in rec.finished] == [2]
    assert [r[2] for r in rec.pending] == [3]


def test_tickets_start_where_told():
    """A balancer's first ticket is the one it was given, so a restarted balancer never reuses one."""
    sched = Scheduler(first_ticket=1_000_000)
    sched.hello(b"n", 0, 1, 1, "h", 0.0)
    sched.submit(1, 1, 5, b"r", b"x")
    assert [t for _n, t, _r in sched.dispatch()] == [1_000_001]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 2), st.integers(0, 15), st.integers(1, 3)),
        st.tuples(st.just("complete"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("kill"), st.integers(0, 1)),
        st.tuples(st.just("hello"), st.integers(0, 1)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_replaying_the_journal_rebuilds_what_the_scheduler_remembers(tmp_path_factory, script):
    """Whatever happened, a restart from the journal knows the same unfinished and finished requests."""
    path = tmp_path_factory.mktemp("j") / "journal"
    sched = Scheduler(journal=True, max_attempts=2)
    journal = jr.Journal(str(path))
    journal.open([])
    now = 0.0
    for op in script:
        now += 0.1
        if op[0] == "submit":
            sched.submit(op[1], op[2], op[3], b"route", f"payload {op[1]} {op[2]}".encode())
        elif op[0] == "hello":
            sched.hello(f"node{op[1]}".encode(), op[1], 2, 1, "h", now)
        elif op[0] == "kill" and f"node{op[1]}".encode() in sched.routes:
            sched.bye(f"node{op[1]}".encode())
        elif op[0] == "complete":
            node = sched.routes.get(f"node{op[1]}".encode())
            if node is not None and node.in_flight:
                sched.complete(node.route, next(iter(node.in_flight)), op[2], b"result", now)
        sched.dispatch()
        journal.append(sched.journal)
        sched.journal.clear()
    journal.close()
    restored = Scheduler()
    jr.restore(restored, jr.replay(str(path), sched.keep_finished))

    def view(s: Scheduler) -> dict:
        # Unfinished requests come back waiting with their payload; finished ones with their status and result.
        finished = (p.PROCESSED, p.FAILED)
        return {
            (r.client_id, r.request_id): (r.status if r.status in finished else "unfinished", r.priority, r.body)
            for r in s.requests()
        }

    assert view(restored) == view(sched)
