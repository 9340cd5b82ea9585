"""A paused balancer does not blame its nodes (issue 21), the pure part: node deadlines run on the time
the loop could listen, a stall that made the nodes give up leaves them their back-off, and a node
declared dead that comes back holding its work keeps it, no attempt counted (balancer/nodes.py,
Scheduler.hello). The real processes are in tests/reliability/test_balancer_pause.py."""

from __future__ import annotations

import pytest

from balancer import nodes as nodes_module
from balancer.records import Request
from balancer.scheduler import Scheduler
from balancer.waiting import WaitingQueue
from wire import events as ev
from wire.protocol import RECONNECT_BACKOFF_MAX_S


def joined(heartbeat_s: float, liveness: int, count: int = 1, **kwargs) -> Scheduler:
    """A scheduler with `count` nodes (routes n0, n1, ...; capacity 2) that said HELLO at t=0."""
    sched = Scheduler(heartbeat_s=heartbeat_s, liveness=liveness, **kwargs)
    for node_id in range(count):
        sched.hello(f"n{node_id}".encode(), node_id, 2, 100 + node_id, "host", 0.0)
    return sched


def dead_ids(sched: Scheduler, now: float) -> list[int]:
    return [node.node_id for node in sched.expire(now)]


# ---- listening time ----------------------------------------------------------


def test_a_loop_late_again_and_again_judges_a_node_by_the_time_it_could_listen():
    """Late by 60 ms out of every 100 ms (a busy machine, no stop): a node silent 1 s of listening is dead
    after 2.5 s of wall time, not after 1 s; each lateness is shorter than a heartbeat, so no back-off."""
    sched = joined(0.1, 10)  # a node silent for 1 s is dead
    table = sched.table
    now = 0.0
    for _ in range(24):
        now += 0.1
        table.excuse(0.06, now)
        assert not table.overdue(now) and dead_ids(sched, now) == []
    assert now == pytest.approx(2.4) and table.deaf_s == pytest.approx(1.44)
    now += 0.1 + 0.01  # on time now: 1.01 s of listening since the node was last heard
    assert table.overdue(now)
    assert dead_ids(sched, now) == [0]
    assert (ev.NODE_DEAD, 0, pytest.approx(now), 0) in sched.events  # the silence it reports is wall time


def test_a_sign_of_life_after_a_stall_counts_from_the_listening_clock():
    """Heard right after the loop was late, a node has its whole deadline of listening from then."""
    sched = joined(0.1, 10)
    sched.table.excuse(0.5, 0.6)
    sched.heartbeat(b"n0", 0, 0, 0.6)
    assert dead_ids(sched, 1.55) == []
    assert dead_ids(sched, 1.65) == [0]


def test_without_any_lateness_a_silent_node_dies_on_time():
    sched = joined(0.1, 10)
    assert dead_ids(sched, 0.99) == []
    assert dead_ids(sched, 1.01) == [0]


def test_a_stall_that_made_the_nodes_give_up_leaves_them_their_back_off_before_anyone_is_judged():
    """Stopped 5 s with 0.5 s deadlines: the nodes gave up on the balancer and may sit out a reconnect
    back-off of up to RECONNECT_BACKOFF_MAX_S after it wakes. Nobody is judged until that back-off and a
    deadline have passed; then a node still silent is dead."""
    sched = joined(0.1, 5, count=2)  # 0.5 s deadlines
    table = sched.table
    table.excuse(5.0, 5.0)  # the poll that was meant to return at once returned 5 s later
    sched.heartbeat(b"n0", 0, 0, 5.0)  # node 0's heartbeats that waited in the socket, read on waking
    sched.heartbeat(b"n1", 0, 0, 5.0)
    judged_from = 5.0 + RECONNECT_BACKOFF_MAX_S + 0.5
    sched.hello(b"n0", 0, 2, 100, "host", judged_from - 0.3)  # node 0 back from its back-off
    assert not table.overdue(judged_from - 0.01)
    assert dead_ids(sched, judged_from - 0.01) == []
    assert dead_ids(sched, judged_from + 0.01) == [1]  # node 1 never came back: dead, later
    assert sched.nodes[0].active


