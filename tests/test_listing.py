"""The arrival order behind `zlb requests`: paging by key, exactly once while requests come and go."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.index import CHUNK, Arrivals
from balancer.records import Request
from balancer.scheduler import Scheduler


def request(rid: int, client: int = 1) -> Request:
    return Request(client, rid, 5, None, b"r", b"")


def page_all(arrivals: Arrivals, limit: int, scan: int) -> list[int]:
    out, after = [], -1
    while True:
        rows, after = arrivals.page(after, limit, scan)
        out += [r.request_id for r in rows]
        if after is None:
            return out


def test_pages_follow_arrival_order_and_end_with_no_next():
    """Pages of three over ten requests: every id once, in order, and the last page says nothing follows."""
    arrivals = Arrivals()
    for rid in range(10):
        arrivals.add(request(rid))
    assert page_all(arrivals, 3, 1000) == list(range(10))
    rows, after = arrivals.page(-1, 10, 1000)
    assert [r.request_id for r in rows] == list(range(10)) and after is None


def test_a_page_reads_at_most_its_scan_bound_wherever_it_starts():
    """A filtered page stops after `scan` requests, with a next key, at the start and deep in the order alike."""
    arrivals = Arrivals()
    for rid in range(50_000):
        arrivals.add(request(rid))
    for after in (-1, 45_000):
        reads: list[Request] = []

        def count(req: Request, reads: list[Request] = reads) -> bool:
            reads.append(req)
            return False

        rows, nxt = arrivals.page(after, 10, 1_000, keep=count)
        assert rows == [] and len(reads) == 1_000 and nxt == after + 1_000


def test_forgotten_requests_leave_the_listing_and_their_chunks_are_reclaimed():
    """Forgetting all but one request drops every chunk but that one's and the open one."""
    arrivals = Arrivals()
    reqs = [request(rid) for rid in range(10 * CHUNK)]
    for req in reqs:
        arrivals.add(req)
    for req in reqs[: 9 * CHUNK] + reqs[9 * CHUNK + 1 :]:
        arrivals.forget(req)
    assert [r.request_id for r in arrivals] == [9 * CHUNK]
    assert len(arrivals._chunks) == 2  # the one holding the request left, and the open one
    assert page_all(arrivals, 5, 100) == [9 * CHUNK]


def test_a_number_names_the_request_in_the_order():
    """A request's arrival number is its place, also after others around it were forgotten."""
    arrivals = Arrivals()
    reqs = [request(rid) for rid in range(3 * CHUNK)]
    for req in reqs:
        arrivals.add(req)
    for req in reqs[CHUNK : CHUNK + 200]:
        arrivals.forget(req)
    assert [arrivals.number(r) for r in reqs[CHUNK + 200 : CHUNK + 203]] == [CHUNK + 200, CHUNK + 201, CHUNK + 202]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3 * CHUNK),
    st.integers(1, 40),
    st.integers(1, 300),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=30),
    st.integers(0, 2**32),
)
def test_paging_while_requests_come_and_go_lists_each_once(start, limit, scan, changes, seed):
    """Requests there from the first page to the last are listed exactly once; none twice, none forgotten."""
    rnd = random.Random(seed)
    arrivals = Arrivals()
    live: dict[int, Request] = {}
    next_id = 0

    def add(n: int) -> None:
        nonlocal next_id
        for _ in range(n):
            req = live[next_id] = request(next_id)
            arrivals.add(req)
            next_id += 1

    def forget(n: int) -> None:
        for rid in rnd.sample(sorted(live), min(n, len(live))):
            arrivals.forget(live.pop(rid))

    add(start)
    throughout = set(live)
    seen: list[int] = []
    after: int | None = -1
    step = 0
    while after is not None:
        rows, after = arrivals.page(after, limit, scan)
        assert len(rows) <= limit
        assert all(r.request_id in live for r in rows)  # never a forgotten one
        seen += [r.request_id for r in rows]
        if step < len(changes):
            added, dropped = changes[step]
            forget(dropped)
            throughout &= set(live)
            add(added)
        step += 1
    assert seen == sorted(set(seen))  # ascending: none twice
    assert throughout <= set(seen)


def test_the_scheduler_forgets_what_it_no_longer_keeps():
    """Finished requests trimmed from the kept ones leave the listing too."""
    sched = Scheduler(keep_finished=2)
    sched.hello(b"n", 0, 1, 1, "h", 0.0)
    for rid in range(5):
        sched.submit(1, rid, 5, b"c", b"")
        ((node, ticket, _req),) = sched.dispatch()
        sched.complete(node.route, ticket, True, b"ok", 0.1)
    sched.submit(1, 9, 5, b"c", b"")
    assert [r.request_id for r in sched.requests()] == [3, 4, 9]
    rows, after = sched.requests_page(-1, 10, 100, status="processed")
    assert [r.request_id for r in rows] == [3, 4] and after is None
