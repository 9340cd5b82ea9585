"""The queue of waiting requests: strict priority, FIFO within a priority.

Requests live in per-priority buckets (a deque of fresh arrivals and a
seq-ordered heap of re-queued ones) under a heap of priorities, so push and
pop are O(log P) for P distinct priorities. A re-queued request goes ahead of
later arrivals of its priority, in the order it was first dispatched.

A paused client (one whose results pile up unread, see balancer/clients.py)
has its requests set aside as pop() meets them, O(1) each; resume() puts
them back at the head of their priority, so others go on meanwhile and the
paused client loses no place.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from balancer.records import Request


@dataclass(slots=True)
class _Bucket:
    """Waiting requests of one priority: re-queued ones first, by first dispatch."""

    fresh: deque = field(default_factory=deque)
    retry: list = field(default_factory=list)  # heap of (seq, Request)
    in_heap: bool = False

    def __len__(self) -> int:
        return len(self.fresh) + len(self.retry)


class WaitingQueue:
    """Priority buckets under a heap of the priorities that have waiting requests."""

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._priorities: list[int] = []
        self.count = 0  # requests in the queue proper; an attribute, read on every dispatch
        self.paused: set[int] = set()  # client ids whose requests are not dispatched
        self._parked: dict[int, list[Request]] = {}
        self.parked = 0  # requests set aside for paused clients

    def __len__(self) -> int:
        """Requests in the queue proper (the parked ones of paused clients are not)."""
        return self.count

    def pause(self, client_id: int) -> None:
        """Dispatch none of this client's requests until resume()."""
        self.paused.add(client_id)

    def resume(self, client_id: int) -> None:
        """Dispatch this client's requests again, the set-aside ones first."""
        self.paused.discard(client_id)
        parked = self._parked.pop(client_id, None)
        if not parked:
            return
        self.parked -= len(parked)
        for req in reversed(parked):
            if req.seq is None:
                self._bucket(req.priority).fresh.appendleft(req)
                self.count += 1
            else:
                self.push_retry(req)

    def retried(self) -> Iterator[Request]:
        """The waiting requests that were dispatched before (few: lost work), in no order."""
        for bucket in self._buckets.values():
            for _seq, req in bucket.retry:
                yield req
        for reqs in self._parked.values():
            yield from (req for req in reqs if req.seq is not None)

    def __iter__(self) -> Iterator[Request]:
        """Waiting requests in dispatch order (re-queued first within a priority), then parked ones."""
        for priority in sorted(self._buckets):
            bucket = self._buckets[priority]
            yield from (req for _seq, req in sorted(bucket.retry, key=lambda e: e[0]))
            yield from bucket.fresh
        for reqs in list(self._parked.values()):
            yield from reqs

    def push_fresh(self, req: Request) -> None:
        """A new arrival: behind everything of its priority."""
        self._bucket(req.priority).fresh.append(req)
        self.count += 1

    def push_retry(self, req: Request) -> None:
        """A request that was dispatched and lost: ahead of later arrivals of its priority."""
        heapq.heappush(self._bucket(req.priority).retry, (req.seq, req))
        self.count += 1

    def pop(self) -> Request | None:
        """The most urgent waiting request of a client not paused; None if only paused ones wait."""
        req = self._pop()
        paused = self.paused
        while paused and req is not None and req.client_id in paused:
            self._parked.setdefault(req.client_id, []).append(req)
            self.parked += 1
            req = self._pop() if self.count else None
        return req

    def _pop(self) -> Request:
        """The most urgent waiting request (the caller checks that one waits)."""
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
            self.count -= 1
            return req

    def by_priority(self) -> dict[int, int]:
        """Queue depth per priority, most urgent first."""
        return {p: len(b) for p, b in sorted(self._buckets.items()) if len(b)}

    def _bucket(self, priority: int) -> _Bucket:
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._buckets[priority] = _Bucket()
        if not bucket.in_heap:
            bucket.in_heap = True
            heapq.heappush(self._priorities, priority)
        return bucket
