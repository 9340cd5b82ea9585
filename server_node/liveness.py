"""A node's view of the balancer's liveness: pure, with time passed in.

The Paranoid Pirate rule: any message from the balancer is a sign of life;
after `liveness` silent intervals the node gives up on its connection, opens
a fresh one and says HELLO again, backing off by doubling up to a cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.protocol import RECONNECT_BACKOFF_MAX_S


@dataclass(slots=True)
class PeerLiveness:
    """When the balancer was last heard from, and when to act next."""

    interval_s: float
    liveness: int
    expires_at: float
    next_heartbeat: float
    backoff_s: float = 0.0
    backoff_max_s: float = RECONNECT_BACKOFF_MAX_S
    heard_at: float = 0.0  # the last message from the balancer

    @classmethod
    def start(cls, interval_s: float, liveness: int, now: float) -> PeerLiveness:
        """A fresh connection: the balancer gets `liveness` intervals to answer."""
        return cls(interval_s, liveness, now + interval_s * liveness, now + interval_s)

    def heard(self, now: float) -> None:
        """Any message from the balancer resets the deadline and the back-off."""
        self.expires_at = now + self.interval_s * self.liveness
        self.backoff_s = 0.0
        self.heard_at = now

    def adopt(self, interval_s: float, liveness: int, now: float) -> None:
        """Use the balancer's heartbeat interval and liveness (from WELCOME) from now on."""
        self.interval_s, self.liveness = interval_s, liveness
        self.expires_at = now + interval_s * liveness
        self.next_heartbeat = min(self.next_heartbeat, now + interval_s)

    def heartbeat_due(self, now: float) -> bool:
        """True once per interval: time to send a heartbeat."""
        if now < self.next_heartbeat:
            return False
        self.next_heartbeat = now + self.interval_s
        return True

    def lost(self, now: float) -> bool:
        """True when the balancer has been silent past its deadline."""
        return now >= self.expires_at

    def reconnected(self, now: float) -> float:
        """Start a new connection attempt; return how long to wait before it."""
        self.backoff_s = min(self.backoff_max_s, self.backoff_s * 2 or self.interval_s)
        self.expires_at = now + self.backoff_s + self.interval_s * self.liveness
        self.next_heartbeat = now + self.backoff_s
        return self.backoff_s

    def next_deadline(self) -> float:
        """The earliest moment something must happen."""
        return min(self.next_heartbeat, self.expires_at)
