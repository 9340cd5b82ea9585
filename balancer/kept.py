"""Finished requests the balancer remembers, to answer a resubmission with its stored result and
to list them (`zlb requests`, /requests).

Bounded three ways: by count (--keep-finished), by result bytes (--keep-finished-mb) and by the
memory budget (balancer/budget.py). The oldest are forgotten first, and with each its place in its
client's session, so a resubmission of a forgotten id runs again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from balancer.budget import REQUEST_OVERHEAD_BYTES, MemoryBudget
from balancer.records import Request
from balancer.sessions import ClientSessions


def body_size(body: Any) -> int:
    """Bytes of a payload or kept result (bytes or a zmq frame); 0 when there is none."""
    return len(body) if body is not None else 0


class KeptResults:
    """The finished requests still remembered, oldest first."""

    def __init__(self, keep: int, keep_bytes: int, budget: MemoryBudget, sessions: ClientSessions) -> None:
        self.keep = keep
        self.keep_bytes = keep_bytes
        self._budget = budget
        self._sessions = sessions
        self._requests: deque[Request] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def add(self, req: Request) -> None:
        """Remember a finished request (and its result); forget the oldest beyond any bound."""
        self._requests.append(req)
        self._bytes += body_size(req.body)
        self.trim()

    def trim(self) -> None:
        """Forget the oldest finished requests beyond the count, the bytes or the memory budget."""
        kept, budget, sessions = self._requests, self._budget, self._sessions
        budget.kept = self._bytes + REQUEST_OVERHEAD_BYTES * len(kept)
        while kept and (len(kept) > self.keep or self._bytes > self.keep_bytes or budget.over()):
            old = kept.popleft()
            self._bytes -= body_size(old.body)
            budget.kept = self._bytes + REQUEST_OVERHEAD_BYTES * len(kept)
            session = sessions.get(old.client_id)
            if session is not None and session.get(old.request_id) is old:
                del session[old.request_id]
                if not session and session.incarnation is None:
                    del sessions[old.client_id]
