"""Sessions in the pure scheduler: a node id belongs to one incarnation at a time; a client id is a name."""

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


def test_resync_hello_takes_back_at_the_next_heartbeat_what_the_node_saw_pass_and_does_not_hold():
    """A HELLO again from the same incarnation: what it saw and does not hold may have finished (its DONE may
    still come on the old connection), so it goes back only if the next heartbeat does not hold it either;
    later WORK may be in flight."""
    sched = make()
    sched.hello(b"n0", 0, 3, 1, "h", 0.0, incarnation=A)
    kept = dispatch_one(sched, 1)
    lost = dispatch_one(sched, 2)
    later = dispatch_one(sched, 3)  # sent after the HELLO left the node: not seen yet, not lost
    sched.hello(b"n0", 0, 3, 1, "h", 0.5, incarnation=A, held=[kept], max_seen=lost)
    assert list(sched.nodes[0].in_flight) == [kept, lost, later]
    assert sched.counters["lost_in_transit"] == 0
    sched.heartbeat(b"n0", 1, 0, 1.0, held=[kept], max_seen=lost)
    assert list(sched.nodes[0].in_flight) == [kept, later]
    assert sched.get(0, 2).status == "pending"
    assert sched.get(0, 2).attempts == 0  # lost on the way is not an attempt
    assert sched.counters["lost_in_transit"] == 1
    assert ev.NODE_RESYNCED in [e[0] for e in sched.events]


def test_a_done_that_comes_after_the_resync_hello_finishes_the_request_once():
    """A balancer stopped for seconds reads a node's new HELLO before the DONE its old connection brought: the
    request it finished is not re-queued, and the DONE finishes it."""
    sched = make()
    sched.hello(b"n0", 0, 2, 1, "h", 0.0, incarnation=A)
    ticket = dispatch_one(sched, 1)
    sched.hello(b"n0", 0, 2, 1, "h", 5.0, incarnation=A, held=[], max_seen=ticket)
    assert sched.complete(b"n0", ticket, True, b"ok", 5.01) is not None
    sched.heartbeat(b"n0", 0, 1, 5.5, held=[], max_seen=ticket)
    assert sched.get(0, 1).status == "processed"
    assert sched.counters["lost_in_transit"] == 0 and sched.dispatch() == []


def resync_and_lose(sched, ticket: int, now: float) -> None:
    """A resync HELLO listing nothing, then a heartbeat listing nothing: the ticket is lost on the way."""
    sched.hello(b"n0", 0, 1, 1, "h", now, incarnation=A, held=[], max_seen=ticket)
    sched.heartbeat(b"n0", 0, 0, now + 0.05, held=[], max_seen=ticket)


def test_hello_storms_of_a_healthy_node_never_fail_a_request():
    """Many resyncs of one incarnation listing nothing re-queue, but never use up a request's attempts."""
    sched = make(max_attempts=3)
    sched.hello(b"n0", 0, 1, 1, "h", 0.0, incarnation=A)
    for round_ in range(10):
        ticket = dispatch_one(sched, 1) if round_ == 0 else next(t for _n, t, _r in sched.dispatch())
        resync_and_lose(sched, ticket, 0.1 * round_)
    assert sched.get(0, 1).status == "pending" and sched.counters["failed"] == 0


def test_a_ticket_below_the_highest_seen_and_not_held_is_lost_at_once():
    """WORK arrives in ticket order: a later ticket seen means an earlier one not held was lost on the way."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    lost = dispatch_one(sched, 1)
    later = dispatch_one(sched, 2)
    sched.heartbeat(b"n0", 1, 0, 0.5, held=[later], max_seen=later)
    assert sched.get(0, 1).status == "pending" and sched.get(0, 2).status == "assigned"
    assert lost not in sched.nodes[0].in_flight
    assert sched.counters["lost_in_transit"] == 1


def test_a_ticket_never_seen_is_lost_only_after_three_heartbeats_without_it():
    """With nothing later seen, a ticket may be in transit: lost once missing from three reports after an interval."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    dispatch_one(sched, 1)
    sched.heartbeat(b"n0", 0, 0, 0.5, held=[])  # sent before the work could arrive: says nothing
    for now in (1.0, 1.5):
        sched.heartbeat(b"n0", 0, 0, now, held=[])
        assert sched.get(0, 1).status == "assigned"
    sched.heartbeat(b"n0", 0, 0, 2.0, held=[])  # the third miss in a row
    assert sched.get(0, 1).status == "pending"
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


