"""Deadlines and delayed retries: the scheduler's requests that something must happen to at a time.

Pure, like the scheduler that owns it: times are monotonic seconds passed in. Two heaps with lazy
deletion: a request's deadline (it ends `expired` if not finished by then) and the moment a request
re-queued after a failure may run again (exponential back-off with jitter). A request that finishes
or is taken back early is simply forgotten from the dicts; its heap entry is skipped when it comes up.
Nothing here runs per request unless the request has a deadline or was re-queued after a failure.
"""

from __future__ import annotations

import heapq
import itertools
import random

from balancer.records import Request

# Back-off after a failed attempt: base * 2**(attempt - 1), capped, and then jittered (equal jitter:
# half fixed, half random) so that the work of one dead node does not all come back at one instant.
RETRY_BACKOFF_MAX_S = 10.0


def backoff_s(base_s: float, attempts: int, rng: random.Random) -> float:
    """How long a request waits after its `attempts`-th failed attempt."""
    step = min(RETRY_BACKOFF_MAX_S, base_s * 2 ** max(0, attempts - 1))
    return step / 2 + rng.random() * step / 2


class Timers:
    """Requests with a deadline, and requests waiting out a back-off before they are queued again."""

    def __init__(self, seed: int | None = None) -> None:
        self.deadline_of: dict[Request, float] = {}
        self.delayed: dict[Request, float] = {}
        self._deadlines: list[tuple[float, int, Request]] = []
        self._ready_at: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()
        self.rng = random.Random(seed)

    def set_deadline(self, req: Request, at: float) -> None:
        self.deadline_of[req] = at
        heapq.heappush(self._deadlines, (at, next(self._seq), req))

    def delay(self, req: Request, at: float) -> None:
        self.delayed[req] = at
        heapq.heappush(self._ready_at, (at, next(self._seq), req))

    def due(self, now: float) -> list[Request]:
        """Requests whose deadline has passed (forgotten here from now on)."""
        heap, deadlines, out = self._deadlines, self.deadline_of, []
        while heap and heap[0][0] <= now:
            at, _seq, req = heapq.heappop(heap)
            if deadlines.get(req) == at:
                del deadlines[req]
                out.append(req)
        if not deadlines:
            heap.clear()  # only stale entries are left
        return out

    def ready(self, now: float) -> list[Request]:
        """Requests whose back-off is over, in the order they became ready (forgotten here from now on)."""
        heap, delayed, out = self._ready_at, self.delayed, []
        while heap and heap[0][0] <= now:
            at, _seq, req = heapq.heappop(heap)
            if delayed.get(req) == at:
                del delayed[req]
                out.append(req)
        if not delayed:
            heap.clear()
        return out

    def next_ready(self) -> float | None:
        """When the earliest back-off may be over (a stale entry may make it early; never late); None if none."""
        return self._ready_at[0][0] if self.delayed and self._ready_at else None
