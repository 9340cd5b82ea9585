"""Incremental journal compaction: slices of the live state interleaved with appends replay to the same state."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer import compaction
from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.scheduler import Scheduler
from wire import protocol as p


def view(s: Scheduler) -> dict:
    """Unfinished requests as waiting with their payload; finished ones with their status and result."""
    finished = (p.PROCESSED, p.FAILED)
    return {
        (r.client_id, r.request_id): (r.status if r.status in finished else "unfinished", r.priority, r.body)
        for r in s.requests()
    }


def kept_ids(s: Scheduler) -> list[tuple[int, int]]:
    return [(r.client_id, r.request_id) for r in s.kept]


def journaled(path: Path, keep_finished: int, capacity: int) -> tuple[Scheduler, jr.Journal]:
    """A scheduler keeping `keep_finished` results, its journal open at `path`, one node of `capacity`."""
    sched = Scheduler(journal=True, keep_finished=keep_finished)
    journal = jr.Journal(str(path))
    journal.open([])
    sched.hello(b"n", 0, capacity, 1, "h", 0.0)
    return sched, journal


def restored_from(path: Path, sched: Scheduler) -> Scheduler:
    """A scheduler restarted on the journal at `path`, with the live one's keep_finished."""
    restored = Scheduler()
    jr.restore(restored, jr.replay(str(path), sched.kept.keep))
    return restored


# When the fsync reports, in loop steps: the kept results (keep_finished=50) were trimmed while the new file
# was written. Before results were rewritten in the order they finished, 56-58 failed (a full suite run under
# load once): slices had put results that finished before them after ones that finished later.
@pytest.mark.parametrize("synced_at", [0, 50, 56, 58, 60, 200])
def test_changes_during_an_incremental_compaction_survive_it(tmp_path: Path, monkeypatch, synced_at: int):
    """Requests submitted, finished and re-queued between slices replay to exactly the scheduler's state."""
    monkeypatch.setattr(compaction, "CHUNK", 7)  # many slices, so changes land between them
    # The fsync thread's report comes when this test says, not when the thread is scheduled.
    held: list[tuple] = []
    fsync = compaction._fsync
    monkeypatch.setattr(compaction, "_fsync", lambda fd, done: held.append((fd, done)))
    path = tmp_path / "j"
    sched, journal = journaled(path, 50, 5)
    for rid in range(100):
        sched.submit(rid % 3, rid, rid % 4, b"r", f"p{rid}".encode())
    sched.dispatch()
    journal.append(sched.outbox.take_journal())
    run = Compaction(journal, sched)
    rid, steps = 100, 0
    while not run.step():
        steps += 1
        if held and steps >= synced_at:
            fsync(*held.pop())
        node = sched.routes[b"n"]
        if node.in_flight:  # finish one, add one, dispatch: every kind of change between slices
            sched.complete(b"n", next(iter(node.in_flight)), steps % 5 != 0, f"done{steps}".encode(), 1.0)
        sched.submit(7, rid, 1, b"r", f"late{rid}".encode())
        rid += 1
        sched.dispatch()
        journal.append(sched.outbox.take_journal())
        assert steps < 10_000
    assert steps > 10
    assert journal.compactions == 1
    assert not (tmp_path / "j.tmp").exists()
    journal.close()
    restored = restored_from(path, sched)
    assert view(restored) == view(sched)
    assert kept_ids(restored) == kept_ids(sched)


@pytest.mark.parametrize("how", ["compaction", "snapshot"])
def test_a_restart_keeps_the_newest_results_whatever_order_their_clients_came_in(tmp_path: Path, how: str):
    """Results finished across clients in turns, newest arrival first, some past keep_finished: a journal
    compacted or written whole replays them in the order they finished, so a restart keeps the newest 3
    results (not those of the client written last, nor of the last arrivals) and the ids of the rest."""
    path = tmp_path / "j"
    sched, journal = journaled(path, 3, 1)
    for rid in range(9):
        sched.submit(rid % 3, rid, 9 - rid, b"r", f"p{rid}".encode())  # the last to arrive runs first
    for _ in range(8):
        sched.dispatch()
        node = sched.routes[b"n"]
        sched.complete(b"n", next(iter(node.in_flight)), True, b"done", 1.0)
    journal.append(sched.outbox.take_journal())
    if how == "compaction":
        run = Compaction(journal, sched)
        while not run.step():
            pass
    else:
        journal.reopen(jr.snapshot(sched))
    journal.close()
    restored = restored_from(path, sched)
    assert kept_ids(sched) == [(0, 3), (2, 2), (1, 1)]
    assert kept_ids(restored) == kept_ids(sched)
    assert view(restored) == view(sched)
    assert restored.kept.ids.count == sched.kept.ids.count == 5


def test_results_finishing_faster_than_a_slice_writes_them_do_not_hold_the_compaction_up(
    tmp_path: Path, monkeypatch
):
    """5 results finish between slices of 2: once reached, results are written as many a slice as finished
    since the last one on top of the slice, so the compaction still ends, every result in the order it finished."""
    monkeypatch.setattr(compaction, "CHUNK", 2)
    sched, journal = journaled(tmp_path / "j", 40, 20)
    for rid in range(60):
        sched.submit(rid % 3, rid, 5, b"r", b"x")
    sched.dispatch()
    journal.append(sched.outbox.take_journal())
    run, steps = Compaction(journal, sched), 0
    while not run.step():
        steps += 1
        node = sched.routes[b"n"]
        for ticket in list(node.in_flight)[:5]:
            sched.complete(b"n", ticket, True, f"done{steps}".encode(), 1.0)
        for rid in range(steps * 5 + 55, steps * 5 + 60):
            sched.submit(rid % 4, rid, 5, b"r", b"x")
        sched.dispatch()
        journal.append(sched.outbox.take_journal())
        assert steps < 1_000
    journal.close()
    restored = restored_from(tmp_path / "j", sched)
    assert kept_ids(restored) == kept_ids(sched) and len(kept_ids(sched)) == 40
    assert view(restored) == view(sched)


def test_a_slice_of_a_large_state_is_short(tmp_path: Path, monkeypatch):
    """With 200,000 waiting requests of 1 KiB, every step writes at most CHUNK of them, so no step of the
    loop rewrites the state at once (how long a step takes is the stall bench's: zlb bench --scenario stall)."""
    sched = Scheduler(journal=True)
    journal = jr.Journal(str(tmp_path / "j"))
    journal.open([])
    for rid in range(200_000):
        sched.submit(rid % 10, rid, 5, b"r", b"x" * 1024)
    sched.outbox.take_journal()
    written: list[int] = []
    write = journal.write_rewrite
    monkeypatch.setattr(journal, "write_rewrite", lambda records: (written.append(len(records)), write(records)))
    run = Compaction(journal, sched)
    assert sum(written) <= 1  # starting one lists the sessions and writes at most the new file's header
    written.clear()
    steps = 1
    while not run.step():
        steps += 1
    journal.close()
    assert max(written) <= compaction.CHUNK and sum(written) == 200_000
    assert steps >= 200_000 // compaction.CHUNK
    assert len(jr.replay(str(tmp_path / "j"), 10).pending) == 200_000
