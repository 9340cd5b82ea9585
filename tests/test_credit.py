"""Credit, the pure parts: the windows the balancer grants (balancer/credit.py) and how a Client keeps to
its own (client_node/window.py), in memory."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.budget import LAPSED_S, SHARE_OF_LIMIT
from balancer.credit import (
    ARRIVING_TOLD_MAX,
    CAPACITY_FACTOR,
    MIN_CLIENT_REQUESTS,
    MIN_TOTAL_REQUESTS,
    TARGET_WAIT_S,
    Credit,
    worth_telling,
)
from balancer.scheduler import Scheduler, Submitted
from client_node.window import INITIAL_BYTES, INITIAL_REQUESTS, QUEUED, SENT, Outstanding, Window
from wire.limits import REQUEST_OVERHEAD_BYTES, request_cost

MIB = 2**20
COST = 16 + REQUEST_OVERHEAD_BYTES  # a 16-byte request


def ask(c: Credit, route: str, client_id: int, cost: int, now: float) -> int:
    """A connection asks for room, as a Client does: after its CLIENT_HELLO (its welcome)."""
    if route not in c.told:
        c.welcome(route, client_id)
    return c.want(route, client_id, cost, now)


def credit(limit: int | None = 64 * MIB) -> Credit:
    return Credit(Scheduler(max_memory_bytes=limit), now=0.0)


def test_a_client_alone_may_have_most_of_the_budget_and_the_whole_request_window():
    """Alone (holding or not), a client's byte window is SHARE_OF_LIMIT of the budget and its request window
    is the whole total."""
    c = credit()
    assert c.window(1) == (MIN_TOTAL_REQUESTS, int(64 * MIB * SHARE_OF_LIMIT))
    c.budget.charge(1, 1000)
    assert c.window(1) == (MIN_TOTAL_REQUESTS, int(64 * MIB * SHARE_OF_LIMIT))


def test_a_second_client_with_work_halves_the_first_ones_window_and_gets_what_is_free_at_once():
    """Client 1 holds more than its new share when client 2 arrives: 1's window falls to the share (it sends
    nothing until it drains below it), 2 gets what is free now, and its share once 1 has drained."""
    c = credit(100 * MIB)
    c.budget.charge(1, 35 * MIB)  # client 1 flooded alone: 70 MiB with its result's room (its share: 75 MiB)
    free = c.budget.free()
    assert c.window(2) == (MIN_TOTAL_REQUESTS // 2, free)  # newcomer: its share would be 37.5 MiB; 30 are free
    c.budget.charge(2, 1000)
    share = int(100 * MIB * SHARE_OF_LIMIT) // 2
    assert c.window(1) == (MIN_TOTAL_REQUESTS // 2, share)
    c.budget.release(1, 30 * MIB)  # client 1's results went back
    assert c.window(2) == (MIN_TOTAL_REQUESTS // 2, share)


def test_no_limit_means_no_byte_bound_and_a_refusing_balancer_grants_nothing():
    """Without --max-memory-mb the byte window is None; while the journal cannot be written it is (0, 0)."""
    c = credit(None)
    assert c.window(1) == (MIN_TOTAL_REQUESTS, None)
    c.sched.refusing = "busy: the balancer's journal cannot be written"
    assert c.window(1) == (0, 0)


def test_the_request_window_follows_the_completion_rate_with_the_live_capacity_as_a_floor():
    """The total is the smoothed rate x TARGET_WAIT_S, never below 4 x the live capacity (MIN_TOTAL_REQUESTS
    with no live node or before the first tick);
    two thousand clients with work still get MIN_CLIENT_REQUESTS each."""
    c = credit()
    c.tick(1.0, 40_000, 200)  # 40,000 finished in the first second: half of it counts (smoothing)
    assert c.rate == 20_000 and c.total_requests == int(20_000 * TARGET_WAIT_S)
    c.tick(2.0, 80_000, 200)
    assert c.rate == 30_000 and c.total_requests == int(30_000 * TARGET_WAIT_S)
    c.tick(3.0, 80_000, 5_000)  # quiet, but many live nodes
    assert c.total_requests == 20_000
    for client_id in range(2000):
        c.budget.charge(client_id, 10)
    assert c.window(1)[0] == MIN_CLIENT_REQUESTS


def test_a_connection_hears_only_news():
    """Any shrink of the bytes is told (the budget refuses past them), a growth only from an eighth; the
    requests from a quarter either way; a change to or from no byte bound always."""
    told = (1000, 80_000)
    assert not worth_telling(told, (1000, 80_000))
    assert worth_telling(told, (1000, 79_999))
    assert not worth_telling(told, (1000, 89_999))
    assert worth_telling(told, (1000, 90_000))
    assert not worth_telling(told, (1249, 80_000)) and not worth_telling(told, (751, 80_000))
    assert worth_telling(told, (1250, 80_000)) and worth_telling(told, (750, 80_000))
    assert worth_telling(told, (1000, None)) and worth_telling((1000, None), told)
    assert not worth_telling((0, 0), (0, 0)) and worth_telling((0, 0), (16, 0))


def test_only_connections_that_said_hello_are_told_and_forgotten_ones_are_not():
    """update() is None for a route never welcomed (a raw socket, an MDP client); a welcomed one hears its
    window when it moved, once; forget() and keep_only() drop routes."""
    c = credit()
    assert c.update(b"raw", 1) is None
    assert c.welcome(b"r1", 1) == c.window(1)
    assert c.update(b"r1", 1) is None  # nothing moved
    c.budget.charge(2, 1000)  # a second client with work: the first one's request window halves
    assert c.update(b"r1", 1) == c.window(1) and c.update(b"r1", 1) is None
    c.welcome(b"r2", 2)
    c.keep_only({b"r2": b"r2"}, {})
    assert set(c.told) == {b"r2"}
    c.forget(b"r2")
    assert c.told == {}


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=60),
    limit=st.integers(2 * MIB, 8 * MIB),
    finish_every=st.integers(1, 5),
)
def test_clients_that_keep_to_their_windows_are_never_refused_busy(sizes, limit, finish_every):
    """Two clients submit in turns, each only what its byte window lets through, and requests finish now and
    then: the scheduler's budget never answers busy."""
    sched = Scheduler(heartbeat_s=1.0, liveness=3, max_memory_bytes=limit)
    sched.hello(b"n0", 0, 10_000, 100, "host", 0.0)
    c = Credit(sched, 0.0)
    for n, size in enumerate(sizes):
        client_id = 1 + n % 2
        out = sched.budget.by_client.get(client_id, 0)  # what it has out: its requests still at the balancer
        if out + request_cost(size) > c.window(client_id)[1]:
            continue  # the Client would keep it in its local queue
        outcome = sched.submit(client_id, n, 5, f"c{client_id}".encode(), b"x" * size)
        assert outcome is Submitted.QUEUED, sched.last_refusal
        if n % finish_every == 0:
            for node, ticket, _req in sched.dispatch(0.0):
                sched.complete(node.route, ticket, True, b"", 0.0)


