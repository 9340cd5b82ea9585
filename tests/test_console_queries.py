"""The web console's control queries: a filtered page that never overflows, a request id found under any
client, and one request's payload or result as a bounded preview."""

from __future__ import annotations

from typing import Any

import zmq

from balancer import control
from balancer.eventlog import EventLog
from balancer.scheduler import Scheduler
from wire.statuses import FAILURE_STATUSES


def state_with(waiting: int) -> control.BalancerState:
    """`waiting` requests from clients 0-2 at priorities 0 and 1; node 0 (capacity 2) runs the first two."""
    sched = Scheduler()
    for rid in range(waiting):
        sched.submit(rid % 3, rid, rid % 2, b"c", b'{"n": %d}' % rid)
    return control.BalancerState(sched, EventLog(None), {}, started_mono=0.0, started_wall=1_700_000_000.5)


def ask(state: control.BalancerState, cmd: str, **args: Any) -> Any:
    reply = control.handle(state, {"cmd": cmd, **args}, 0.0)
    assert reply["ok"], reply
    return reply["result"]


def test_a_page_filtered_by_priority_and_client_holds_at_most_limit_rows_and_goes_on_exactly():
    """Following `next` lists every match once, in arrival order, and no page holds more than its limit."""
    state = state_with(3_000)
    seen, key, pages = [], "", 0
    while key is not None:
        page = ask(state, "find_requests", after=key, limit=40, priority=1, client=2)
        assert len(page["requests"]) <= 40
        seen += [row["request_id"] for row in page["requests"]]
        key, pages = page["next"], pages + 1
    assert seen == [rid for rid in range(3_000) if rid % 2 == 1 and rid % 3 == 2]
    assert pages >= len(seen) // 40


def test_statuses_together_and_an_unknown_one_refused():
    """Several statuses form one list (the failures view); a status no request can have is an error."""
    state = state_with(6)
    sched = state.scheduler
    sched.hello(b"n", 0, 2, 1, "h", 0.0)
    dispatched = sched.dispatch()
    _node, ticket, req = dispatched[0]
    sched.complete(b"n", ticket, False, b"boom", 0.0)
    rows = ask(state, "find_requests", after="", statuses=list(FAILURE_STATUSES))["requests"]
    assert [(r["request_id"], r["status"]) for r in rows] == [(req.request_id, "failed")]
    both = ask(state, "find_requests", after="", statuses=["failed", "assigned"])["requests"]
    assert {r["status"] for r in both} == {"failed", "assigned"}
    refused = control.handle(state, {"cmd": "find_requests", "statuses": ["lost"]}, 0.0)
    assert not refused["ok"] and "'statuses' must be a list of" in refused["error"]


def test_a_request_id_is_found_under_every_client_that_used_it():
    """Search by id without a client: each client's request with that id."""
    state = state_with(3)
    state.scheduler.submit(9, 1, 5, b"c", b"other")
    rows = ask(state, "find_requests", request_id=1)["requests"]
    assert sorted((r["client_id"], r["request_id"]) for r in rows) == [(1, 1), (9, 1)]
    assert ask(state, "find_requests", request_id=1, client=9)["requests"][0]["client_id"] == 9
    assert ask(state, "find_requests", request_id=77)["requests"] == []


def test_detail_previews_the_payload_while_waiting_and_the_result_once_finished_within_the_cap():
    """A waiting request shows its payload; a finished one its result (the payload's digest stays); a big
    body is cut at the preview cap, a binary one shown as hex."""
    state = state_with(1)
    sched = state.scheduler
    waiting = ask(state, "request_detail", client_id=0, request_id=0)
    assert waiting["payload"] == {"bytes": 8, "shown": 8, "encoding": "utf-8", "text": "{\"n\": 0}"}
    assert waiting["result"] is None
    sched.hello(b"n", 0, 1, 1, "h", 0.0)
    ((_node, ticket, _req),) = sched.dispatch()
    sched.complete(b"n", ticket, True, zmq.Frame(b"r" * 50_000), 0.0)  # a big result arrives as a frame
    done = ask(state, "request_detail", client_id=0, request_id=0, preview=100)
    assert done["status"] == "processed" and done["payload"] is None and done["result_kept"]
    assert done["result"] == {"bytes": 50_000, "shown": 100, "encoding": "utf-8", "text": "r" * 100}
    assert len(done["payload_digest"]) == 16
    sched.submit(4, 1, 5, b"c", bytes(range(256)))
    binary = ask(state, "request_detail", client_id=4, request_id=1, preview=4)["payload"]
    assert binary == {"bytes": 256, "shown": 4, "encoding": "hex", "text": "00 01 02 03"}
    capped = ask(state, "request_detail", client_id=4, request_id=1, preview=10**9)["payload"]
    assert capped["shown"] == 256
    missing = control.handle(state, {"cmd": "request_detail", "client_id": 4, "request_id": 99}, 0.0)
    assert missing == {"ok": False, "error": "Request 99 from Client 4 not found"}