def finish_all(sched: Scheduler) -> None:
    for node, ticket, _req in sched.dispatch():
        sched.complete(node.route, ticket, True, b"done %d" % ticket, 1.0)


def answered(sched: Scheduler) -> tuple[set[tuple[bytes, int]], set[tuple[bytes, int]]]:
    """(route, request id) of the replies and of the replays the scheduler queued, taken."""
    out = sched.outbox
    replies = {(r.route, r.request_id) for r in out.take_replies()}
    return replies, {(r.route, r.request_id) for r in out.take_replays()}


def test_a_client_id_is_a_name_many_processes_submit_under_it_at_once():
    """Two processes (incarnations, connections) under one client id: neither is refused, and each result
    goes to the connection that submitted it; nothing holds the id, so no BYE or lease is involved."""
    sched = make(client_lease_s=10.0)
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    assert sched.submit(5, 901, 5, b"proc-a", b"x", incarnation=A, now=0.0) is Submitted.QUEUED
    assert sched.submit(5, 902, 5, b"proc-b", b"y", incarnation=B, now=0.0) is Submitted.QUEUED
    finish_all(sched)
    assert answered(sched) == ({(b"proc-a", 901), (b"proc-b", 902)}, set())
    assert sched.counters["clients_refused"] == 0


def test_one_request_from_two_processes_runs_once_and_both_get_its_result():
    """The same (client id, request id) from two connections is one request: sent again while it waits, it is
    not queued twice, and when it finishes the later connection gets the result and the earlier one too (as
    a replay); finished, a third connection gets the stored result; another payload is still a conflict."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    assert sched.submit(9, 7, 5, b"a", b"same", incarnation=A) is Submitted.QUEUED
    assert sched.submit(9, 7, 5, b"b", b"same", incarnation=B) is Submitted.DUPLICATE
    assert sched.submit(9, 7, 5, b"b", b"same", incarnation=B) is Submitted.DUPLICATE  # b's retry
    assert sched.submit(9, 7, 5, b"b", b"other", incarnation=B) is Submitted.CONFLICT
    assert sched.waiting == 1
    finish_all(sched)
    assert answered(sched) == ({(b"b", 7)}, {(b"a", 7)})
    assert sched.submit(9, 7, 5, b"c", b"same", incarnation=0xC) is Submitted.FINISHED
    assert answered(sched) == (set(), {(b"c", 7)})
    assert sched.submit(9, 7, 5, b"c", b"other", incarnation=0xC) is Submitted.CONFLICT
    assert sched.counters["submitted"] == 1 and sched.counters["processed"] == 1


def test_a_result_answered_at_once_still_reaches_the_other_connections_that_asked():
    """The idle path sends a result before complete() (answered=True): the other connections' replays follow."""
    sched = make()
    sched.hello(b"n0", 0, 4, 1, "h", 0.0, incarnation=A)
    sched.submit(9, 7, 5, b"a", b"same", incarnation=A)
    ((node, ticket, _req),) = sched.dispatch()
    sched.submit(9, 7, 5, b"b", b"same", incarnation=B)
    assert sched.finishing(node.route, ticket).route == b"b"
    sched.complete(node.route, ticket, True, b"done", 1.0, answered=True)
    replies, replays = answered(sched)
    assert replies == set() and replays == {(b"a", 7)}
    assert not sched._also_waiting


def test_connections_waiting_on_one_request_are_bounded():
    """Each extra connection that asks for an unfinished request is remembered to be answered, up to a bound."""
    from balancer.kept import MAX_ALSO_WAITING

    sched = make()
    sched.hello(b"n0", 0, 1, 1, "h", 0.0, incarnation=A)
    for n in range(MAX_ALSO_WAITING + 10):
        sched.submit(9, 7, 5, b"route-%d" % n, b"same")
    finish_all(sched)
    replies, replays = answered(sched)
    assert replies == {(b"route-%d" % (MAX_ALSO_WAITING + 9), 7)} and len(replays) == MAX_ALSO_WAITING


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


