"""The two windows of finished requests (balancer/kept.py, balancer/earlier.py), with time as an argument."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from balancer import earlier
from balancer import journal as jr
from balancer.earlier import PAGE_SLOTS, EarlierIds
from balancer.kept import MARK_STEPS, SLICE
from balancer.records import EARLIER
from balancer.scheduler import Scheduler, Submitted
from wire import protocol as p

NODE = b"n0"


def make(**kwargs) -> Scheduler:
    """A scheduler with one node of capacity 1 that said hello at t=0; windows of 300 s and 3,600 s unless told."""
    kwargs = {"keep_finished_s": 300.0, "remember_s": 3600.0, **kwargs}
    sched = Scheduler(heartbeat_s=1.0, liveness=3, **kwargs)
    sched.hello(NODE, 0, 1, 100, "host", 0.0)
    return sched


def run(sched: Scheduler, client_id: int, request_id: int, payload: bytes, now: float, ok: bool = True) -> None:
    """Submit a request and finish it on the node at `now`."""
    assert sched.submit(client_id, request_id, 5, b"route", payload, 0, now) is Submitted.QUEUED
    ((_node, ticket, _req),) = sched.dispatch()
    sched.complete(NODE, ticket, ok, b"result %d" % request_id, now)
    sched.outbox.replies.clear()


def resend(sched: Scheduler, client_id: int, request_id: int, payload: bytes, now: float) -> tuple[Submitted, list]:
    """Re-send from another process (another route); what submit said and what it answered."""
    sched.outbox.replays.clear()
    sched.outbox.replies.clear()
    outcome = sched.submit(client_id, request_id, 5, b"new route", payload, 0, now)
    answers = [(r.request_id, r.status, r.body) for r in (*sched.outbox.replies, *sched.outbox.replays)]
    return outcome, answers


def test_a_result_is_kept_for_its_window_then_its_id_answers_processed_earlier():
    """Within keep_finished_s a re-send gets the stored result; past it "processed earlier; the result is no longer
    kept" (status not_kept) with the same payload and a conflict with another; it never runs again."""
    sched = make()
    for rid in range(1, 4):
        run(sched, 7, rid, b"payload %d" % rid, 10.0)
    sched.expire_finished(10.0)  # the mark that covers them
    sched.expire_finished(309.0)
    assert resend(sched, 7, 1, b"payload 1", 309.0) == (Submitted.FINISHED, [(1, p.PROCESSED, b"result 1")])
    sched.expire_finished(310.0 + 300.0 / MARK_STEPS)
    assert len(sched.kept) == 0 and sched.kept.ids.count == 3 and sched.remembered_finished == 3
    outcome, answers = resend(sched, 7, 2, b"payload 2", 311.0)
    assert outcome is Submitted.FINISHED and [(rid, status) for rid, status, _ in answers] == [(2, p.NOT_KEPT)]
    assert answers[0][2].startswith(b"processed earlier; the result is no longer kept (results are kept up to 300 s")
    assert resend(sched, 7, 3, b"another payload", 311.0) == (Submitted.CONFLICT, [])
    assert sched.counters["answered_expired"] == 1 and sched.counters["conflicts"] == 1
    assert sched.counters["submitted"] == 3 and sched.dispatch() == []
    assert [r.request_id for r in sched.requests()] == []  # not listed: only the ids are kept
    known = sched.get(7, 2)  # but known to `zlb request` and the REST API, which answers 409
    assert (known.status, known.body, known.request_id) == (p.PROCESSED, None, 2)


def test_past_the_id_window_an_id_is_forgotten_and_runs_again():
    """Once remember_s has passed since it finished, a re-send is a new request."""
    sched = make()
    run(sched, 7, 1, b"x", 10.0)
    sched.expire_finished(10.0)
    sched.expire_finished(400.0)
    assert sched.kept.ids.count == 1
    sched.expire_finished(3609.0)
    assert resend(sched, 7, 1, b"x", 3609.0)[0] is Submitted.FINISHED  # a window and no more
    sched.expire_finished(3611.0 + 3600.0 / MARK_STEPS)
    assert sched.kept.ids.count == 0 and sched.kept.ids.by_client == {}
    assert sched.submit(7, 1, 5, b"route", b"x", 0, 3620.0) is Submitted.QUEUED


