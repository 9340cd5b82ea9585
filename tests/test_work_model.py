"""The work model in the pure scheduler: services, deadlines, cancellation, back-off, dead letters, journal."""

from __future__ import annotations

from balancer import journal as jr
from balancer.scheduler import Scheduler
from wire import protocol as p


def make(**kw: object) -> Scheduler:
    return Scheduler(heartbeat_s=1.0, liveness=2, seed=7, **kw)


def node(sched: Scheduler, node_id: int, *services: str, capacity: int = 1, now: float = 0.0) -> bytes:
    route = f"n{node_id}".encode()
    sched.hello(route, node_id, capacity, 100 + node_id, "h", now, services=services or None)
    return route


def test_requests_run_only_on_nodes_that_offer_their_service_least_loaded_first():
    """Each service's requests go to its own nodes, the least loaded first, in priority order within it."""
    sched = make()
    node(sched, 0, "resize", capacity=2)
    node(sched, 1, "resize", capacity=2)
    node(sched, 2, "thumb", "default", capacity=4)
    for rid in range(1, 5):
        sched.submit(0, rid, 9 - rid, b"c", b"", service="resize")
        sched.submit(1, rid, 5, b"c", b"", service="thumb")
    sched.submit(2, 1, 5, b"c", b"")  # default: node 2 offers it too
    out = sched.dispatch()
    placed = {(req.client_id, req.request_id): n.node_id for n, _t, req in out}
    assert {placed[(0, rid)] for rid in range(1, 5)} == {0, 1}
    assert [n.node_id for n, _t, req in out if req.service == "resize"].count(0) == 2  # spread: least-loaded
    assert [req.priority for _n, _t, req in out if req.service == "resize"] == [5, 6, 7, 8]
    others = [node_id for (cid, _rid), node_id in placed.items() if cid != 0]
    assert others == [2, 2, 2, 2] and sched.waiting == 1  # node 2 is full: one of its five waits


def test_a_service_no_live_node_offers_waits_visibly_until_its_deadline():
    """No node offers it: the request waits, the status says so, and at its deadline it ends expired, told."""
    sched = make()
    node(sched, 0, "resize")
    sched.submit(0, 1, 5, b"c", b"payload", now=10.0, service="nosuch", deadline_s=0.5)
    assert sched.dispatch() == []
    assert sched.outbox.take_events()[-1][0] == "request.unserved"
    assert sched.services_view()["nosuch"] == {
        "waiting": 1, "running": 0, "nodes": 0, "expired": 0, "cancelled": 0, "dead": 0,
    }  # fmt: skip
    sched.timers_due(10.4)
    assert sched.get(0, 1).status == p.PENDING
    sched.timers_due(10.5)
    [told] = sched.outbox.take_replies()
    assert (told.status, bytes(told.body)) == (p.EXPIRED, b"its deadline passed")
    assert sched.waiting == 0 and sched.services_view()["nosuch"]["expired"] == 1
    node(sched, 1, "nosuch")
    assert sched.dispatch() == []  # it never runs


def test_cancelling_a_running_request_frees_its_node_at_once_and_its_late_result_is_dropped():
    """The node is told (a cancel order), takes the next request in the same dispatch, and the DONE is late."""
    sched = make()
    route = node(sched, 0)
    sched.submit(0, 1, 5, b"c", b"long")
    [(_n, ticket, _r)] = sched.dispatch()
    sched.submit(0, 2, 5, b"c", b"next")
    assert sched.cancel(0, 1)[0] == p.ASSIGNED
    assert sched.outbox.take_cancels() == [(route, ticket, "cancelled")]
    assert [r.request_id for _n, _t, r in sched.dispatch()] == [2]
    assert sched.complete(route, ticket, True, b"late", 1.0) is None
    assert sched.get(0, 1).status == p.CANCELLED and sched.counters["late_results"] == 1
    assert sched.cancel(0, 1)[0] == "finished" and sched.cancel(9, 9)[0] == "unknown"


def test_a_cancelled_waiting_request_never_runs_and_stale_entries_are_purged():
    """Ended in place, a waiting request is skipped by dispatch; many such are purged from the queue."""
    sched = make()
    for rid in range(1, 201):
        sched.submit(0, rid, 5, b"c", b"")
    for rid in range(1, 200):
        sched.cancel(0, rid)
    assert sched.waiting == 1
    sched.timers_due(0.0)  # 199 of 200 are stale: purged
    assert sched.services_view()["default"]["cancelled"] == 199
    node(sched, 0)
    assert [r.request_id for _n, _t, r in sched.dispatch()] == [200]


