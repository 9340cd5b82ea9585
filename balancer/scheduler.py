"""The balancer's brain: a pure model of requests and nodes.

No sockets, no clock, no logging. Every method takes `now` (monotonic seconds)
where time matters and records what should happen in three outboxes that the
socket loop empties after each batch:

- `dispatch()` returns the assignments to send to nodes,
- `replies` holds finished requests whose result must go to their client,
- `events` holds event tuples `(kind, *args)` to publish and log,
- `journal`, when it is a list (the balancer runs with --journal), collects
  `(ACCEPTED, ...)` and `(FINISHED, ...)` records for the journal writer.

Waiting requests live in per-priority buckets (a deque of fresh arrivals and a
seq-ordered heap of re-queued ones) under a heap of priorities, so submit and
dispatch are O(log P) for P distinct priorities. Eligible nodes sit in a heap
keyed by (load ratio, handled, last assignment) with lazy invalidation, so the
least-loaded choice costs O(log N), not O(N), for N nodes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wire import events as ev
from wire.protocol import ASSIGNED, FAILED, PENDING, PROCESSED

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_KEEP_FINISHED = 10_000
# Kept results are also bounded in bytes: 10,000 results of 256 KiB would be 2.5 GiB.
DEFAULT_KEEP_FINISHED_BYTES = 64 * 1024 * 1024

# Journal record kinds (the first element of each record tuple).
ACCEPTED = 1  # (ACCEPTED, client_id, request_id, priority, route, payload)
FINISHED = 2  # (FINISHED, client_id, request_id, priority, status, server_id, attempts, result)


class NodeState(str, Enum):
    """Where a node is in its life; see docs/PROTOCOL.md for the transitions."""

    ACTIVE = "active"
    DRAINING = "draining"
    DOWN = "down"
    DEAD = "dead"


@dataclass(slots=True, eq=False)
class Request:
    """One client request. `body` is the opaque payload, then the result."""

    client_id: int
    request_id: int
    priority: int
    # Order of first dispatch; None while a request has never left the queue. Set
    # lazily because a queued request keeps its order by its place in the deque, and an
    # int per waiting request is 32 bytes of the ~300 that a million queued cost.
    seq: int | None
    route: Any  # the client's routing identity, opaque here
    body: Any
    status: str = PENDING
    server_id: int | None = None
    attempts: int = 0


@dataclass(slots=True, eq=False)
class Node:
    """A server node as the balancer sees it."""

    node_id: int
    route: Any  # the node's routing identity, opaque here
    capacity: int
    pid: int
    host: str
    expires_at: float
    last_seen: float
    state: NodeState = NodeState.ACTIVE
    in_flight: dict[int, Request] = field(default_factory=dict)
    handled: int = 0
    reported_in_flight: int = 0
    reported_handled: int = 0
    last_assigned: int = 0
    heap_seq: int = -1  # the push that is this node's live entry in the node heap

    @property
    def active(self) -> bool:
        return self.state is NodeState.ACTIVE


@dataclass(slots=True)
class _Bucket:
    """Waiting requests of one priority: re-queued ones first, by arrival."""

    fresh: deque = field(default_factory=deque)
    retry: list = field(default_factory=list)  # heap of (seq, Request)
    in_heap: bool = False

    def __len__(self) -> int:
        return len(self.fresh) + len(self.retry)


def _listing_order(req: Request) -> tuple[bool, int]:
    return (req.seq is None, req.seq or 0)


def _size(body: Any) -> int:
    """Bytes of a kept result (bytes or a zmq frame); 0 when there is none."""
    return len(body) if body is not None else 0


class _ClientRequests(dict):
    """One client's remembered requests by request id, plus the client id they share.

    Every decoded header carries a fresh int for the client id (only -5..256
    are cached by Python); pointing each Request at this one copy saves 32
    bytes per waiting request, a tenth of the memory of a queued request.
    """

    __slots__ = ("client_id",)

    def __init__(self, client_id: int) -> None:
        super().__init__()
        self.client_id = client_id


class Submitted(Enum):
    """What `submit` did with a request."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"  # already waiting or running; the route was refreshed
    FINISHED = "finished"  # already finished; its result was queued for the client again
    REJECTED = "rejected"