def entry(size: int = 16) -> Outstanding:
    return Outstanding(5, b"x" * size, math.inf, 1.0)


def test_before_the_first_word_a_client_may_send_its_initial_window():
    """A fresh Window lets INITIAL_REQUESTS go, at most INITIAL_BYTES of them; the rest wait, in order."""
    w = Window()
    for rid in range(INITIAL_REQUESTS + 5):
        w.wait(rid, entry())
    went = w.take(10.0)
    first = min(INITIAL_REQUESTS, INITIAL_BYTES // COST)
    assert [rid for rid, _ in went] == list(range(first))
    assert w.out == first and w.out_bytes == first * COST <= INITIAL_BYTES
    assert w.queued == INITIAL_REQUESTS + 5 - first and all(s.state == SENT and s.due_at == 11.0 for _, s in went)


def test_the_window_stops_at_the_first_request_that_does_not_fit_and_answers_free_room():
    """Bytes bound: a big request at the head waits for room and nothing behind it overtakes; an answer frees
    its room and the line moves on."""
    w = Window()
    w.grant(100, 3 * COST)
    small, big, after = entry(), entry(3 * COST), entry()
    for rid, sent in ((1, small), (2, big), (3, after)):
        w.wait(rid, sent)
    assert [rid for rid, _ in w.take(0.0)] == [1]
    assert w.take(0.0) == []  # 2 does not fit beside 1, and 3 waits behind it
    w.answered(small)
    assert w.take(0.0) == []  # nothing out, and still bigger than the window: not sent on chance
    assert w.starved() and w.want() == big.cost  # it asks for room of its own
    w.grant(100, 3 * COST, big.cost)  # the balancer reserved it
    assert [rid for rid, _ in w.take(0.0)] == [2] and w.reserved == 0  # the room is used once
    assert w.take(0.0) == []
    w.answered(big)
    assert [rid for rid, _ in w.take(0.0)] == [3] and w.queued == 0


def test_room_reserved_for_a_big_request_goes_to_that_one_request_only():
    """A grant without room (reserved 0) leaves earlier room standing; a second big request asks again."""
    w = Window()
    w.grant(100, 4 * COST)
    first, second = entry(8 * COST), entry(8 * COST)
    w.wait(1, first)
    w.wait(2, second)
    assert w.take(0.0) == [] and w.want() == first.cost
    w.grant(100, 4 * COST, first.cost)
    w.grant(100, 4 * COST, 0)  # a CREDIT about the window alone
    assert [rid for rid, _ in w.take(0.0)] == [1]
    assert w.want() == 0  # something is out: its answer comes first
    w.answered(first)
    assert w.take(0.0) == [] and w.want() == second.cost


def test_a_busy_refusal_puts_the_request_first_in_line_and_waits_for_credit():
    """Refused busy: the request goes back ahead of the others, the byte window shrinks to what is still out,
    and with nothing out the client is starved until a grant."""
    w = Window()
    w.grant(100, 10 * COST)
    first, second, third = entry(), entry(), entry()
    for rid, sent in ((1, first), (2, second), (3, third)):
        w.wait(rid, sent)
    w.take(0.0)
    w.refused(2, second)
    assert second.state == QUEUED and second.due_at == math.inf and w.bytes == 2 * COST
    w.wait(4, entry())
    assert w.take(0.0) == []  # the two still out fill the shrunk window
    w.answered(first)
    assert [rid for rid, _ in w.take(0.0)] == [2]  # room for one: the refused one first
    w.refused(2, second)
    w.refused(3, third)
    assert w.out == 0 and w.bytes == 0 and w.starved()
    w.grant(100, 10 * COST)
    assert [rid for rid, _ in w.take(0.0)] == [2, 3, 4] and not w.starved()


def test_an_answer_or_cancel_for_a_queued_request_is_skipped_and_the_queue_bound_holds():
    """A request answered while it waited here is never sent; full() says when the local queue is at its bound."""
    w = Window(max_requests=3, max_bytes=10 * MIB)
    sents = [entry() for _ in range(3)]
    w.grant(0, 0)
    for rid, sent in enumerate(sents):
        w.wait(rid, sent)
    assert w.full()
    w.answered(sents[1])  # e.g. cancelled before it was sent
    w.grant(10, None)
    assert [rid for rid, _ in w.take(0.0)] == [0, 2] and w.out == 2 and w.waiting_bytes == 0
    assert not Window(max_requests=10, max_bytes=COST).full()


def test_the_local_queue_keeps_the_balancers_order_lower_priority_numbers_first():
    """An urgent request submitted behind a backlog overtakes it, as it would in the balancer's queue; within
    a priority the first submitted goes first."""
    w = Window()
    w.grant(2, None)
    for rid in range(1, 6):
        w.wait(rid, Outstanding(9, b"x", math.inf, 1.0))
    w.wait(6, Outstanding(1, b"x", math.inf, 1.0))
    w.wait(7, Outstanding(5, b"x", math.inf, 1.0))
    assert [rid for rid, _ in w.take(0.0)] == [6, 7]
    w.grant(10, None)
    assert [rid for rid, _ in w.take(0.0)] == [1, 2, 3, 4, 5]
    assert w.queued == 0 and w.waiting == {} and w.priorities == []


def test_slow_work_gets_a_window_it_finishes_in_well_under_a_retry_period():
    """One node of capacity 1 finishing 10 requests a second: the window is MIN_CLIENT_REQUESTS, 1.6 s of
    work, not the 1,024 of the first tick (which would queue 100 s and have the Client re-send)."""
    c = credit()
    assert c.window(1)[0] == MIN_TOTAL_REQUESTS  # before the first tick: nothing known
    c.tick(1.0, 0, 1)  # nothing finished yet, one node of capacity 1
    assert c.total_requests == CAPACITY_FACTOR and c.window(1)[0] == MIN_CLIENT_REQUESTS
    for second in range(2, 12):
        c.tick(float(second), 10 * (second - 1), 1)
    assert 9.9 < c.rate <= 10 and c.total_requests == max(CAPACITY_FACTOR, int(c.rate * TARGET_WAIT_S)) <= 5
    assert c.window(1)[0] == MIN_CLIENT_REQUESTS
    c.tick(12.0, 110, 0)  # the node gone: work submitted now waits for the next one, 1,024 of it
    assert c.total_requests == MIN_TOTAL_REQUESTS


def test_room_for_a_request_over_the_share_is_reserved_in_the_order_asked_and_taken_by_its_submit():
    """Four clients holding work each have a quarter of SHARE_OF_LIMIT; one asking for more than that gets it
    while the budget has it free, the next ask waits in line until room frees, and the reserved submit is
    admitted whatever its client's share (and nobody else's window counts that room as free)."""
    c = credit(64 * MIB)
    budget = c.budget
    for client in (1, 2, 3, 4):
        budget.charge(client, 1000)
    payload = 8 * MIB
    big = request_cost(payload)  # 16 MiB and 400 bytes: the payload and room for its result
    assert c.window(1)[1] < big  # its share: 12 MiB
    assert ask(c, "r1", 1, big, now=0.0) == big
    assert c.window(2)[1] <= budget.free() and budget.reserved == big
    assert ask(c, "r2", 2, big, now=0.0) == big  # 64 MiB holds two more
    assert ask(c, "r3", 3, big, now=0.0) == big
    assert ask(c, "r4", 4, big, now=0.0) == 0  # no room: it waits in line
    assert ask(c, "r4", 4, big, now=0.1) == 0 and list(c.wanting) == ["r4"]
    assert c.grants(0.2) == []
    assert budget.admit(1, payload) == "" and budget.by_client[1] > 12 * MIB  # the reserved room, over the share
    assert budget.reserved == 2 * big
    assert c.grants(0.3) == []  # client 1's payload holds that room now
    budget.release(1, payload)
    granted = c.grants(0.4)
    assert [(route, reserved) for route, _window, reserved in granted] == [("r4", big)] and not c.wanting


def test_room_not_used_in_time_is_let_go_and_an_ask_no_longer_repeated_is_forgotten():
    c = credit(64 * MIB)
    budget = c.budget
    for client in (1, 2, 3, 4):
        budget.charge(client, 1000)
    big = 40 * MIB
    assert ask(c, "r1", 1, big, now=0.0) == big
    assert ask(c, "r2", 2, big, now=0.0) == 0  # 24 MiB left is not enough beside the first one's
    budget.expire_rooms(100.0)
    assert budget.reserved == 0
    assert c.grants(100.0) == [] and not c.wanting  # r2 stopped asking long ago
    assert ask(c, "r3", 3, big, now=100.0) == big
    c.forget("r3", 3)
    assert budget.reserved == 0


def test_an_ask_no_budget_could_hold_goes_at_once_to_hear_why_and_any_other_gets_room_of_its_own():
    """Even an ask the window would let through gets its room reserved: sent on chance, beside other clients
    told the same free bytes, it was refused busy once it had arrived."""
    c = credit(MIB)
    assert ask(c, "r", 1, 2 * MIB, now=0.0) == 2 * MIB and c.budget.reserved == 0
    assert ask(c, "r", 1, 1000, now=0.0) == 1000 and c.budget.reserved == 1000
    assert ask(credit(None), "r", 1, 10**9, now=0.0) == 10**9


def test_a_reservation_is_not_extended_by_asking_and_one_let_lapse_gets_no_other_for_a_while():
    """Connections asking for the whole budget and never sending held it in turns; now asking again does not
    extend a reservation, one that lapses shuts its client out of reservations for LAPSED_S (or until it
    sends something), and the line goes on to the next."""
    c = credit(64 * MIB)
    budget = c.budget
    whole = 60 * MIB
    assert ask(c, "hog", 1, whole, now=0.0) == whole
    assert ask(c, "fair", 2, 8 * MIB, now=0.0) == 0
    for t in (0.25, 0.5, 1.0, 2.0):
        assert ask(c, "hog", 1, whole, now=t) == whole  # held, not renewed
        assert ask(c, "fair", 2, 8 * MIB, now=t) == 0
    assert ask(c, "fair", 2, 8 * MIB, now=9.9) == 0  # a Client asks every 0.25 s while it waits
    budget.expire_rooms(10.0)  # 1 s and 120 MiB at 64 MiB/s: 2.9 s
    assert budget.reserved == 0 and budget.lapsed_for(1, 10.0)
    assert [(route, size) for route, _w, size in c.grants(10.0)] == [("fair", 8 * MIB)]
    assert ask(c, "hog", 1, whole, now=10.1) == 0 and "hog" not in c.wanting
    assert not budget.lapsed_for(1, 10.0 + LAPSED_S)
    budget.admit(1, 10)  # it sent something after all: slow, not asking for nothing
    assert not budget.lapsed_for(1, 10.2)


def test_room_freed_goes_to_the_first_ask_before_other_clients_windows_grow_into_it():
    """A big ask waiting: other clients' byte windows do not count the room it needs as free, so their
    small requests cannot keep it out for ever."""
    c = credit(64 * MIB)
    budget = c.budget
    budget.charge(1, 1000)
    before = c.window(1)[1]
    big = request_cost(20 * MIB)
    budget.charge(3, 20 * MIB)  # most of the budget is held
    assert ask(c, "big", 2, big, now=0.0) == 0
    assert c.window(1)[1] < before and c.window(1)[1] <= budget.by_client[1] + max(0, budget.free() - big)


def test_clients_answered_lately_share_the_bytes_though_they_hold_nothing_at_that_moment():
    c = credit(64 * MIB)
    share = int(64 * MIB * SHARE_OF_LIMIT)
    for client in (1, 2, 3):
        c.welcome(f"r{client}", client)
        c.answered(f"r{client}", client)
    assert c.window(1)[1] == share // 3
    for now in (1.0, 2.0, 3.0):
        c.tick(now, finished=0, capacity=0)
    assert c.window(1)[1] == share


def test_a_big_request_takes_its_result_room_of_the_window_as_the_balancer_counts_it():
    """The Window counts a request as limits.request_cost does (a payload over LONE_PAYLOAD_BYTES twice), so
    a window the size of one big request's cost lets exactly one out, and one byte less none."""
    big = entry(40 * 1024)
    assert big.cost == request_cost(40 * 1024) == 2 * 40 * 1024 + REQUEST_OVERHEAD_BYTES
    w = Window()
    w.grant(100, big.cost - 1)
    w.wait(1, big)
    assert w.take(0.0) == [] and w.want() == big.cost
    w.grant(100, big.cost)
    assert [rid for rid, _ in w.take(0.0)] == [1] and w.out_bytes == big.cost


def test_clients_saying_hello_together_share_the_byte_budget_and_the_first_ones_hear_of_it_at_once():
    """Four clients saying hello before any holds bytes: each is told a quarter of the share, not the share of a
    client alone, and the connections told earlier get their smaller window back to send in a CREDIT; past
    ARRIVING_TOLD_MAX arrivals the walk over every connection stops (they hear with their next results)."""
    c = credit(64 * MIB)
    share = int(64 * MIB * SHARE_OF_LIMIT)
    told = {}
    for client in (1, 2, 3, 4):
        route = f"r{client}"
        for other, window in c.arrived(route, client, now=0.0):  # as ClientSide does: before its own welcome
            told[other] = window[1]
        told[route] = c.welcome(route, client)[1]
    assert told == {f"r{n}": share // 4 for n in (1, 2, 3, 4)}
    assert c.arrived("r1", 1, now=0.5) == []  # said hello again: nothing new
    for client in range(5, 5 + ARRIVING_TOLD_MAX):
        c.arrived(f"r{client}", client, now=1.0)
        c.welcome(f"r{client}", client)
    assert c.arrived("late", 999, now=1.0) == []
    c.tick(now=3.5, finished=0, capacity=0)  # ARRIVING_S later they count only if they hold bytes
    assert c.window(1)[1] == share


def test_a_connection_that_lets_room_lapse_gets_none_under_another_client_id_and_only_hello_gets_room():
    """A client id is a name anyone may say: one connection asking under a new id every 2 s held the whole
    budget for as long as it went on. The lapse holds for the connection too, and a connection that never
    said CLIENT_HELLO is given no room."""
    c = credit(64 * MIB)
    whole = 60 * MIB
    assert c.want("stranger", 7, whole, now=0.0) == 0 and c.budget.reserved == 0
    assert ask(c, "hog", 1, whole, now=0.0) == whole
    c.lapsed(c.budget.expire_rooms(10.0), 10.0)
    assert ask(c, "hog", 2, whole, now=10.1) == 0 and c.budget.reserved == 0  # same connection, new id
    assert ask(c, "fair", 3, whole, now=10.1) == whole
