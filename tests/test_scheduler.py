"""The pure scheduler: priorities, least-loaded choice, liveness and admin transitions."""

from __future__ import annotations

import pytest

from balancer.scheduler import NodeState, Scheduler, Submitted
from wire import events as ev


def make(nodes: dict[int, int] | None = None, **kwargs) -> Scheduler:
    """A scheduler with nodes {id: capacity} that said hello at t=0."""
    sched = Scheduler(heartbeat_s=1.0, liveness=3, **kwargs)
    for node_id, capacity in (nodes or {}).items():
        sched.hello(f"n{node_id}".encode(), node_id, capacity, 100 + node_id, "host", 0.0)
    return sched


def assigned(sched: Scheduler) -> list[tuple[int, int]]:
    """Dispatch and return (server_id, request_id) pairs in order."""
    return [(node.node_id, req.request_id) for node, _ticket, req in sched.dispatch()]


def kinds(sched: Scheduler) -> list[str]:
    return [e[0] for e in sched.events]


def test_lower_priority_number_goes_first_and_ties_are_fifo():
    """Priority 1 beats priority 5; equal priorities leave in arrival order."""
    sched = make()
    for rid, prio in [(1, 5), (2, 5), (3, 1), (4, 3), (5, 1)]:
        sched.submit(0, rid, prio, b"c", b"")
    sched.hello(b"n0", 0, 5, 1, "h", 0.0)
    assert [rid for _n, rid in assigned(sched)] == [3, 5, 4, 1, 2]


def test_urgent_request_overtakes_waiting_backlog_when_nodes_are_busy():
    """A priority-1 request arriving while every node is busy is next, before queued priority-5 work."""
    sched = make({0: 1})
    for rid in range(1, 4):
        sched.submit(0, rid, 5, b"c", b"")
    first = sched.dispatch()
    sched.submit(0, 99, 1, b"c", b"")
    assert assigned(sched) == []  # the only node is full
    node, ticket, _req = first[0]
    sched.complete(node.route, ticket, True, b"ok", 1.0)
    assert assigned(sched) == [(0, 99)]


def test_least_loaded_by_ratio_then_most_recently_used():
    """Work goes to the lowest in-flight/capacity ratio; ties to the node used last (its caches are warm)."""
    sched = make({0: 4})
    sched.submit(0, 100, 5, b"c", b"")
    ((node, ticket, _req),) = sched.dispatch()
    sched.complete(node.route, ticket, True, b"ok", 0.5)
    sched.hello(b"n1", 1, 1, 1, "h", 0.5)
    for rid in range(1, 4):
        sched.submit(0, rid, 5, b"c", b"")
    # Both idle: node 0 was used last and takes one; then node 1 (0/1) is less loaded than
    # node 0 (1/4) and takes one; then node 1 is full and node 0 takes the rest.
    assert assigned(sched) == [(0, 1), (1, 2), (0, 3)]


def test_a_burst_spreads_over_idle_nodes_and_one_at_a_time_stays_on_the_warm_one():
    """Six at once fill three equal nodes evenly; then requests one at a time all go to the node used last."""
    sched = make({0: 10, 1: 10, 2: 10})
    for rid in range(1, 7):
        sched.submit(0, rid, 5, b"c", b"")
    burst = sched.dispatch()
    assert sorted(n.node_id for n, _t, _r in burst) == [0, 0, 1, 1, 2, 2]
    for node, ticket, _req in burst:
        sched.complete(node.route, ticket, True, b"ok", 0.1)
    last = burst[-1][0].node_id
    one_at_a_time = []
    for rid in range(7, 12):
        sched.submit(0, rid, 5, b"c", b"")
        ((node, ticket, _req),) = sched.dispatch()
        one_at_a_time.append(node.node_id)
        sched.complete(node.route, ticket, True, b"ok", 0.2)
    assert one_at_a_time == [last] * 5