class Scheduler:
    """Priority queue, node table and least-loaded dispatch."""

    def __init__(
        self,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
        max_queue: int | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        keep_finished: int = DEFAULT_KEEP_FINISHED,
        keep_finished_bytes: int = DEFAULT_KEEP_FINISHED_BYTES,
        first_ticket: int = 0,
        journal: bool = False,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.keep_finished = keep_finished
        self.keep_finished_bytes = keep_finished_bytes
        self.nodes: dict[int, Node] = {}
        self.routes: dict[Any, Node] = {}
        self.events: list[tuple[Any, ...]] = []
        self.replies: list[Request] = []
        self.journal: list[tuple[Any, ...]] | None = [] if journal else None
        self.counters: dict[str, int] = dict.fromkeys(
            ("submitted", "processed", "failed", "requeued", "rejected", "duplicates", "late_results"), 0
        )
        self._by_client: dict[int, _ClientRequests] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._priorities: list[int] = []
        self._waiting = 0
        self._finished: deque[Request] = deque()
        self._finished_bytes = 0
        self._node_heap: list[tuple[float, int, int, int, Node]] = []
        self._seq = 0
        # Tickets must never repeat across balancer restarts (see protocol), so they start where told.
        self._ticket = first_ticket
        self._push = 0
        self._assigned = 0

    # ---- requests -------------------------------------------------------

    @property
    def remembered_finished(self) -> int:
        """How many finished requests are kept for queries and resubmissions."""
        return len(self._finished)

    @property
    def waiting(self) -> int:
        """How many requests wait for a node."""
        return self._waiting

    def submit(self, client_id: int, request_id: int, priority: int, route: Any, body: Any) -> Submitted:
        """Queue a client's request, or recognise it as one already known."""
        known = self._client_requests(client_id)
        client_id = known.client_id
        req = known.get(request_id)
        if req is not None:
            return self._resubmitted(req, route)
        if self.max_queue is not None and self._waiting >= self.max_queue:
            self.counters["rejected"] += 1
            self.events.append((ev.REQUEST_REJECTED, client_id, request_id, f"queue full ({self.max_queue} waiting)"))
            return Submitted.REJECTED
        req = Request(client_id, request_id, priority, None, route, body)
        known[request_id] = req
        self._enqueue_fresh(req)
        self.counters["submitted"] += 1
        self.events.append((ev.REQUEST_ADDED, client_id, request_id, priority))
        if self.journal is not None:
            self.journal.append((ACCEPTED, client_id, request_id, priority, route, body))
        return Submitted.QUEUED

    def _client_requests(self, client_id: int) -> _ClientRequests:
        known = self._by_client.get(client_id)
        if known is None:
            known = self._by_client[client_id] = _ClientRequests(client_id)
        return known

    def _resubmitted(self, req: Request, route: Any) -> Submitted:
        self.counters["duplicates"] += 1
        req.route = route  # answer wherever the client is now
        if req.status in (PROCESSED, FAILED):
            self.replies.append(req)
            return Submitted.FINISHED
        return Submitted.DUPLICATE

    def _enqueue_fresh(self, req: Request) -> None:
        bucket = self._bucket(req.priority)
        bucket.fresh.append(req)
        self._waiting += 1

    def _requeue(self, req: Request, server_id: int) -> None:
        """Put a lost request back ahead of later arrivals of its priority."""
        if req.attempts >= self.max_attempts:
            reason = f"gave up after {req.attempts} attempts; the last on Server {server_id}"
            self._finish(req, FAILED, reason.encode())
            self.events.append((ev.REQUEST_FAILED, req.client_id, req.request_id, server_id, reason))
            return
        req.status = PENDING
        req.server_id = None
        heapq.heappush(self._bucket(req.priority).retry, (req.seq, req))
        self._waiting += 1
        self.counters["requeued"] += 1
        self.events.append((ev.REQUEST_REQUEUED, req.client_id, req.request_id, req.priority, req.attempts, server_id))

    def _bucket(self, priority: int) -> _Bucket:
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._buckets[priority] = _Bucket()
        if not bucket.in_heap:
            bucket.in_heap = True
            heapq.heappush(self._priorities, priority)
        return bucket

    def _pop_waiting(self) -> Request:
        priorities = self._priorities
        while True:
            bucket = self._buckets[priorities[0]]
            if bucket.retry:
                req = heapq.heappop(bucket.retry)[1]
            elif bucket.fresh:
                req = bucket.fresh.popleft()
            else:
                bucket.in_heap = False
                heapq.heappop(priorities)
                continue
            self._waiting -= 1
            return req

    def _finish(self, req: Request, status: str, result: Any) -> None:
        req.status = status
        req.body = result
        self.counters[status] += 1
        self.replies.append(req)
        if self.journal is not None:
            self.journal.append(
                (FINISHED, req.client_id, req.request_id, req.priority, status, req.server_id, req.attempts, result)
            )
        self._remember_finished(req)

    def _remember_finished(self, req: Request) -> None:
        """Keep a finished request (and its result); forget the oldest beyond either bound."""
        finished = self._finished
        finished.append(req)
        self._finished_bytes += _size(req.body)
        while finished and (len(finished) > self.keep_finished or self._finished_bytes > self.keep_finished_bytes):
            old = finished.popleft()
            self._finished_bytes -= _size(old.body)
            known = self._by_client.get(old.client_id)
            if known is not None and known.get(old.request_id) is old:
                del known[old.request_id]
                if not known:
                    del self._by_client[old.client_id]

    # ---- restart from a journal ------------------------------------------

    def restore_pending(self, client_id: int, request_id: int, priority: int, route: Any, body: Any) -> None:
        """Queue a request that a previous balancer accepted and never finished."""
        req = Request(client_id, request_id, priority, None, route, body)
        self._client_requests(client_id)[request_id] = req
        self._enqueue_fresh(req)

    def restore_finished(
        self, client_id: int, request_id: int, priority: int, status: str, server_id: Any, attempts: int, result: Any
    ) -> None:
        """Remember a request that a previous balancer finished, to answer resubmissions."""
        self._seq += 1
        req = Request(client_id, request_id, priority, self._seq, None, result, status, server_id, attempts)
        self._client_requests(client_id)[request_id] = req
        self._remember_finished(req)

    def get(self, client_id: int, request_id: int) -> Request | None:
        """The request with these ids, if it is still remembered."""
        return self._by_client.get(client_id, {}).get(request_id)

    def requests(self, status: str | None = None, client_id: int | None = None) -> Iterator[Request]:
        """Remembered requests, optionally filtered: in dispatch order, never-dispatched ones last."""
        if client_id is not None:
            pools = [self._by_client.get(client_id, {})]
        else:
            pools = list(self._by_client.values())
        found = [r for pool in pools for r in pool.values() if status is None or r.status == status]
        found.sort(key=_listing_order)
        return iter(found)

    def waiting_by_priority(self) -> dict[int, int]:
        """Queue depth per priority, most urgent first."""
        return {p: len(b) for p, b in sorted(self._buckets.items()) if len(b)}

    # ---- dispatch -------------------------------------------------------

    def dispatch(self) -> list[tuple[Node, int, Request]]:
        """Pair waiting requests with the least-loaded free nodes."""
        out: list[tuple[Node, int, Request]] = []
        append = out.append
        events = self.events
        while self._waiting:
            node = self._pop_free_node()
            if node is None:
                break
            req = self._pop_waiting()
            if req.seq is None:
                self._seq += 1
                req.seq = self._seq
            self._ticket += 1
            self._assigned += 1
            node.in_flight[self._ticket] = req
            node.last_assigned = self._assigned
            req.status = ASSIGNED
            req.server_id = node.node_id
            req.attempts += 1
            if len(node.in_flight) < node.capacity:
                self._push_node(node)
            append((node, self._ticket, req))
            events.append((ev.REQUEST_ASSIGNED, req.client_id, req.request_id, node.node_id, req.attempts))
        return out

    def _push_node(self, node: Node) -> None:
        self._push += 1
        node.heap_seq = self._push
        key = (len(node.in_flight) / node.capacity, node.handled, node.last_assigned, self._push, node)
        heapq.heappush(self._node_heap, key)
        if len(self._node_heap) > 4 * len(self.nodes) + 64:
            self._rebuild_node_heap()

    def _rebuild_node_heap(self) -> None:
        self._node_heap = [e for e in self._node_heap if e[4].heap_seq == e[3]]
        heapq.heapify(self._node_heap)

    def _pop_free_node(self) -> Node | None:
        heap = self._node_heap
        while heap:
            entry = heapq.heappop(heap)
            node = entry[4]
            if node.heap_seq == entry[3]:
                node.heap_seq = -1
                return node
        return None

    def _refresh_node(self, node: Node) -> None:
        """Re-rank a node after its load or state changed."""
        if node.state is NodeState.ACTIVE and len(node.in_flight) < node.capacity:
            self._push_node(node)
        else:
            node.heap_seq = -1

    # ---- results --------------------------------------------------------

    def complete(self, route: Any, ticket: int, ok: bool, result: Any, now: float) -> Request | None:
        """Record a node's result; None when it is late or unknown (dropped)."""
        node = self.routes.get(route)
        req = node.in_flight.pop(ticket, None) if node is not None else None
        if req is None:
            self.counters["late_results"] += 1
            self.events.append((ev.REQUEST_LATE_RESULT, node.node_id if node else None, ticket))
            return None
        node.expires_at = now + self.heartbeat_s * self.liveness
        node.last_seen = now
        node.handled += 1
        if ok:
            self._finish(req, PROCESSED, result)
            self.events.append((ev.REQUEST_PROCESSED, req.client_id, req.request_id, node.node_id))
        else:
            reason = bytes(result).decode("utf-8", "replace")
            self._finish(req, FAILED, result)
            self.events.append((ev.REQUEST_FAILED, req.client_id, req.request_id, node.node_id, reason))
        self._refresh_node(node)
        if node.state is NodeState.DRAINING and not node.in_flight:
            self.events.append((ev.NODE_DRAINED, node.node_id))
        return req

    # ---- nodes ----------------------------------------------------------

    def hello(self, route: Any, node_id: int | None, capacity: int, pid: int, host: str, now: float) -> Node:
        """Register a node (new, restarted or reconnecting) and make it active."""
        known = self.routes.get(route)
        if known is not None and node_id in (None, known.node_id):
            self._touch(known, now)  # the same process saying hello again: keep its work
            return known
        if known is not None:
            self._drop_node(known, ev.NODE_LEFT)
        if node_id is None:
            node_id = self._free_id()
        old = self.nodes.get(node_id)
        if old is not None and old.state is not NodeState.DEAD:
            # A restarted process took over this id before the old one was declared dead.
            self._drop_node(old, ev.NODE_LEFT)
        node = Node(node_id, route, max(1, capacity), pid, host, now + self.heartbeat_s * self.liveness, now)
        self.nodes[node_id] = node
        self.routes[route] = node
        self.events.append((ev.NODE_JOINED, node_id, node.capacity, pid, host))
        self._refresh_node(node)
        return node

    def _free_id(self) -> int:
        node_id = 0
        while node_id in self.nodes and self.nodes[node_id].state is not NodeState.DEAD:
            node_id += 1
        return node_id

    def _drop_node(self, node: Node, kind: str, *details: Any) -> None:
        """Take a node out of service for good and re-queue its work."""
        lost = self._take_work(node)
        node.state = NodeState.DEAD
        node.heap_seq = -1
        self.routes.pop(node.route, None)
        self.events.append((kind, node.node_id, *details, len(lost)))
        self._requeue_many(lost, node.node_id)

    @staticmethod
    def _take_work(node: Node) -> list[Request]:
        # Tickets grow in dispatch order, so this keeps the lost requests' order.
        lost = [req for _ticket, req in sorted(node.in_flight.items())]
        node.in_flight.clear()
        return lost

    def _requeue_many(self, lost: list[Request], server_id: int) -> None:
        for req in lost:
            self._requeue(req, server_id)

    def _touch(self, node: Node, now: float) -> None:
        node.expires_at = now + self.heartbeat_s * self.liveness
        node.last_seen = now

    def seen(self, route: Any, now: float) -> Node | None:
        """Any message from a node is a sign of life; None if it is unknown."""
        node = self.routes.get(route)
        if node is not None:
            node.expires_at = now + self.heartbeat_s * self.liveness
            node.last_seen = now
        return node

    def heartbeat(self, route: Any, in_flight: int, handled: int, now: float) -> Node | None:
        """A node's load report; None if the node is unknown (it must say hello)."""
        node = self.seen(route, now)
        if node is not None:
            node.reported_in_flight = in_flight
            node.reported_handled = handled
        return node

    def bye(self, route: Any) -> None:
        """A node leaves on purpose."""
        node = self.routes.get(route)
        if node is not None:
            self._drop_node(node, ev.NODE_LEFT)

    def expire(self, now: float) -> list[Node]:
        """Declare nodes silent past their deadline dead; re-queue their work."""
        dead = [n for n in self.routes.values() if n.expires_at < now]
        for node in dead:
            self._drop_node(node, ev.NODE_DEAD, now - node.last_seen)
        return dead

    # ---- admin ----------------------------------------------------------

    def mark_down(self, node_id: int) -> Node:
        """Stop using a node and re-queue its in-flight work."""
        node = self._live_node(node_id)
        node.state = NodeState.DOWN
        lost = self._take_work(node)
        self._refresh_node(node)
        self.events.append((ev.NODE_DOWN, node_id, len(lost)))
        self._requeue_many(lost, node_id)
        return node

    def mark_up(self, node_id: int) -> Node:
        """Put a down or draining node back in service."""
        node = self._live_node(node_id)
        node.state = NodeState.ACTIVE
        self._refresh_node(node)
        self.events.append((ev.NODE_UP, node_id))
        return node

    def drain(self, node_id: int) -> Node:
        """Send a node no new work; its in-flight work finishes."""
        node = self._live_node(node_id)
        node.state = NodeState.DRAINING
        self._refresh_node(node)
        self.events.append((ev.NODE_DRAINING, node_id, len(node.in_flight)))
        if not node.in_flight:
            self.events.append((ev.NODE_DRAINED, node_id))
        return node

    def _live_node(self, node_id: int) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise KeyError(f"Server {node_id} not found")
        if node.state is NodeState.DEAD:
            raise KeyError(f"Server {node_id} is dead; start it again with zlb server --id {node_id}")
        return node

    # ---- queries --------------------------------------------------------

    def in_flight(self) -> int:
        """Requests currently running on nodes."""
        return sum(len(n.in_flight) for n in self.routes.values())