def test_a_client_id_that_remembers_nothing_is_forgotten():
    """A submit refused for the budget leaves an empty session: the next sweep forgets it; one that holds a
    request stays. No HELLO makes a session: a connection holds nothing."""
    sched = make(max_memory_bytes=1000)
    assert sched.submit(3, 1, 5, b"r", b"x" * 5000) is Submitted.TOO_LARGE
    assert sched.submit(7, 1, 5, b"r", b"x") is Submitted.QUEUED
    assert sched.sessions.sweep() == 1 and list(sched.sessions) == [7]


def test_a_request_lost_in_transit_again_and_again_fails_instead_of_going_round_for_ever():
    """A request the transport keeps losing (MAX_TRANSIT_LOSSES resyncs in a row) goes to the dead letters."""
    from balancer.scheduler import MAX_TRANSIT_LOSSES

    sched = make(max_attempts=3)
    sched.hello(b"n0", 0, 1, 1, "h", 0.0, incarnation=A)
    for round_ in range(MAX_TRANSIT_LOSSES):
        ticket = dispatch_one(sched, 1) if round_ == 0 else next(t for _n, t, _r in sched.dispatch())
        resync_and_lose(sched, ticket, 0.1 * round_)
    req = sched.get(0, 1)
    assert req.status == "dead" and f"lost in transit {MAX_TRANSIT_LOSSES} times" in sched.dead.get(0, 1).error
    assert sched.counters["lost_in_transit"] == MAX_TRANSIT_LOSSES and not sched._transit_losses
    assert sched.dispatch() == []


def test_requests_restored_from_a_format_2_journal_keep_their_sha256_digests_and_new_ones_get_xxh3(tmp_path):
    """Journals of format 2 hold SHA-256 digests (negative) and, older, BLAKE2b ones (not negative, as XXH3's
    are): a restored SHA-256 digest still tells a resubmission from a conflict, a BLAKE2b one is dropped (any
    payload gets the stored result), and a request finished now gets a non-negative XXH3 digest."""
    import hashlib

    from balancer import journal as jr
    from balancer import journal_format as jf
    from balancer.records import EARLIER, FINISHED
    from wire import protocol as p

    def sha(payload: bytes) -> int:
        return -1 - (int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1)

    blake = int.from_bytes(hashlib.blake2b(b"payload", digest_size=8).digest(), "little")
    path = tmp_path / "journal"
    records = [
        (0, "zlb-journal", 2),
        (FINISHED, 0, 7, 5, "processed", 1, 1, b"result", blake),
        (FINISHED, 0, 8, 5, "processed", 1, 1, b"result", sha(b"payload")),
        (EARLIER, 0, 9, "processed", blake),
        (EARLIER, 0, 10, "processed", sha(b"payload")),
    ]
    path.write_bytes(jf.frame(p.encode_records(records)))
    sched = make()
    jr.restore(sched, jr.replay(str(path), None))
    for rid in (7, 8):
        assert sched.submit(0, rid, 5, b"c", b"payload", 0, 1.0) is Submitted.FINISHED
    assert sched.submit(0, 7, 5, b"c", b"other", 0, 1.0) is Submitted.FINISHED  # its digest was dropped
    assert sched.submit(0, 8, 5, b"c", b"other", 0, 1.0) is Submitted.CONFLICT
    assert sched.submit(0, 9, 5, b"c", b"other", 0, 1.0) is not Submitted.CONFLICT
    assert sched.submit(0, 10, 5, b"c", b"other", 0, 1.0) is Submitted.CONFLICT
    assert sched.submit(0, 10, 5, b"c", b"payload", 0, 1.0) is not Submitted.CONFLICT
    sched.hello(b"n0", 0, 3, 1, "h", 0.0, incarnation=A)
    ticket = dispatch_one(sched, 11)
    sched.complete(b"n0", ticket, True, b"done", 1.0)
    assert sched.get(0, 11).payload_digest >= 0
    assert sched.submit(0, 11, 5, b"c", b"payload", 0, 1.0) is Submitted.FINISHED
    assert sched.submit(0, 11, 5, b"c", b"another", 0, 1.0) is Submitted.CONFLICT