def test_never_over_capacity():
    """A node is never given more than its capacity."""
    sched = make({0: 2, 1: 1})
    for rid in range(10):
        sched.submit(0, rid, 5, b"c", b"")
    pairs = assigned(sched)
    assert len(pairs) == 3
    assert all(len(n.in_flight) <= n.capacity for n in sched.nodes.values())
    assert sched.waiting == 7


def test_silent_node_is_declared_dead_and_its_work_requeued_ahead_of_later_arrivals():
    """After liveness intervals of silence a node is dead; its work returns before later same-priority requests."""
    sched = make({0: 2, 1: 1})
    for rid in range(1, 4):
        sched.submit(0, rid, 5, b"c", b"")
    assert assigned(sched) == [(0, 1), (1, 2), (0, 3)]
    sched.submit(0, 4, 5, b"c", b"")
    sched.heartbeat(b"n1", 1, 0, 2.5)
    assert sched.expire(2.9) == []
    dead = sched.expire(3.1)
    assert [n.node_id for n in dead] == [0]
    assert sched.nodes[0].state is NodeState.DEAD
    assert not sched.nodes[0].active
    assert (ev.NODE_DEAD, 0, 3.1, 2) in sched.events
    sched.hello(b"n2", 2, 10, 1, "h", 3.1)
    assert assigned(sched) == [(2, 1), (2, 3), (2, 4)]
    assert sched.get(0, 1).attempts == 2


def test_late_result_from_dead_node_is_dropped():
    """A result a dead node sends after its work was re-queued is not delivered."""
    sched = make({0: 1})
    sched.submit(0, 1, 5, b"c", b"")
    ((_node, ticket, _req),) = sched.dispatch()
    sched.expire(10.0)
    assert sched.complete(b"n0", ticket, True, b"late", 10.0) is None
    assert sched.counters["late_results"] == 1
    assert sched.outbox.replies == []
    assert sched.get(0, 1).status == "pending"


def test_requeue_gives_up_after_max_attempts():
    """A request whose node died max_attempts times goes to the dead letters with a reason, not retried forever;
    its sender is told (status dead, the reason as its result), and a retry queues it again from attempt 0."""
    sched = make(max_attempts=2)
    sched.submit(0, 1, 5, b"c", b"")
    for round_ in range(2):
        route = f"r{round_}".encode()
        sched.hello(route, None, 1, 1, "h", float(round_ * 10))
        assert len(sched.dispatch()) == 1
        sched.expire(float(round_ * 10 + 5))
    req = sched.get(0, 1)
    assert req.status == "dead" and req.body == b""  # the payload (empty here) is kept for a retry
    [told] = sched.outbox.take_replies()
    assert (told.status, told.attempts) == ("dead", 2) and b"gave up after 2 attempts" in told.body
    assert [row["error"] for row in sched.dead.view(10)["dead"]] == [told.body.decode()]
    sched.retry(0, 1)
    assert (req.status, req.attempts, len(sched.dead)) == ("pending", 0, 0) and sched.waiting == 1


def test_down_requeues_and_up_restores():
    """down re-queues in-flight work and takes no more; up brings the node back."""
    sched = make({0: 1, 1: 1})
    sched.submit(0, 1, 5, b"c", b"")
    assert assigned(sched) == [(0, 1)]
    sched.mark_down(0)
    assert sched.nodes[0].state is NodeState.DOWN
    assert assigned(sched) == [(1, 1)]
    sched.submit(0, 2, 5, b"c", b"")
    assert assigned(sched) == []
    sched.mark_up(0)
    assert assigned(sched) == [(0, 2)]


def test_drain_finishes_in_flight_but_takes_nothing_new():
    """A draining node keeps its running request, gets no new one, and reports drained."""
    sched = make({0: 2})
    sched.submit(0, 1, 5, b"c", b"")
    ((node, ticket, _req),) = sched.dispatch()
    sched.drain(0)
    sched.submit(0, 2, 5, b"c", b"")
    assert sched.dispatch() == []
    assert sched.complete(node.route, ticket, True, b"ok", 1.0).status == "processed"
    assert kinds(sched)[-1] == ev.NODE_DRAINED


