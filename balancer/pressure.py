"""Back-pressure and bounded bookkeeping on the balancer's frontend: a mixin of the Balancer.

- **Unread results pause their client.** Results go out with ROUTER_MANDATORY
  and NOBLOCK; when a client's pipe is full (it does not read) the send says
  EAGAIN. "Unread" is measured by exactly that: a client is paused while the
  balancer holds results it could not hand to its pipe. Held results are
  charged to the memory budget and retried each loop iteration; meanwhile the
  client's waiting requests are set aside by dispatch (balancer/waiting.py)
  and everyone else's go on. When its pipe drains, it resumes.
- **Routes are forgotten when quiet.** The frontend interns each client's
  routing identity so every request from it shares one bytes object; the
  table is kept in two generations swapped every ROUTE_GENERATION_S (or at
  ROUTE_GENERATION_MAX entries), so identities unheard for two generations
  are dropped and a stream of one-off identities cannot grow it.
- **The longest loop iteration** over the last LOOP_WINDOW_S is kept for
  `zlb status` (`loop_max_ms`), for stall probes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from wire import events as ev
from wire.sockets import send_routed

# At most this many result batches are held for one client; beyond, a batch is dropped
# (counted as client_dropped) and stays remembered for the client's retry to fetch.
MAX_HELD_PER_CLIENT = 1000
ROUTE_GENERATION_S = 60.0
ROUTE_GENERATION_MAX = 50_000
LOOP_WINDOW_S = 10.0


class Pressure:
    """Held results, paused clients, route generations and the loop's longest iteration."""

    def _init_pressure(self, now: float) -> None:
        # client_id -> result batches (route, frames, payload bytes) its full pipe could not take, oldest first
        self._held: dict[int, deque[tuple[bytes, list[Any], int]]] = {}
        self._routes: dict[bytes, bytes] = {}
        self._routes_old: dict[bytes, bytes] = {}
        self._routes_swapped_at = now
        self._loop_max_s = 0.0
        self._loop_maxes: deque[tuple[float, float]] = deque()  # (until, longest iteration) per tick

    # ---- routes ----------------------------------------------------------

    def _route(self, identity: bytes) -> bytes:
        """The one interned copy of a client's routing identity."""
        route = self._routes.get(identity)
        if route is None:
            route = self._routes_old.pop(identity, None) or identity
            self._routes[identity] = route
            if len(self._routes) >= ROUTE_GENERATION_MAX:
                self._swap_routes(None)
        return route

    def _swap_routes(self, now: float | None) -> None:
        """A new generation: identities not heard since the previous swap are forgotten."""
        self._routes_old, self._routes = self._routes, {}
        if now is not None:
            self._routes_swapped_at = now

    def _known_routes(self) -> list[bytes]:
        return [*self._routes, *self._routes_old]

    def _age_routes(self, now: float) -> None:
        if now - self._routes_swapped_at >= ROUTE_GENERATION_S:
            self._swap_routes(now)

    # ---- held results ------------------------------------------------------

    def _deliver(self, client_id: int, route: bytes, frames: list[Any], size: int) -> None:
        """Send a result batch, or hold it (and pause its client) when the client's pipe is full."""
        held = self._held.get(client_id)
        if held is None:
            failed = send_routed(self.frontend, route, frames)
            if not failed:
                return
            self._count(f"client_{failed}")
            if failed != "dropped":
                return  # no connection: the results stay remembered for the client's retry
            held = self._held[client_id] = deque()
            self.sched._queue.pause(client_id)
            self._count("clients_paused")
            reason = "its results pile up unread; its requests wait until it reads"
            self._refusal(ev.SYSTEM_CLIENT_PAUSED, client_id, reason, time.monotonic())
        if len(held) >= MAX_HELD_PER_CLIENT:
            self._count("client_dropped")
            return
        held.append((route, frames, size))
        self.sched.budget.charge(client_id, size, unsent=True)

    def _retry_held(self) -> None:
        """Hand held results to pipes that drained; resume the clients left with none."""
        budget, frontend = self.sched.budget, self.frontend
        for client_id in list(self._held):
            held = self._held[client_id]
            while held:
                route, frames, size = held[0]
                failed = send_routed(frontend, route, frames)
                if failed == "dropped":
                    break
                held.popleft()
                budget.release(client_id, size, unsent=True)
                if failed:  # gone: its retries fetch the remembered results from the next connection
                    self._count(f"client_{failed}")
            if not held:
                del self._held[client_id]
                self.sched._queue.resume(client_id)

    # ---- the loop's longest iteration ------------------------------------------

    def _note_iteration(self, busy_s: float) -> None:
        if busy_s > self._loop_max_s:
            self._loop_max_s = busy_s

    def _roll_loop_max(self, now: float) -> None:
        """Once per tick: close this tick's longest iteration, forget those older than the window."""
        maxes = self._loop_maxes
        maxes.append((now, self._loop_max_s))
        self._loop_max_s = 0.0
        while maxes and now - maxes[0][0] > LOOP_WINDOW_S:
            maxes.popleft()

    def loop_max_ms(self) -> float:
        """The longest loop iteration (poll wait excluded) over the last LOOP_WINDOW_S."""
        longest = max((m for _t, m in self._loop_maxes), default=0.0)
        return round(max(longest, self._loop_max_s) * 1000, 2)
