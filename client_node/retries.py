"""The Client's Lazy Pirate retries: when an unanswered request goes again.

A mixin of the Client (client_node/client.py), which sets up the state these
methods use (retry_s, retry_max_s, _outstanding, _unsent, _window,
_next_resend_scan and the counters) and sends what they queue with its _flush.
A request sent and unanswered is re-sent with the same ids after its back-off,
which doubles up to RETRY_BACKOFF_FACTOR_MAX times retry_s; a stopping
balancer's notice resets the back-off. A busy answer is not a loss: the request
waits again in the local queue for credit (client_node/window.py), no timer.
Requests still in the local queue have no timer at all: they were never sent.
"""

from __future__ import annotations

import time

from client_node.window import SENT

# Retries back off by doubling up to this multiple of retry_s.
RETRY_BACKOFF_FACTOR_MAX = 4


class Retries:
    """Re-sends of the Client's unanswered requests."""

    def _on_shutdown(self) -> None:
        """The balancer is stopping (or refused a message): re-send soon, from the first back-off step."""
        self.shutdown_notices += 1
        if self.retry_s is None:
            return
        due = time.monotonic() + self.retry_s
        for sent in self._outstanding.values():
            if sent.state == SENT:
                sent.due_at = due
                sent.delay_s = self.retry_s

    def _on_busy(self, request_id: int, reason: str) -> None:
        """Back-pressure: the request waits again, first in the local queue, until there is credit for it."""
        sent = self._outstanding.get(request_id)
        if sent is None or sent.state != SENT:
            return
        self.busy_notices += 1
        self._window.refused(request_id, sent)
        if self.on_busy is not None:
            self.on_busy(request_id, reason)

    def _resend_overdue(self, now: float) -> None:
        # Scanning every outstanding request is O(n): the caller does it a few times per retry period only.
        # Those in the local queue are due at infinity: never sent, never overdue.
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