def test_a_failed_request_is_remembered_as_failed():
    sched = make(keep_finished_s=0.0)
    run(sched, 7, 1, b"x", 1.0, ok=False)
    sched.expire_finished(1.0)
    sched.expire_finished(2.0)
    assert resend(sched, 7, 1, b"x", 2.0)[1][0][2].startswith(b"failed earlier; the result is no longer kept")


def test_the_memory_budget_lets_results_go_before_their_time_and_their_ids_stay():
    """30,000 finished with a budget that holds a few thousand results: every re-send is answered, none queued."""
    sched = make(max_memory_bytes=1 << 20)
    for rid in range(30_000):
        run(sched, 7, rid, b"payload", 1.0 + rid / 1000)
    assert 0 < len(sched.kept) < 3000 and sched.kept.left_early == 30_000 - len(sched.kept)
    assert sched.kept.ids.count + len(sched.kept) == 30_000
    assert sched.budget.held <= 1 << 20
    statuses = {resend(sched, 7, rid, b"payload", 40.0)[1][0][1] for rid in range(30_000)}
    assert statuses == {p.PROCESSED, p.NOT_KEPT}
    assert sched.counters["submitted"] == 30_000 and sched.counters["duplicates"] == 30_000


def test_results_past_their_window_go_a_slice_per_tick():
    """A burst past its window is worked off SLICE at a time, the oldest first."""
    sched = make()
    for rid in range(SLICE * 2 + 10):
        run(sched, 7, rid, b"x", 1.0)
    sched.expire_finished(1.0)
    sched.expire_finished(302.0)
    assert len(sched.kept) == SLICE + 10 and next(iter(sched.kept)).request_id == SLICE
    sched.expire_finished(302.1)
    sched.expire_finished(302.2)
    assert len(sched.kept) == 0 and sched.kept.ids.count == SLICE * 2 + 10


def test_a_result_is_kept_at_least_its_window_however_ticks_fall():
    """Marks are taken on ticks: a result finished just after one is judged by the next, never by an older one."""
    sched = make(keep_finished_s=10.0)
    sched.expire_finished(0.0)
    run(sched, 7, 1, b"x", 0.5)
    for now in (1.0, 5.0, 10.0, 10.4):
        sched.expire_finished(now)
        assert len(sched.kept) == 1, now
    sched.expire_finished(11.1)
    assert len(sched.kept) == 0


def test_ids_beyond_their_byte_cap_go_oldest_first():
    sched = make(keep_finished=0, remember_bytes=earlier.CLIENT_BYTES + 2 * earlier.PAGE_BYTES + 200 * 8)
    for rid in range(PAGE_SLOTS * 4):
        run(sched, 7, rid, b"x", 1.0)
    sched.expire_finished(1.0)
    ids = sched.kept.ids
    assert ids.bytes <= ids.max_bytes and ids.left_early == PAGE_SLOTS * 2
    assert ids.find(7, 0) is None and ids.find(7, PAGE_SLOTS * 4 - 1) is not None


def test_ids_are_packed_dense_or_scattered_and_found_again():
    ids = EarlierIds(100.0, 1 << 30)
    sha = -1 - (int.from_bytes(hashlib.sha256(b"a").digest()[:8], "little") >> 1)
    for rid in (5, 3, 2**63 + 1, 64, 4):
        ids.add(1, rid, p.PROCESSED, sha, 1)
    ids.add(2, 3, p.FAILED, None, 1)
    ids.add(2, 4, p.PROCESSED, 12345, 1)  # an XXH3 digest: not negative
    assert ids.count == 7 and len(ids.by_client[1]) == 3
    assert ids.find(1, 3) == (p.PROCESSED, ids.find(1, 5)[1]) and ids.find(1, 6) is None
    assert earlier.same_digest(ids.find(1, 2**63 + 1)[1], sha)
    assert ids.find(2, 3) == (p.FAILED, None) and ids.find(2, 4) == (p.PROCESSED, 12345)
    assert sorted((c, r) for c, r, _s, _d in ids) == [(1, 3), (1, 4), (1, 5), (1, 64), (1, 2**63 + 1), (2, 3), (2, 4)]


