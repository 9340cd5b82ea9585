"""The Client's side of credit: what it may have at the balancer, and the local queue of the rest.

The balancer grants each client connection a window (balancer/credit.py, docs/PROTOCOL.md
"Credit"): how many requests, and how many bytes (each request as wire.limits.request_cost
counts it: its payload, REQUEST_OVERHEAD_BYTES, and room for its result when the payload is
big), it may have submitted and not yet answered. The Client sends a request only while it
fits, so it is not refused busy; the rest waits here, in submission
order, and goes as answers free room. The queue is bounded: beyond `max_requests` or
`max_bytes`, submit() and submit_many() block (receiving meanwhile, so answers keep
freeing room) or raise QueueFull after the Client's `queue_timeout_s`.

A request refused busy after all (the budget genuinely full, or the window shrank while
it travelled) goes back to the head of the queue, and the byte window shrinks to what is
still out: what goes next waits for answers or for new credit, never for a timer. With
nothing out and nothing that fits, the Client asks for credit (a CLIENT_PING, answered by
CLIENT_WELCOME with the window), at most every CREDIT_ASK_S.

A request bigger than the byte window is not sent on chance (up to its whole size would
arrive at a balancer that must refuse it): the ask names its bytes (want()), and the
balancer reserves room for it when it has some and says so (`reserved`, in CLIENT_WELCOME
or CREDIT): one request of at most that many bytes may go besides the window, once.

Pure: no socket, no clock. The Client (client_node/client.py) feeds it and sends what it hands out.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from dataclasses import dataclass

from wire import limits

# Before the balancer's first word (its CLIENT_WELCOME), a Client may have this much outstanding, like TCP's
# initial window: a lone request does not wait for the handshake, and a burst's first batches go at once. No
# more requests than a balancer grants while it knows no live capacity (balancer/credit.py), and bytes a
# small budget holds too (--max-memory-mb 1 grants a client alone 768 KiB): more drew busy answers there.
INITIAL_REQUESTS = 1024
INITIAL_BYTES = 256 * 1024
# The local queue's bounds by default: a submit loop runs ahead of the balancer by this much at most.
DEFAULT_QUEUE_REQUESTS = 100_000
DEFAULT_QUEUE_BYTES = 256 * 2**20
# With nothing out and a window that lets nothing go, ask the balancer for credit this often.
CREDIT_ASK_S = 0.25
# No byte bound (a balancer without --max-memory-mb): a window no payload can pass.
_UNBOUNDED = sys.maxsize

# Where a request is: in the local queue, sent and unanswered, or done with (answered, cancelled).
QUEUED, SENT, DONE = 0, 1, 2
_OVERHEAD = limits.REQUEST_OVERHEAD_BYTES
_cost = limits.request_cost
_LONE = limits.LONE_PAYLOAD_BYTES


@dataclass(slots=True)
class Outstanding:
    """A submitted request the Client has no answer for yet."""

    priority: int
    payload: bytes
    due_at: float  # when to re-send if still unanswered (math.inf while it waits in the local queue)
    delay_s: float  # the current back-off
    shape: tuple[str | None, float | None] | None = None  # (service, deadline as monotonic time), if either
    state: int = QUEUED

    @property
    def cost(self) -> int:
        """What it takes of a window in bytes."""
        return _cost(len(self.payload))


class QueueFull(TimeoutError):
    """The Client's local queue stayed full for its whole queue_timeout_s."""


