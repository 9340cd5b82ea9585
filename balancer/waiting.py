"""The queue of waiting requests: strict priority, FIFO within a priority.

Requests live in per-priority buckets (a deque of fresh arrivals and a
seq-ordered heap of re-queued ones) under a heap of priorities, so push and
pop are O(log P) for P distinct priorities. A re-queued request goes ahead of
later arrivals of its priority, in the order it was first dispatched.
"""

from __future__ import annotations

import heapq
from collections import deque
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
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push_fresh(self, req: Request) -> None:
        """A new arrival: behind everything of its priority."""
        self._bucket(req.priority).fresh.append(req)
        self._count += 1

    def push_retry(self, req: Request) -> None:
        """A request that was dispatched and lost: ahead of later arrivals of its priority."""
        heapq.heappush(self._bucket(req.priority).retry, (req.seq, req))
        self._count += 1

    def pop(self) -> Request:
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
            self._count -= 1
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
