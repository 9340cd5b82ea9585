"""Services: each request names one, each node offers some; a queue per service.

A request waits in its service's queue (balancer/waiting.py: priority order, clients in turns)
and runs only on a node that offers the service, the least-loaded of them (balancer/nodes.py keeps
a free-node heap per service). A service no live node offers just waits: `zlb status` shows it
with no nodes, and its requests' deadlines still run.

Requests cancelled or expired while they wait stay in the queue as stale entries, skipped when
they come up (`stale`), and are purged at once when they make up a good share of it, so ending
one costs O(1) and a queue is never scanned for each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from balancer.waiting import WaitingQueue

# Distinct services the balancer holds a queue for; a submission naming one more is refused
# (names come from clients: without a bound, a stream of made-up names would grow the table).
MAX_SERVICES = 1024
# Stale entries in a queue beyond this share of it (and at least PURGE_MIN) are purged.
PURGE_MIN = 64
PURGE_SHARE = 4  # a quarter


@dataclass(slots=True)
class Service:
    """One service's queue and its tallies."""

    name: str
    queue: WaitingQueue
    stale: int = 0  # entries in the queue that no longer wait (ended in place)
    stale_by_priority: dict[int, int] = field(default_factory=dict)
    expired: int = 0
    cancelled: int = 0
    dead: int = 0

    @property
    def waiting(self) -> int:
        """Requests that wait in this queue (set-aside ones of paused clients included)."""
        return self.queue.count + self.queue.parked - self.stale

    def ended_in_place(self, priority: int) -> None:
        """A request of this queue ended while it waited: its entry is now stale."""
        self.stale += 1
        self.stale_by_priority[priority] = self.stale_by_priority.get(priority, 0) + 1

    def skipped(self, priority: int) -> None:
        """A stale entry came up and was dropped."""
        self.stale -= 1
        left = self.stale_by_priority[priority] - 1
        if left:
            self.stale_by_priority[priority] = left
        else:
            del self.stale_by_priority[priority]

    def purge_due(self) -> bool:
        return self.stale >= PURGE_MIN and self.stale * PURGE_SHARE >= self.queue.count + self.queue.parked

    def purge(self) -> None:
        self.queue.purge()
        self.stale = 0
        self.stale_by_priority.clear()

    def by_priority(self) -> dict[int, int]:
        """Depth per priority, stale entries left out."""
        out = self.queue.by_priority()
        for priority, stale in self.stale_by_priority.items():
            left = out.get(priority, 0) - stale
            if left > 0:
                out[priority] = left
            else:
                out.pop(priority, None)
        return out