class Window:
    """The granted window, what is out in it, and the local queue of what waits for room.

    The local queue keeps the balancer's order among one client's requests: lower priority numbers
    first, and within a priority first come, first sent; so an urgent request submitted behind a
    long backlog still overtakes it, as it would in the balancer's queue. Requests refused busy go
    before all of them. A deque per priority under a heap of the priorities waiting: O(1) per request
    while one priority is used, O(log P) for P priorities.
    """

    __slots__ = (
        "again",
        "blocked",
        "blocked_id",
        "bytes",
        "max_bytes",
        "max_requests",
        "out",
        "out_bytes",
        "priorities",
        "requests",
        "reserved",
        "waiting",
        "waiting_bytes",
        "waiting_count",
    )

    def __init__(self, max_requests: int = DEFAULT_QUEUE_REQUESTS, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.requests = INITIAL_REQUESTS
        self.bytes = INITIAL_BYTES
        self.out = 0  # requests sent and not yet answered
        self.out_bytes = 0
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        # priority -> submitted and not yet sent, in order; empty when nothing waits (its truth is read often)
        self.waiting: dict[int, deque[tuple[int, Outstanding]]] = {}
        self.priorities: list[int] = []  # a heap of the priorities in `waiting`
        self.waiting_count = 0
        self.waiting_bytes = 0
        self.again: deque[tuple[int, Outstanding]] = deque()  # refused busy: they go first
        self.reserved = 0  # bytes the balancer holds for one more request beyond the window (once)
        self.blocked = 0  # the bytes of the next request, when the last take() stopped at it; else 0
        self.blocked_id = -1  # and its request id

    def grant(self, requests: int, size: int | None, reserved: int = 0) -> None:
        """The balancer's word: at most `requests` requests and `size` bytes (None: no byte bound) out, and
        one request of at most `reserved` bytes besides (0: the room it reserved earlier, if any, stands)."""
        self.requests = max(0, requests)
        self.bytes = _UNBOUNDED if size is None else max(0, size)
        if reserved > 0:
            self.reserved = reserved

    def want(self) -> int:
        """The bytes to ask the balancer to reserve: those of the next request, when it is bigger than the
        whole byte window and nothing is out (no answer will make room for it); else 0."""
        blocked = self.blocked
        return blocked if self.out == 0 and blocked > self.bytes and blocked > self.reserved else 0

    @property
    def queued(self) -> int:
        """Requests waiting here for room (a few may be ones already answered, not yet skipped)."""
        return self.waiting_count + len(self.again)

    def full(self) -> bool:
        """True when the local queue is at its bound: a submit must wait for room."""
        return self.waiting_count >= self.max_requests or self.waiting_bytes >= self.max_bytes

    def wait(self, request_id: int, sent: Outstanding) -> None:
        """Queue a new submission behind the others of its priority."""
        queue = self.waiting.get(sent.priority)
        if queue is None:
            queue = self.waiting[sent.priority] = deque()
            heapq.heappush(self.priorities, sent.priority)
        queue.append((request_id, sent))
        self.waiting_count += 1
        self.waiting_bytes += len(sent.payload) + _OVERHEAD

    def take(self, now: float) -> list[tuple[int, Outstanding]]:
        """The queued requests that fit now, in order (refused ones first, then by priority), marked sent;
        each due for a re-send `delay_s` after `now`.

        A request fits while fewer than `requests` are out and its bytes fit beside theirs; or, once, when the
        balancer reserved room for it (`reserved`). What waits behind a request that does not fit waits too.
        (Inlined: this runs per request sent.)"""
        went: list[tuple[int, Outstanding]] = []
        self.blocked = 0
        out, out_bytes, requests, size = self.out, self.out_bytes, self.requests, self.bytes
        again, waiting, priorities = self.again, self.waiting, self.priorities
        left = 0  # requests leaving the local queue (`waiting`), and their bytes
        left_bytes = 0
        blocked = False
        while not blocked:
            if again:
                queue = again
            elif priorities:
                queue = waiting[priorities[0]]
            else:
                break
            while queue:
                entry = queue[0]
                sent = entry[1]
                length = len(sent.payload)
                cost = length + _OVERHEAD if length <= _LONE else 2 * length + _OVERHEAD  # limits.request_cost
                if sent.state == QUEUED:
                    if out >= requests or out_bytes + cost > size:
                        if cost > self.reserved:
                            blocked = True
                            self.blocked, self.blocked_id = cost, entry[0]
                            break
                        self.reserved = 0  # the room the balancer holds for it: used once
                    sent.state = SENT
                    sent.due_at = now + sent.delay_s
                    out += 1
                    out_bytes += cost
                    went.append(entry)
                queue.popleft()  # sent now, or answered or cancelled while it waited
                if queue is not again:
                    left += 1
                    left_bytes += length + _OVERHEAD
            if not queue and queue is not again:
                del waiting[heapq.heappop(priorities)]
        self.out, self.out_bytes = out, out_bytes
        self.waiting_count -= left
        self.waiting_bytes -= left_bytes
        return went

    def answered(self, sent: Outstanding) -> None:
        """An answer came (a result, or a final refusal): its room is free again."""
        if sent.state == SENT:
            self.out -= 1
            self.out_bytes -= sent.cost
        sent.state = DONE

    def refused(self, request_id: int, sent: Outstanding) -> None:
        """Refused busy: the request waits again, first in line, and the byte window shrinks to what is out
        until the balancer says otherwise."""
        if sent.state != SENT:
            return
        self.out -= 1
        self.out_bytes -= sent.cost
        self.bytes = min(self.bytes, self.out_bytes)
        sent.state = QUEUED
        sent.due_at = math.inf
        self.again.append((request_id, sent))

    def starved(self) -> bool:
        """True when requests wait, none is out and none may go: only new credit moves them."""
        if self.out or not (self.waiting or self.again):
            return False
        return self.requests <= 0 or self.bytes <= 0 or self.blocked > self.bytes
