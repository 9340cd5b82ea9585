"""Finished requests the balancer remembers, to answer a resubmission with its stored result and
to list them (`zlb requests`, /requests).

Bounded three ways: by count (--keep-finished), by result bytes (--keep-finished-mb) and by the
memory budget (balancer/budget.py). The oldest are forgotten first, and with each its place in its
client's session, so a resubmission of a forgotten id runs again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Iterator
from typing import Any

from balancer.budget import REQUEST_OVERHEAD_BYTES, MemoryBudget
from balancer.records import Outbox, Request, Submitted
from balancer.sessions import ClientSessions
from wire.protocol import FAILED, PROCESSED


def payload_digest(payload: Any, like: int | None = None) -> int:
    """A stable 63-bit digest of a payload (stable across processes, unlike hash()), negative.

    SHA-256, which runs at 1.7 GB/s here against BLAKE2b's 0.67 (a 256 KiB payload cost the
    balancer 370 us of BLAKE2b per request). Journals written before kept BLAKE2b digests, which
    are never negative: `like` such a digest, the payload is digested the old way, so a
    resubmission after an upgrade is still recognised.
    """
    if like is not None and like >= 0:
        return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")
    return -1 - (int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1)


def resubmitted(req: Request, route: Any, body: Any, counters: dict[str, int], outbox: Outbox) -> Submitted:
    """A known request id again: the same request (answer it), or a conflicting reuse."""
    finished = req.status in (PROCESSED, FAILED)
    if finished:
        same = req.payload_digest is None or req.payload_digest == payload_digest(body, like=req.payload_digest)
    else:
        same = same_payload(req.body, body)
    if not same:
        counters["conflicts"] += 1
        return Submitted.CONFLICT
    counters["duplicates"] += 1
    replay = finished and req.route != route  # another process asks for a result it did not see made
    req.route = route  # answer wherever the client is now
    if not finished:
        return Submitted.DUPLICATE
    if replay:
        counters["replays"] += 1
        outbox.replays.append(req)
    else:
        outbox.replies.append(req)
    return Submitted.FINISHED


def same_payload(held: Any, body: Any) -> bool:
    """Whether two payloads hold the same bytes. A big one is a zmq.Frame (received without a copy):
    compared in place, as bytes() would copy both (16 MiB each for 16 MiB payloads)."""
    if type(body) is bytes:
        return bytes(held) == body
    return len(held) == len(body) and hmac.compare_digest(memoryview(held), memoryview(body))


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

    def add(self, req: Request, result: Any) -> None:
        """Remember a request just finished with `result`: its payload's digest (for conflicting resubmissions)
        instead of the payload, whose bytes the budget stops counting; forget the oldest beyond any bound."""
        payload = req.body
        if req.payload_digest is None:
            req.payload_digest = payload_digest(payload)
        self._budget.release(req.client_id, body_size(payload))
        req.body = result
        self.remember(req)

    def remember(self, req: Request) -> None:
        """Keep a finished request as it is (one restored from a journal holds its result and digest)."""
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
