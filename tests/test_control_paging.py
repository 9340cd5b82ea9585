"""The control socket's share of the loop: `requests` paged by key, and answers budgeted per pass."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import control, control_side
from balancer.control_side import PER_PEER_PER_PASS, ControlSide
from balancer.eventlog import EventLog
from balancer.incidents import Incidents
from balancer.scheduler import Scheduler
from wire import protocol as p


def state_with(waiting: int) -> control.BalancerState:
    sched = Scheduler()
    for rid in range(waiting):
        sched.submit(rid % 3, rid, rid % 2, b"c", b"x")
    return control.BalancerState(sched, EventLog(None), {}, started_mono=0.0, started_wall=1_700_000_000.5)


def ask(state: control.BalancerState, **args) -> dict:
    return control.handle(state, {"cmd": "requests", **args}, 0.0)


def test_pages_by_key_list_everything_once_in_arrival_order():
    """Following `next` from after='' lists each request once, in arrival order, and ends with next None."""
    state = state_with(2_500)
    ids, key = [], ""
    while key is not None:
        reply = ask(state, after=key, limit=1000)
        assert reply["ok"], reply
        ids += [row["request_id"] for row in reply["result"]["requests"]]
        key = reply["result"]["next"]
    assert ids == list(range(2_500))


def test_without_after_the_reply_is_the_seed_list():
    """Old callers get the list itself: the first page."""
    reply = ask(state_with(5), limit=3)
    assert [row["request_id"] for row in reply["result"]] == [0, 1, 2]


def test_a_filtered_page_stops_at_its_scan_bound_and_says_where_to_go_on():
    """A page reads at most SCAN_PER_PAGE requests: none matching there means an empty page with a next."""
    state = state_with(control.SCAN_PER_PAGE + 10)
    state.scheduler.hello(b"n", 0, 1, 1, "h", 0.0)
    for rid in range(control.SCAN_PER_PAGE + 10, control.SCAN_PER_PAGE + 12):
        state.scheduler.submit(7, rid, -1, b"c", b"x")  # most urgent: these two are dispatched
    state.scheduler.dispatch()
    first = ask(state, after="", status="assigned")["result"]
    assert first["requests"] == [] and first["next"] is not None
    second = ask(state, after=first["next"], status="assigned")["result"]
    assert [row["request_id"] for row in second["requests"]] == [control.SCAN_PER_PAGE + 10]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"offset": control.MAX_OFFSET + 1}, "page with 'after'"),
        ({"after": "zz"}, "must be a 'next' key"),
        ({"after": 5}, "must be a 'next' key"),
        ({"after": "1-x"}, "earlier run of the balancer"),
    ],
)
def test_bad_paging_arguments_get_an_error_that_says_what_to_do(args, words):
    """An offset beyond the bound, or a key that is not one, is answered with a clear error."""
    reply = ask(state_with(3), **args)
    assert not reply["ok"] and words in reply["error"]


def test_a_key_from_another_run_is_refused():
    """Arrival numbers restart with the balancer: a key names its run."""
    key = ask(state_with(3), after="", limit=1)["result"]["next"]
    other = state_with(3)
    other.started_wall += 1
    assert "earlier run" in ask(other, after=key)["error"]


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Socket, zmq.Socket, zmq.Socket]]:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://control-test")
    peers = [ctx.socket(zmq.DEALER) for _ in range(2)]
    for peer in peers:
        peer.connect("inproc://control-test")
    try:
        yield router, *peers
    finally:
        for sock in (router, *peers):
            sock.close(linger=0)
        ctx.term()


def replies(sock: zmq.Socket) -> list[dict]:
    out = []
    while sock.poll(0):
        out.append(p.decode_map(sock.recv()))
    return out


def test_one_connection_gets_a_share_of_each_pass_and_the_rest_later_in_order(sockets, monkeypatch):
    """40 pipelined queries on one connection: 4 answers a pass, another connection's answered at once, all in order."""
    monkeypatch.setattr(control_side, "PASS_BUDGET_S", 60.0)  # counts only: no pass ends on the clock here
    router, burst, lone = sockets
    state = state_with(50)
    side = ControlSide(router, state, Incidents(state.scheduler.outbox), False, lambda: None)
    for i in range(40):
        burst.send(p.encode_map({"cmd": "requests", "after": "", "limit": i + 1}))
    lone.send(p.encode_map({"cmd": "ping"}))
    side.drain(0.0, 256)
    first = replies(burst)
    assert len(first) == PER_PEER_PER_PASS and side.waiting
    assert [r["result"]["pong"] for r in replies(lone)] == [True]
    got = first
    passes = 1
    while side.waiting:
        side.drain(0.0, 256)
        this_pass = replies(burst)
        assert len(this_pass) <= PER_PEER_PER_PASS
        got += this_pass
        passes += 1
    assert [len(r["result"]["requests"]) for r in got] == list(range(1, 41))
    assert passes == 40 // PER_PEER_PER_PASS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5), max_size=30), st.integers(0, 120), st.integers(0, 40))
def test_a_log_page_skips_whole_batches_and_returns_what_slicing_would(batches, offset, limit):
    """EventLog.page(offset, limit) is the kept events from offset, limit of them, as a slice would give."""
    log = EventLog(None)
    for n, size in enumerate(batches):
        log.add(float(n), [("request.added", 1, n * 10 + i, 5) for i in range(size)])
    assert log.page(offset, limit) == list(islice(log, offset, offset + limit))


def test_a_snapshot_returns_at_most_a_list_replys_worth_of_log_events():
    """An outsider asked for a million log events in one snapshot and held the loop 300-530 ms."""
    state = state_with(0)
    batch = [("system.configured", n, 0) for n in range(control.MAX_LIST_REPLY + 500)]
    state.eventlog.add(1_700_000_000.0, batch)
    reply = control.handle(state, {"cmd": "snapshot", "logs": 1_000_000}, 0.0)
    assert reply["ok"] and len(reply["result"]["logs"]) == control.MAX_LIST_REPLY
