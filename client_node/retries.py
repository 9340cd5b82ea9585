"""The Client's Lazy Pirate retries: what is outstanding, and when it goes again.

A mixin of the Client (client_node/client.py), which sets up the state these
methods use (retry_s, retry_max_s, _outstanding, _unsent, _next_resend_scan and
the counters) and sends what they queue with its _flush. An unanswered request
is re-sent with the same ids after its back-off, which doubles up to
RETRY_BACKOFF_FACTOR_MAX times retry_s; a stopping balancer's notice resets the
back-off, and a busy answer re-sends after the current one, jittered.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

# Retries back off by doubling up to this multiple of retry_s.
RETRY_BACKOFF_FACTOR_MAX = 4


@dataclass(slots=True)
class Outstanding:
    priority: int
    payload: bytes
    due_at: float  # when to re-send if still unanswered
    delay_s: float  # the current back-off
    shape: tuple[str | None, float | None] | None = None  # (service, deadline as monotonic time), if either


class Retries:
    """Re-sends of the Client's unanswered requests."""

    def _on_shutdown(self) -> None:
        """The balancer is stopping (or refused a message): re-send soon, from the first back-off step."""
        self.shutdown_notices += 1
        if self.retry_s is None:
            return
        due = time.monotonic() + self.retry_s
        for sent in self._outstanding.values():
            sent.due_at = due
            sent.delay_s = self.retry_s

    def _on_busy(self, request_id: int, reason: str) -> None:
        """Back-pressure: send this request again after its back-off (jittered so clients spread out)."""
        sent = self._outstanding.get(request_id)
        if sent is None:
            return
        self.busy_notices += 1
        now = time.monotonic()
        sent.due_at = now + sent.delay_s * (0.5 + random.random() / 2)
        self._next_resend_scan = min(self._next_resend_scan, sent.due_at)
        if self.on_busy is not None:
            self.on_busy(request_id, reason)

    def _resend_overdue(self, now: float) -> None:
        # Scanning every outstanding request is O(n): the caller does it a few times per retry period only.
        self._next_resend_scan = now + self.retry_s / 4
        cap = self.retry_max_s
        for request_id, sent in self._outstanding.items():
            if now >= sent.due_at:
                sent.delay_s = min(cap, sent.delay_s * 2)
                sent.due_at = now + sent.delay_s
                self.resent += 1
                if sent.shape is None:
                    self._unsent.append((request_id, sent.priority, sent.payload))
                else:
                    self._queue_shaped(request_id, sent.priority, sent.payload, sent.shape)
        if self._unsent or self._unsent_shaped:
            self._flush()  # every overdue request, in as few messages as the batch limits allow