def test_a_stall_shorter_than_what_makes_nodes_give_up_gives_no_back_off():
    """Late by a heartbeat with 1 s deadlines: the nodes were pinged in time and never gave up."""
    sched = joined(0.1, 10)
    sched.table.excuse(0.1, 0.2)
    assert dead_ids(sched, 1.09) == []
    assert dead_ids(sched, 1.11) == [0]


def test_a_node_id_held_through_a_stall_is_not_taken_over_before_its_holder_was_judged():
    """Another incarnation asking for a silent holder's id is refused while the stall excuses the silence."""
    sched = joined(0.1, 5)
    sched.table.excuse(5.0, 5.0)
    with pytest.raises(Exception, match="in use"):
        sched.hello(b"other", 0, 1, 999, "host", 6.0, incarnation=7)
    assert sched.hello(b"other", 0, 1, 999, "host", 5.0 + RECONNECT_BACKOFF_MAX_S + 0.6, incarnation=7).pid == 999


# ---- a false death ---------------------------------------------------------------


def dispatch_to(sched: Scheduler, count: int) -> dict[int, int]:
    """Submit and dispatch `count` requests (ids 1..count); their tickets by request id."""
    for rid in range(1, count + 1):
        sched.submit(0, rid, 5, b"c", b"payload")
    return {req.request_id: ticket for _node, ticket, req in sched.dispatch()}


def test_a_node_declared_dead_that_comes_back_holding_its_work_keeps_it_and_it_runs_once():
    sched = joined(1.0, 3)
    tickets = dispatch_to(sched, 2)
    assert dead_ids(sched, 10.0) == [0]
    assert sched.waiting == 2  # re-queued: no other node to take them
    sched.hello(b"n0", 0, 2, 100, "host", 10.5, held=sorted(tickets.values()))
    node = sched.nodes[0]
    assert sorted(node.in_flight) == sorted(tickets.values())
    assert sched.waiting == 0 and sched.dispatch() == []  # nothing to run again
    assert [sched.get(0, rid).status for rid in (1, 2)] == ["assigned"] * 2
    assert [sched.get(0, rid).attempts for rid in (1, 2)] == [1, 1]
    assert sched.counters["reclaimed"] == 2
    assert (ev.NODE_RETURNED, 0, 2, 0) in sched.events
    req = sched.complete(b"n0", tickets[1], True, b"done", 11.0)
    assert req is not None and req.status == "processed" and req.attempts == 1


def test_false_deaths_and_returns_never_bring_a_request_nearer_to_giving_up():
    """Declared dead and back with the same work five times, with max_attempts 3: the request finishes on
    its first attempt. (Before, the third death failed it: "gave up after 3 attempts".)"""
    sched = joined(1.0, 3, max_attempts=3)
    (ticket,) = dispatch_to(sched, 1).values()
    now = 0.0
    for _ in range(5):
        now += 10.0
        assert dead_ids(sched, now) == [0]
        sched.hello(b"n0", 0, 2, 100, "host", now, held=[ticket])
        assert sched.get(0, 1).status == "assigned" and sched.get(0, 1).attempts == 1
    req = sched.complete(b"n0", ticket, True, b"done", now + 0.5)
    assert req.status == "processed" and req.attempts == 1
    assert sched.counters["failed"] == 0


def test_work_already_given_to_another_node_runs_there_but_the_false_death_is_not_an_attempt():
    """The request went to node 1 before node 0 came back: it runs on both (node 0's result will be late),
    and the false death does not count: node 1 dying for real then re-queues it instead of failing it."""
    sched = joined(1.0, 3, max_attempts=2)
    (ticket,) = dispatch_to(sched, 1).values()
    sched.hello(b"n1", 1, 2, 101, "host", 9.0)
    assert dead_ids(sched, 10.0) == [0]
    ((node, _t, req),) = sched.dispatch()
    assert node.node_id == 1 and req.attempts == 2
    sched.hello(b"n0", 0, 2, 100, "host", 10.5, held=[ticket])
    # attempts still numbers its runs as the nodes saw them (node 1 runs attempt 2; its result will say so)
    assert req.attempts == 2 and sched.nodes[0].in_flight == {}
    assert (ev.NODE_RETURNED, 0, 0, 1) in sched.events
    assert sched.counters["reclaimed"] == 0
    sched.heartbeat(b"n0", 0, 0, 20.0)
    assert dead_ids(sched, 20.0) == [1]  # a real death now
    assert req.status == "pending"  # re-queued, not "gave up after 2 attempts"
    assert sched.complete(b"n0", ticket, True, b"late", 20.0) is None  # node 0's old ticket: late


