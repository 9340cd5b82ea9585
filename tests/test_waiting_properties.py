"""Property tests of the waiting queue: the dispatch order it promises, against a plain model of it,
and the fairness bound between clients of one priority."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.records import Request
from balancer.waiting import LONG_LATER, WaitingQueue

CLIENTS = st.integers(0, 3)
PRIORITIES = st.integers(0, 2)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), CLIENTS, PRIORITIES, st.integers(1, LONG_LATER + 3)),
        st.tuples(st.just("pop"), st.integers(1, 8)),
        st.tuples(st.just("requeue"), st.integers(0, 5)),
        st.tuples(st.just("pause"), CLIENTS),
        st.tuples(st.just("resume"), CLIENTS),
    ),
    max_size=60,
)


class Model:
    """The order the queue promises, written the plain way (lists scanned, nothing clever)."""

    def __init__(self) -> None:
        self.retry: dict[int, list[tuple[int, Request]]] = {}
        self.turns: dict[int, list[int]] = {}  # priority -> clients in turn order
        self.fresh: dict[tuple[int, int], list[Request]] = {}  # (priority, client) -> its requests
        self.paused: set[int] = set()
        self.aside: dict[int, dict[int, list[Request]]] = {}
        self.aside_retry: dict[int, list[tuple[int, Request]]] = {}

    def push(self, req: Request) -> None:
        key = (req.priority, req.client_id)
        if key in self.fresh:
            self.fresh[key].append(req)
        elif req.client_id in self.paused:
            self.aside.setdefault(req.client_id, {}).setdefault(req.priority, []).append(req)
        else:
            self.turns.setdefault(req.priority, []).append(req.client_id)
            self.fresh[key] = [req]

    def push_retry(self, req: Request, arrival: int) -> None:
        self.retry.setdefault(req.priority, []).append((arrival, req))

    def pop(self) -> Request | None:
        while True:
            levels = [p for p in set(self.retry) | set(self.turns) if self.retry.get(p) or self.turns.get(p)]
            if not levels:
                return None
            p = min(levels)
            if self.retry.get(p):
                entry = min(self.retry[p], key=lambda e: e[0])
                self.retry[p].remove(entry)
                if entry[1].client_id in self.paused:
                    self.aside_retry.setdefault(entry[1].client_id, []).append(entry)
                    continue
                return entry[1]
            client = self.turns[p].pop(0)
            reqs = self.fresh.pop((p, client))
            if client in self.paused:
                self.aside.setdefault(client, {})[p] = reqs
                continue
            if len(reqs) > 1:
                self.fresh[(p, client)] = reqs[1:]
                self.turns[p].append(client)
            return reqs[0]

    def resume(self, client: int) -> None:
        self.paused.discard(client)
        for p, reqs in self.aside.pop(client, {}).items():
            self.turns.setdefault(p, []).insert(0, client)
            self.fresh[(p, client)] = reqs
        for arrival, req in self.aside_retry.pop(client, []):
            self.push_retry(req, arrival)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_the_queue_dispatches_in_the_order_of_its_model(ops):
    """Strict priority, re-queued first by arrival, clients in turns, paused ones set aside and first again."""
    queue, model = WaitingQueue(), Model()
    arrivals: dict[int, Request] = {}
    popped: list[Request] = []
    for op in ops:
        if op[0] == "push":
            for _ in range(op[3]):
                req = Request(op[1], len(arrivals), op[2], None, b"r", b"")
                arrivals[req.request_id] = req
                queue.push_fresh(req)
                model.push(req)
        elif op[0] == "pop":
            for _ in range(op[1]):
                got = queue.pop()
                assert got is model.pop()
                if got is not None:
                    popped.append(got)
        elif op[0] == "requeue" and popped:
            req = popped.pop(op[1] % len(popped))
            queue.push_retry(req, req.request_id)
            model.push_retry(req, req.request_id)
        elif op[0] == "pause":
            queue.pause(op[1])
            model.paused.add(op[1])
        elif op[0] == "resume":
            queue.resume(op[1])
            model.resume(op[1])
        waiting = Counter(id(r) for r in queue)
        assert all(n == 1 for n in waiting.values())
        assert len(waiting) == queue.count + queue.parked
    while (got := queue.pop()) is not None:
        assert got is model.pop()
    assert model.pop() is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(CLIENTS, st.integers(0, 20)), min_size=1, max_size=12), st.integers(0, 3))
def test_a_backlog_delays_another_clients_request_by_at_most_one_per_client(backlogs, newcomer):
    """Once a request is its client's oldest, each other client gets at most one request of its priority first."""
    queue = WaitingQueue()
    rid = 0
    for client, count in backlogs:
        for _ in range(count):
            queue.push_fresh(Request(client, rid, 5, None, b"r", b""))
            rid += 1
    mine = Request(10 + newcomer, rid, 5, None, b"r", b"")
    queue.push_fresh(mine)
    ahead: Counter = Counter()
    while (req := queue.pop()) is not mine:
        ahead[req.client_id] += 1
    assert all(n <= 1 for n in ahead.values()), ahead