def test_admin_on_unknown_or_dead_node_raises_key_error():
    """Admin transitions name the problem for unknown and dead nodes."""
    sched = make({0: 1})
    with pytest.raises(KeyError, match="Server 7 not found"):
        sched.mark_down(7)
    sched.expire(100.0)
    with pytest.raises(KeyError, match="dead"):
        sched.mark_up(0)


def test_auto_ids_are_the_next_free_integers():
    """Nodes without an id get 0, 1, 2... and a dead node's id is reused."""
    sched = make()
    ids = [sched.hello(f"r{i}".encode(), None, 1, 1, "h", 0.0).node_id for i in range(3)]
    assert ids == [0, 1, 2]
    sched.heartbeat(b"r0", 0, 0, 2.0)
    sched.heartbeat(b"r2", 0, 0, 2.0)
    sched.expire(3.5)
    assert sched.hello(b"r9", None, 1, 1, "h", 4.0).node_id == 1


def test_reconnecting_node_keeps_the_work_it_holds():
    """HELLO again from the same incarnation keeps the work it lists as held."""
    sched = make({0: 1})
    sched.submit(0, 1, 5, b"c", b"")
    ((_node, ticket, _req),) = sched.dispatch()
    sched.hello(b"n0", 0, 1, 100, "host", 1.0, held=[ticket])
    assert list(sched.nodes[0].in_flight) == [ticket]
    assert sched.get(0, 1).status == "assigned"


def test_duplicate_submit_is_recognised_and_finished_request_is_answered_again():
    """Resubmitting a known request never runs it twice; a finished one gets its result again."""
    sched = make({0: 1})
    assert sched.submit(0, 1, 5, b"c", b"") is Submitted.QUEUED
    assert sched.submit(0, 1, 5, b"c2", b"") is Submitted.DUPLICATE
    ((node, ticket, _req),) = sched.dispatch()
    sched.complete(node.route, ticket, True, b"result", 1.0)
    assert [r.route for r in sched.outbox.take_replies()] == [b"c2"]  # where it was asked last
    assert [r.route for r in sched.outbox.take_replays()] == [b"c"]  # and where it was asked first
    assert sched.submit(0, 1, 5, b"c2", b"") is Submitted.FINISHED
    assert [(r.body, r.route) for r in sched.outbox.replies] == [(b"result", b"c2")]
    assert sched.outbox.replays == []  # the process that submitted it: a retry, not a replay
    assert sched.submit(0, 1, 5, b"c3", b"") is Submitted.FINISHED
    assert [(r.body, r.route) for r in sched.outbox.replays] == [(b"result", b"c3")]
    assert sched.counters["submitted"] == 1


def test_queue_limit_rejects_with_reason():
    """Beyond max_queue waiting requests a submit is rejected and counted."""
    sched = make(max_queue=2)
    results = [sched.submit(0, rid, 5, b"c", b"") for rid in range(3)]
    assert results == [Submitted.QUEUED, Submitted.QUEUED, Submitted.REJECTED]
    assert sched.counters["rejected"] == 1
    assert sched.events[-1][0] == ev.REQUEST_REJECTED


def test_finished_requests_are_forgotten_beyond_retention():
    """Only the newest keep_finished finished requests are remembered; pending ones always are."""
    sched = make({0: 1}, keep_finished=2)
    for rid in range(4):
        sched.submit(0, rid, 5, b"c", b"")
    for _ in range(3):
        ((node, ticket, _req),) = sched.dispatch()
        sched.complete(node.route, ticket, True, b"ok", 1.0)
    remembered = [r.request_id for r in sched.requests()]
    assert remembered == [1, 2, 3]
    assert [r.request_id for r in sched.requests(status="processed")] == [1, 2]


