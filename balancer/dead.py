"""Dead letters: requests that failed every attempt (their nodes died), kept with their payloads.

`zlb dead` lists them with their attempts and last error; `zlb retry` queues one (or all) again.
They are bounded by count and by payload bytes: beyond either, the oldest is let go of (it ends
`failed`, with its error as its result) and counted, so `zlb dead` says what it dropped. Each is
journaled (records.DEAD_LETTER), so a restarted balancer or a standby has them too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from balancer.records import Request

DEFAULT_MAX_DEAD = 10_000
DEFAULT_MAX_DEAD_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Letter:
    """One dead request: the Request itself (status dead, its body still the payload), and why."""

    req: Request
    error: str
    attempts: int
    server_id: int | None
    died_at: float  # wall-clock seconds


class DeadLetters:
    """Dead requests in the order they died, within a count and a byte bound."""

    def __init__(self, max_count: int = DEFAULT_MAX_DEAD, max_bytes: int = DEFAULT_MAX_DEAD_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.letters: OrderedDict[tuple[int, int], Letter] = OrderedDict()
        self.bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self.letters)

    def add(self, letter: Letter) -> list[Letter]:
        """Keep a dead request; return the oldest ones let go of to stay within the bounds."""
        req = letter.req
        self.letters[(req.client_id, req.request_id)] = letter
        self.bytes += len(req.body)
        out = []
        while self.letters and (len(self.letters) > self.max_count or self.bytes > self.max_bytes):
            old = self.letters.popitem(last=False)[1]
            size = len(old.req.body)
            self.bytes -= size
            self.dropped += 1
            self.dropped_bytes += size
            out.append(old)
        return out

    def take(self, client_id: int, request_id: int) -> Letter | None:
        """Take a dead request out (to retry it, or because it ended otherwise); None if it is not here."""
        letter = self.letters.pop((client_id, request_id), None)
        if letter is not None:
            self.bytes -= len(letter.req.body)
        return letter

    def get(self, client_id: int, request_id: int) -> Letter | None:
        return self.letters.get((client_id, request_id))

    def view(self, limit: int) -> dict[str, Any]:
        """What `zlb dead` shows: the newest `limit` letters, and what the bounds dropped."""
        rows = [letter_view(letter) for letter in list(self.letters.values())[-limit:]] if limit else []
        return {
            "dead": rows,
            "count": len(self.letters),
            "bytes": self.bytes,
            "max_count": self.max_count,
            "max_bytes": self.max_bytes,
            "dropped": self.dropped,
            "dropped_bytes": self.dropped_bytes,
        }


def letter_view(letter: Letter) -> dict[str, Any]:
    req = letter.req
    return {
        "client_id": req.client_id,
        "request_id": req.request_id,
        "priority": req.priority,
        "service": req.service,
        "attempts": letter.attempts,
        "error": letter.error,
        "server_id": letter.server_id,
        "died_at": letter.died_at,
        "payload_bytes": len(req.body),
    }