def test_another_process_under_the_same_id_does_not_get_the_dead_ones_work():
    sched = joined(1.0, 3)
    (ticket,) = dispatch_to(sched, 1).values()
    assert dead_ids(sched, 10.0) == [0]
    sched.hello(b"someone-else", 0, 2, 555, "host", 10.5, incarnation=9, held=[ticket])
    assert sched.nodes[0].in_flight == {} and sched.waiting == 1
    assert sched.counters["reclaimed"] == 0


def test_a_finished_request_stays_finished_when_its_old_node_comes_back():
    sched = joined(1.0, 3)
    (ticket,) = dispatch_to(sched, 1).values()
    sched.hello(b"n1", 1, 2, 101, "host", 9.0)
    assert dead_ids(sched, 10.0) == [0]
    ((node, moved, req),) = sched.dispatch()
    sched.complete(node.route, moved, True, b"done", 10.2)
    sched.hello(b"n0", 0, 2, 100, "host", 10.5, held=[ticket])
    assert req.status == "processed" and req.attempts == 2
    assert sched.nodes[0].in_flight == {} and sched.counters["reclaimed"] == 0


def test_the_tickets_remembered_for_dead_nodes_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(nodes_module, "MAX_GHOST_TICKETS", 3)
    sched = Scheduler(heartbeat_s=1.0, liveness=3)
    for node_id in range(3):
        sched.hello(f"n{node_id}".encode(), node_id, 2, 100, "host", 0.0)
    dispatch_to(sched, 6)
    assert len(dead_ids(sched, 10.0)) == 3
    assert sum(map(len, sched.table.ghosts.values())) <= 3


# ---- taking re-queued requests back out of the queue ------------------------------


def request(rid: int, priority: int = 5, client_id: int = 0) -> Request:
    return Request(client_id, rid, priority, None, b"r", b"")


def test_take_back_removes_only_the_named_re_queued_requests_and_keeps_the_order_of_the_rest():
    queue = WaitingQueue()
    retried = [request(rid, priority=rid % 2) for rid in range(6)]
    for arrival, req in enumerate(retried):
        queue.push_retry(req, arrival)
    fresh = request(99)
    queue.push_fresh(fresh)
    found = queue.take_back({retried[1], retried[4], fresh})
    assert found == {retried[1], retried[4]}  # a fresh request is never taken back
    assert queue.count == 5
    order = [queue.pop() for _ in range(5)]
    assert order == [retried[0], retried[2], retried[3], retried[5], fresh]
    assert queue.pop() is None and queue.count == 0


def test_take_back_finds_a_paused_clients_set_aside_requests():
    queue = WaitingQueue()
    mine, other = request(1, client_id=7), request(2, client_id=8)
    queue.push_retry(mine, 0)
    queue.push_retry(other, 1)
    queue.pause(7)
    assert queue.pop() is other and queue.parked == 1  # set aside on its turn
    assert queue.take_back({mine}) == {mine}
    assert queue.parked == 0 and queue.count == 0
    queue.resume(7)
    assert queue.pop() is None


def test_a_node_declared_dead_for_its_dropped_connection_that_comes_back_keeps_its_work():
    """A reset connection that took longer than the grace (balancer/drops.py): the node was declared dead for
    its connection and comes back holding its work; it keeps what still waits, run once, attempt 1."""
    sched = joined(1.0, 3)
    tickets = dispatch_to(sched, 2)
    assert sched.disconnected(b"n0", 0.2) is sched.nodes[0]
    assert sched.nodes[0].state.value == "dead" and sched.waiting == 2
    assert (ev.NODE_DISCONNECTED, 0, pytest.approx(0.2), 2) in sched.events
    sched.hello(b"n0", 0, 2, 100, "host", 0.3, held=sorted(tickets.values()))
    assert sched.waiting == 0 and sched.dispatch() == []
    assert [(sched.get(0, rid).status, sched.get(0, rid).attempts) for rid in (1, 2)] == [("assigned", 1)] * 2
    assert (ev.NODE_RETURNED, 0, 2, 0) in sched.events
    assert sched.disconnected(b"n0-unknown", 0.4) is None
