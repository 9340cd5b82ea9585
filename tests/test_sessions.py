"""Sessions in the pure scheduler: node and client ids belong to one incarnation at a time."""

from __future__ import annotations

import pytest

from balancer.scheduler import Refused, Scheduler, Submitted
from wire import events as ev

A, B = 0xA, 0xB  # two incarnations


def make(**kwargs) -> Scheduler:
    return Scheduler(heartbeat_s=1.0, liveness=3, **kwargs)


def dispatch_one(sched: Scheduler, rid: int = 1) -> int:
    sched.submit(0, rid, 5, b"c", b"payload")
    ((_node, ticket, _req),) = sched.dispatch()
    return ticket


def test_resync_hello_requeues_at_once_what_the_node_does_not_hold():
    """The same incarnation saying HELLO again lists its tickets; the rest was lost and goes back to the queue."""
    sched = make()
    sched.hello(b"n0", 0, 2, 1, "h", 0.0, incarnation=A)
    kept = dispatch_one(sched, 1)
    dispatch_one(sched, 2)
    sched.hello(b"n0", 0, 2, 1, "h", 0.5, incarnation=A, held=[kept])
    assert list(sched.nodes[0].in_flight) == [kept]
    assert sched.get(0, 2).status == "pending"
    assert sched.counters["lost_in_transit"] == 1
    assert ev.NODE_RESYNCED in [e[0] for e in sched.events]


def test_heartbeats_find_work_lost_on_the_way_after_two_reports():
    """A ticket missing from two heartbeats in a row, though it had an interval to arrive, is re-queued once."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    lost = dispatch_one(sched, 1)
    sched.heartbeat(b"n0", 0, 0, 0.5, held=[])  # sent before the work could arrive: says nothing
    assert sched.get(0, 1).status == "assigned"
    sched.heartbeat(b"n0", 0, 0, 1.0, held=[])  # first miss
    assert sched.get(0, 1).status == "assigned"
    sched.heartbeat(b"n0", 0, 0, 1.5, held=[])  # second miss in a row: lost
    assert sched.get(0, 1).status == "pending"
    assert lost not in sched.nodes[0].in_flight
    assert sched.counters["lost_in_transit"] == 1


def test_a_held_ticket_is_never_requeued_and_a_miss_that_recovers_is_forgotten():
    """Reported as held, work stays put however many heartbeats pass; one miss then a hit resets the count."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    ticket = dispatch_one(sched, 1)
    sched.heartbeat(b"n0", 0, 0, 0.5, held=[])
    sched.heartbeat(b"n0", 0, 0, 1.0, held=[])  # one miss
    for now in (1.5, 2.0, 2.5, 3.0):
        sched.heartbeat(b"n0", 1, 0, now, held=[ticket])
    assert sched.nodes[0].in_flight.keys() == {ticket}
    assert sched.nodes[0].missing == {}


def test_a_second_live_incarnation_is_refused_and_the_first_keeps_its_work():
    """Another process with a live node's id is refused, with the holder's pid and host; nothing moves."""
    sched = make()
    sched.hello(b"n0", 1, 1, 111, "alpha", 0.0, incarnation=A)
    ticket = dispatch_one(sched)
    with pytest.raises(Refused, match="server id 1 is in use by pid 111 on host alpha") as refusal:
        sched.hello(b"other", 1, 1, 222, "beta", 1.0, incarnation=B)
    assert not refusal.value.fenced
    assert sched.nodes[1].incarnation == A and ticket in sched.nodes[1].in_flight
    assert sched.counters["nodes_refused"] == 1


def test_a_silent_holder_is_replaced_and_fenced():
    """Past liveness the newcomer takes the id; the old incarnation's route is fenced and its work re-queued."""
    sched = make()
    sched.hello(b"old", 1, 1, 111, "alpha", 0.0, incarnation=A)
    dispatch_one(sched)
    node = sched.hello(b"new", 1, 1, 222, "beta", 3.5, incarnation=B)
    assert node.pid == 222 and sched.nodes[1] is node
    assert sched.get(0, 1).status == "pending"
    assert "taken over by pid 222 on host beta" in sched.table.fenced[b"old"]
    with pytest.raises(Refused) as refusal:
        sched.hello(b"old", 1, 1, 111, "alpha", 4.0, incarnation=A)
    assert refusal.value.fenced
    assert sched.nodes[1] is node  # no flapping: the fenced one never gets the id back


def test_a_dead_nodes_id_taken_by_another_incarnation_fences_the_old_route():
    """A holder already declared dead is fenced when a new process takes its id (it may only be stalled)."""
    sched = make()
    sched.hello(b"old", 1, 1, 111, "alpha", 0.0, incarnation=A)
    sched.expire(3.5)
    sched.hello(b"new", 1, 1, 222, "beta", 4.0, incarnation=B)
    assert b"old" in sched.table.fenced


def test_undeliverable_work_goes_back_at_once_without_counting_an_attempt():
    """WORK that found no connection is re-queued at once, its attempt not counted, the node skipped until heard."""
    sched = make()
    sched.hello(b"n0", 0, 2, 1, "h", 0.0, incarnation=A)
    sched.hello(b"n1", 1, 2, 1, "h", 0.0, incarnation=B)
    sched.submit(0, 1, 5, b"c", b"x")
    ((node, ticket, req),) = sched.dispatch()
    sched.undeliverable(node, ticket)
    assert req.status == "pending" and req.attempts == 0
    ((again, _t, _r),) = sched.dispatch()
    assert again is not node
    sched.seen(node.route, 0.1)
    assert node.reachable


def test_a_second_client_incarnation_is_refused_within_the_lease_and_takes_over_after():
    """One live process per client id; after its lease (or its BYE) another may have it."""
    sched = make(client_lease_s=10.0)
    assert sched.submit(5, 1, 5, b"r1", b"x", incarnation=A, now=0.0) is Submitted.QUEUED
    assert sched.submit(5, 2, 5, b"r2", b"x", incarnation=B, now=1.0) is Submitted.ID_IN_USE
    assert "client id 5 is in use by another process" in sched.client_hello(5, B, 9, "h", 2.0)
    assert sched.client_hello(5, B, 9, "h", 11.0) == ""  # A silent past its lease
    assert sched.submit(5, 2, 5, b"r2", b"x", incarnation=A, now=11.5) is Submitted.ID_IN_USE
    sched.client_bye(5, B)
    assert sched.submit(5, 3, 5, b"r1", b"x", incarnation=A, now=12.0) is Submitted.QUEUED


def test_a_reused_request_id_with_another_payload_is_a_conflict():
    """Request ids are idempotency keys: another payload under a used id is refused, waiting or finished."""
    sched = make()
    sched.hello(b"n0", 0, 1, 1, "h", 0.0)
    assert sched.submit(0, 1, 5, b"c", b"one") is Submitted.QUEUED
    assert sched.submit(0, 1, 5, b"c", b"two") is Submitted.CONFLICT
    ((node, ticket, _req),) = sched.dispatch()
    sched.complete(node.route, ticket, True, b"result", 1.0)
    assert sched.submit(0, 1, 5, b"d", b"two") is Submitted.CONFLICT
    assert sched.submit(0, 1, 5, b"d", b"one") is Submitted.FINISHED
    assert sched.counters["conflicts"] == 2 and sched.counters["replays"] == 1
