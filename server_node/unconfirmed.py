"""The results a node sent that the balancer may not have read: pure, with time passed in.

A node that hears nothing from the balancer for its liveness period (the balancer stopped, stalled
or restarting) closes its connection and says HELLO again on a fresh one. The DONEs it sent on the
old connection meanwhile may never be read: a ROUTER takes the new connection over the same identity
and reads its HELLO first, and what the old one brought was lost with it (a balancer stopped 5 s
re-queued up to 7 finished requests and ran them again). So a node keeps what it sent since a
heartbeat interval before it last heard the balancer, and on a fresh connection lists those tickets
as held in its HELLO and sends their DONEs again: the balancer finishes each once, and drops a
second DONE for a request already finished as late.
"""

from __future__ import annotations

from collections import deque

# What a node keeps for re-sending, at most: beyond, the oldest go (those may run again after a stall).
MAX_KEPT_BYTES = 64 * 2**20


class SentResults:
    """DONEs sent lately, oldest first: (sent at, ticket, ok, result)."""

    __slots__ = ("_bytes", "_sent")

    def __init__(self) -> None:
        self._sent: deque[tuple[float, int, bool, bytes]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, now: float, ticket: int, ok: bool, result: bytes, heard_at: float, interval_s: float) -> None:
        """A DONE just sent. What was sent more than `interval_s` before the balancer was last heard (`heard_at`)
        is taken as read and forgotten, and so is the oldest beyond MAX_KEPT_BYTES."""
        self._sent.append((now, ticket, ok, result))
        self._bytes += len(result)
        self.forget(heard_at, interval_s)

    def forget(self, heard_at: float, interval_s: float) -> None:
        """Let go of what was sent more than `interval_s` before `heard_at` (also called as the node idles: a big
        result is not held for ever)."""
        sent, settled = self._sent, heard_at - interval_s
        while sent and (sent[0][0] < settled or self._bytes > MAX_KEPT_BYTES):
            self._bytes -= len(sent.popleft()[3])

    def recall(self) -> list[tuple[int, bool, bytes]]:
        """Everything kept, to send again on a fresh connection; forgotten here."""
        recalled = [(ticket, ok, result) for _at, ticket, ok, result in self._sent]
        self._sent.clear()
        self._bytes = 0
        return recalled