def test_failed_handler_result_is_reported_not_retried():
    """A node's error result finishes the request as failed with the error text."""
    sched = make({0: 1})
    sched.submit(0, 1, 5, b"c", b"")
    ((node, ticket, _req),) = sched.dispatch()
    req = sched.complete(node.route, ticket, False, b"ValueError: boom", 1.0)
    assert req.status == "failed"
    assert sched.events[-1] == (ev.REQUEST_FAILED, 0, 1, 0, "ValueError: boom")
    assert sched.dispatch() == []


def test_kept_results_are_bounded_in_bytes_too():
    """Beyond the result byte budget the oldest finished requests are forgotten, whatever their count."""
    sched = make({0: 1}, keep_finished_bytes=250)
    for rid in range(4):
        sched.submit(0, rid, 5, b"c", b"")
        ((node, ticket, _req),) = sched.dispatch()
        sched.complete(node.route, ticket, True, b"x" * 100, 1.0)
    assert [r.request_id for r in sched.requests(status="processed")] == [2, 3]
    assert len(sched.outbox.replies) == 4  # every result was still handed to its client


@pytest.mark.parametrize("ok", [True, False])
def test_a_result_answered_first_is_finished_the_same_but_not_queued_as_a_reply(ok):
    """finishing() changes nothing; complete(answered=True) keeps every book complete() keeps, minus the reply."""
    answered, queued = make({0: 2}, max_memory_bytes=1 << 20), make({0: 2}, max_memory_bytes=1 << 20)
    for sched in (answered, queued):
        sched.submit(7, 1, 1, b"c", b"payload")
        ((_node, ticket, _req),) = sched.dispatch()
        sched.events.clear()
        held = sched.budget.live
        req = sched.finishing(b"n0", ticket)
        assert req is not None and req.status == "assigned" and sched.budget.live == held and not sched.events
        assert sched.finishing(b"n0", ticket + 1) is None and sched.finishing(b"n9", ticket) is None
        done = sched.complete(b"n0", ticket, ok, b"result", 1.0, answered=sched is answered)
        assert done is req and req.body == b"result" and req.status == ("processed" if ok else "failed")
    assert [r.request_id for r in queued.outbox.replies] == [1] and answered.outbox.replies == []
    for field in ("counters", "events"):
        assert getattr(answered, field) == getattr(queued, field)
    assert answered.budget.live == queued.budget.live and answered.budget.by_client == queued.budget.by_client
    assert answered.remembered_finished == queued.remembered_finished == 1
    assert answered.in_flight() == queued.in_flight() == 0
    assert [n for n, _t, _r in answered.dispatch()] == [] and answered.submit(
        7, 1, 1, b"c", b"payload"
    ) is Submitted.FINISHED


@pytest.mark.parametrize("ok", [True, False])
def test_a_completion_journaled_first_writes_the_same_one_record(ok: bool):
    """An HA leader journals a lone result's record before complete() keeps the books (to ship it first):
    the journal gets the one record complete() alone writes, and the books end the same."""
    records, results = [], []
    for early in (False, True):
        sched = make({0: 1}, journal=True)
        sched.submit(4, 7, 2, b"c", b"payload")
        [(_node, ticket, _req)] = sched.dispatch()
        sched.outbox.take_journal()
        if early:
            sched.journal_completion(sched.finishing(b"n0", ticket), ok, b"out")
        req = sched.complete(b"n0", ticket, ok, b"out", 1.0, journaled=early)
        records.append(sched.outbox.take_journal())
        results.append((req.status, sched.counters["processed"], sched.counters["failed"], len(sched.outbox.replies)))
    assert records[0] == records[1] and len(records[0]) == 1
    assert records[0][0][4] == ("processed" if ok else "failed") and records[0][0][7] == b"out"
    assert results[0] == results[1]