def test_a_dead_nodes_work_backs_off_then_goes_to_the_dead_letters_and_retry_runs_it():
    """After a node death the request waits out a jittered back-off; after its last attempt it is a dead
    letter with its error (its sender told); a retry queues it again; dead letters are bounded."""
    sched = make(max_attempts=2, retry_backoff_s=1.0, max_dead=1)
    node(sched, 0, now=0.0)
    sched.submit(0, 1, 5, b"c", b"payload")
    sched.dispatch()
    sched.expire(10.0)  # node 0 silent since 0: dead
    assert sched.get(0, 1).status == p.PENDING and sched.waiting == 1
    node(sched, 1, now=10.0)
    assert sched.dispatch() == []  # backing off: 0.5 to 1 s
    sched.timers_due(11.0)
    assert [r.request_id for _n, _t, r in sched.dispatch()] == [1]
    sched.expire(20.0)
    req = sched.get(0, 1)
    assert req.status == p.DEAD and sched.dead.get(0, 1).error.endswith("(it died)")
    told = [r for r in sched.outbox.take_replies() if r.request_id == 1]
    assert told[-1].status == p.DEAD and b"gave up after 2 attempts" in told[-1].body
    sched.retry(0, 1)
    node(sched, 2, now=20.0)
    assert [r.request_id for _n, _t, r in sched.dispatch()] == [1] and req.attempts == 1


def test_the_loop_can_wake_when_a_back_off_ends_and_find_the_request_ready():
    """Timers.next_ready is when the earliest back-off is over (the loop wakes then, balancer/loop.py): a
    check at that moment queues the request, none before it does; with nothing backing off it is None."""
    sched = make(retry_backoff_s=1.0)
    node(sched, 0, now=0.0)
    assert sched.timers.next_ready() is None
    sched.submit(0, 1, 5, b"c", b"payload")
    sched.dispatch()
    sched.expire(10.0)
    node(sched, 1, now=10.0)
    ready_at = sched.timers.next_ready()
    assert ready_at is not None and 10.5 <= ready_at <= 11.0
    sched.timers_due(ready_at - 0.001)
    assert sched.dispatch() == []
    sched.timers_due(ready_at)
    assert [r.request_id for _n, _t, r in sched.dispatch()] == [1]
    assert sched.timers.next_ready() is None


def test_dead_letters_are_bounded_and_say_what_they_dropped():
    """Beyond the count (or the bytes), the oldest dead letter ends failed with its error, counted."""
    sched = make(max_attempts=1, max_dead=1)
    for rid in (1, 2):
        node(sched, rid, now=float(rid * 10))
        sched.submit(0, rid, 5, b"c", b"payload")
        sched.dispatch()
        sched.expire(rid * 10 + 5.0)
    assert list(sched.dead.letters) == [(0, 2)]
    assert (sched.dead.dropped, sched.dead.dropped_bytes, sched.counters["dead_dropped"]) == (1, 7, 1)
    assert sched.get(0, 1).status == p.FAILED and bytes(sched.get(0, 1).body).startswith(b"dropped from the dead")


def test_service_deadline_and_dead_letters_survive_a_restart_through_the_journal(tmp_path):
    """ACCEPTED records carry the service and the deadline (wall-clock), DEAD_LETTER records the dead ones."""
    sched = make(journal=True, max_attempts=1, wall_offset=1000.0)
    sched.submit(0, 1, 5, b"c", b"waits", now=5.0, service="thumb", deadline_s=30.0)
    node(sched, 0, "resize")
    sched.submit(0, 2, 5, b"c", b"dies", service="resize")
    sched.dispatch()
    sched.expire(10.0)
    path = str(tmp_path / "j")
    journal = jr.Journal(path)
    journal.open(jr.snapshot(sched))
    journal.append(sched.outbox.take_journal())
    journal.close()
    restored = make(journal=True, wall_offset=2000.0)  # another process: another monotonic clock
    jr.restore(restored, jr.replay(path))
    waiting = restored.get(0, 1)
    assert (waiting.service, restored.timers.deadline_of[waiting]) == ("thumb", 1035.0 - 2000.0)
    letter = restored.dead.get(0, 2)
    assert (letter.req.service, letter.req.body, letter.attempts) == ("resize", b"dies", 1)
    assert "gave up after 1 attempts" in letter.error
    restored.retry(0, 2)
    assert restored.get(0, 2).status == p.PENDING


def test_a_table_full_of_services_no_one_uses_any_more_takes_new_names():
    """1,024 made-up service names whose requests all ended: the next new name is taken, not refused for good."""
    from balancer.records import Submitted
    from balancer.scheduler import Scheduler
    from balancer.services import MAX_SERVICES

    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    for i in range(MAX_SERVICES - 1):
        assert sched.submit(1, i, 5, b"c", b"x", 0, 0.0, f"s{i}") is Submitted.QUEUED
        assert sched.cancel(1, i)[0] == "pending"
    assert sched.submit(1, 10_000, 5, b"c", b"x", 0, 0.0, "fresh") is Submitted.QUEUED


def test_a_request_past_its_deadline_between_two_checks_never_runs():
    """The deadline check runs every tenth of a heartbeat; dispatch looks again, so a request whose deadline
    passed in between ends expired instead of starting."""
    from balancer.records import Submitted
    from balancer.scheduler import Scheduler

    sched = Scheduler(heartbeat_s=1.0, liveness=2)
    assert sched.submit(1, 1, 5, b"c", b"x", 0, 0.0, "default", 0.001) is Submitted.QUEUED
    sched.hello(b"n0", 0, 1, 100, "host", 0.0)
    assert sched.dispatch(0.5) == []
    assert sched.get(1, 1).status == "expired"
