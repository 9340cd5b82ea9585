"""Incremental journal compaction: slices of the live state interleaved with appends replay to the same state."""

from __future__ import annotations

import time
from pathlib import Path

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


def test_changes_during_an_incremental_compaction_survive_it(tmp_path: Path, monkeypatch):
    """Requests submitted, finished and re-queued between slices replay to exactly the scheduler's state."""
    monkeypatch.setattr(compaction, "CHUNK", 7)  # many slices, so changes land between them
    path = tmp_path / "j"
    sched = Scheduler(journal=True, keep_finished=50)
    journal = jr.Journal(str(path))
    journal.open([])
    sched.hello(b"n", 0, 5, 1, "h", 0.0)
    for rid in range(100):
        sched.submit(rid % 3, rid, rid % 4, b"r", f"p{rid}".encode())
    sched.dispatch()
    journal.append(sched.outbox.take_journal())
    run = Compaction(journal, sched)
    rid, steps = 100, 0
    while not run.step():
        steps += 1
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
    restored = Scheduler()
    jr.restore(restored, jr.replay(str(path), sched.kept.keep))
    assert view(restored) == view(sched)


def test_a_slice_of_a_large_state_is_short(tmp_path: Path):
    """With 200,000 waiting requests of 1 KiB, starting a compaction and each slice take a few ms of CPU.

    CPU time of this thread, not the wall clock: on a busy machine the wall clock also counts the time
    other processes ran, which says nothing about how much work a slice does."""
    sched = Scheduler(journal=True)
    journal = jr.Journal(str(tmp_path / "j"))
    journal.open([])
    for rid in range(200_000):
        sched.submit(rid % 10, rid, 5, b"r", b"x" * 1024)
    sched.outbox.take_journal()
    start = time.thread_time()
    run = Compaction(journal, sched)
    longest = time.thread_time() - start
    while True:
        start = time.thread_time()
        done = run.step()
        longest = max(longest, time.thread_time() - start)
        if done:
            break
    journal.close()
    # ~3 ms each here; 20 ms is the loop's stall target, with room for a busy 2-core machine.
    assert longest < 0.02, f"longest step {longest * 1000:.1f} ms"
    assert len(jr.replay(str(tmp_path / "j"), 10).pending) == 200_000
