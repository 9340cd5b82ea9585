"""What went wrong on the balancer's sockets: every incident counted, few logged.

One object shared by the loop's parts (balancer/loop.py). Bad input is counted
per (socket, kind) and refusals per kind, and each is logged at most once per
LOG_INTERVAL_S, so a flood of garbage or of refused ids cannot flood the log;
`zlb status` shows the counts (its `bad_input` and `counters`).
"""

from __future__ import annotations

from typing import Any

from balancer.records import Outbox
from wire import events as ev
from wire.protocol import ProtocolError

LOG_INTERVAL_S = 5.0


class Incidents:
    """Counters of bad input, refusals and failed sends; events go to the scheduler's outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.counters: dict[str, int] = {}
        self.bad_input: dict[str, int] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def bad(self, sock_name: str, exc: ProtocolError, now: float) -> None:
        """Count a bad message, and log it unless that kind was logged lately."""
        key = f"{sock_name}.{exc.kind}"
        count = self.bad_input[key] = self.bad_input.get(key, 0) + 1
        if self._due((sock_name, exc.kind), now):
            self.outbox.events.append((ev.SYSTEM_BAD_INPUT, sock_name, exc.kind, exc.detail[:200], count))

    def refusal(self, kind: str, subject: Any, reason: str, now: float) -> None:
        """Log a refused id unless one of this kind was logged lately (the scheduler counts every one)."""
        if self._due(("refused", kind), now):
            self.outbox.events.append((kind, subject, reason))

    def _due(self, key: tuple[str, str], now: float) -> bool:
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL_S:
            return False
        self._logged[key] = now
        return True