@given(st.sampled_from([p.PROCESSED, p.FAILED]), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
def test_a_packed_word_keeps_the_status_and_the_digest_as_replay_compares_it(status, digest):
    word = earlier.pack(status, digest)
    assert 0 <= word < 2**64
    got_status, got = earlier.unpack(word)
    assert got_status == status
    if digest is None:
        assert got is None
    else:
        assert (got < 0) == (digest < 0) and earlier.same_digest(got, digest)
        assert earlier.pack(status, got) == word  # what the journal writes reads back the same


def test_a_page_written_to_late_goes_to_the_back_and_does_not_hold_up_the_rest():
    ids = EarlierIds(10.0, 1 << 30)
    ids.add(1, 0, p.PROCESSED, None, 1)
    ids.add(1, PAGE_SLOTS, p.PROCESSED, None, 2)
    ids.add(1, 1, p.PROCESSED, None, 50)  # the first page again, much later
    ids.expire(10, SLICE)
    assert ids.find(1, PAGE_SLOTS) is None and ids.find(1, 0) is not None
    ids.expire(50, SLICE)
    assert ids.count == 0


def test_ids_restored_alone_stay_their_window_from_the_first_tick():
    """Restored before any result was added (stamp 0), ids are not taken for old before a mark is."""
    sched = make()
    sched.restore_earlier(7, 1, p.PROCESSED, None)
    for now in (5.0, 100.0, 3600.0, 3604.0):
        sched.expire_finished(now)
        assert sched.kept.ids.count == 1, now
    assert resend(sched, 7, 1, b"any", 3604.0)[1][0][1] == p.NOT_KEPT
    sched.expire_finished(3620.0)
    assert sched.kept.ids.count == 0


def test_ids_survive_a_restart_through_the_journal_and_its_compaction(tmp_path):
    """snapshot() and compaction write EARLIER records; a restored scheduler answers from them."""
    from balancer.compaction import Compaction
    from tests.harness import wait_until

    sched = make(keep_finished=2, journal=True)
    for rid in range(1, 6):
        run(sched, 7, rid, b"payload %d" % rid, 1.0)
    run(sched, 7, 6, b"payload 6", 1.0, ok=False)
    sched.outbox.take_journal()
    path = str(tmp_path / "j")
    journal = jr.Journal(path)
    journal.open(jr.snapshot(sched))
    assert sorted(r[2] for r in jr.replay(path).finished if r[0] == EARLIER) == [1, 2, 3, 4]
    run(sched, 7, 7, b"payload 7", 2.0)  # lets 5 go: nothing is appended for that
    journal.append(sched.outbox.take_journal())
    run_ = Compaction(journal, sched)
    wait_until(run_.step, 10, "the compaction")
    journal.close()
    restored = make(journal=True)
    jr.restore(restored, jr.replay(path))
    assert restored.kept.ids.count == 5 and len(restored.kept) == 2
    assert resend(restored, 7, 5, b"payload 5", 3.0)[1][0][1] == p.NOT_KEPT
    assert resend(restored, 7, 4, b"payload 4 changed", 3.0)[0] is Submitted.CONFLICT
    assert resend(restored, 7, 6, b"payload 6", 3.0)[1][0] == (6, p.FAILED, b"result 6")
    # A restart starts the windows afresh for what it restored: a window after its first tick, they go.
    restored.expire_finished(10.0)
    restored.expire_finished(10.0 + 300.0 + 2.0)
    restored.expire_finished(10.0 + 3600.0 + 20.0)
    assert restored.remembered_finished == 0
