"""Credit: how much each client connection may have outstanding at the balancer.

Refusing a submit and letting its sender re-send turns overload into a storm: one
Client's million 16-byte requests under the default budget drew 6.9 million busy
answers and 2.6 million duplicate re-sends (issue 23). So the balancer tells each
client connection its **window**, how much it may have submitted and not yet
answered, and the Client keeps the rest in a local queue (client_node/window.py).
A result that goes back frees its room at the Client by itself; only a change of the
window itself is news. A window is two bounds, both for the connection's client id:

- **bytes** (each request its payload plus REQUEST_OVERHEAD_BYTES, as the memory
  budget counts it): the client's share of the budget, the very share the budget's
  admission checks (balancer/budget.py), and never more than what the client holds
  plus what is free. The hard bound: keep to it and no submit is refused busy.
- **requests**: the balancer's completion rate times TARGET_WAIT_S, shared by the
  clients with work, and never below what keeps every live node busy. Memory is not
  what it guards: it keeps a request's wait at the balancer short, well under a
  Client's retry_s, so a timed re-send means a loss and not a long queue, and a
  client arriving late finds short queues ahead of it.

Pure, owned by ClientSide (balancer/clients.py), which sends what it decides: the
window in CLIENT_WELCOME (the answer to CLIENT_HELLO and CLIENT_PING), and CREDIT
when a result batch goes to a connection whose window moved enough since it was
last told (TOLD_*). Only connections that said CLIENT_HELLO are told anything: a raw
socket or a Majordomo client never sees a CREDIT.
"""

from __future__ import annotations

from typing import Any

from balancer.scheduler import Scheduler

# A request should wait at the balancer about this long: the request windows of all clients together are
# the completion rate times this. Well under the Client's retry_s (5 s by default).
TARGET_WAIT_S = 0.5
# The request windows together are never smaller than CAPACITY_FACTOR times the capacity of the live nodes:
# four times what they can run keeps them busy, so a small window cannot hold down the rate it is sized by.
# With no live node (or before the first tick) they are MIN_TOTAL_REQUESTS, so work submitted before the
# nodes join waits at the balancer (and in its journal), as a Client's first burst does. There is no other
# floor: slow work (100 ms a request on one node) under a floor of 1,024 would queue 100 s of waiting at
# the balancer, and every Client would re-send it on its retry timer.
MIN_TOTAL_REQUESTS = 1024
CAPACITY_FACTOR = 4
# One client's request window is never smaller than this (a thousand clients with work still pipeline).
MIN_CLIENT_REQUESTS = 16
# Each tick's measured completion rate moves the smoothed one this far towards it.
RATE_WEIGHT = 0.5
# A connection hears of its new window when the bytes shrank at all (the budget refuses past them) or grew
# by an eighth, or the requests moved by a quarter either way (a soft bound: small moves are not worth a message).
TOLD_BYTES_GROWTH = 9 / 8
TOLD_REQUESTS_STEP = 1 / 4

Window = tuple[int, "int | None"]  # (requests, bytes or None for no byte bound)


def worth_telling(told: Window, window: Window) -> bool:
    """Whether a connection told `told` must hear of `window`."""
    old_requests, old_bytes = told
    requests, size = window
    if abs(requests - old_requests) >= max(1.0, old_requests * TOLD_REQUESTS_STEP):
        return True
    if size is None or old_bytes is None:
        return size != old_bytes
    return size < old_bytes or (size > old_bytes and size >= old_bytes * TOLD_BYTES_GROWTH)


class Credit:
    """The windows of the client connections: what each was told, and what each may have now."""

    def __init__(self, sched: Scheduler, now: float) -> None:
        self.sched = sched  # read only: its budget, and whether it refuses everything new
        self.budget = sched.budget
        self.total_requests = MIN_TOTAL_REQUESTS  # the request windows of all clients with work together
        self.rate = 0.0  # requests finished per second, smoothed
        self._finished = 0
        self._measured_at = now
        # route -> the window that connection was last told; only connections that said CLIENT_HELLO
        self.told: dict[Any, Window] = {}

    def tick(self, now: float, finished: int, capacity: int) -> None:
        """Once per heartbeat: `finished` requests so far, `capacity` of the live nodes; re-size the total."""
        elapsed = now - self._measured_at
        if elapsed <= 0:
            return
        measured = max(0, finished - self._finished) / elapsed
        self.rate += RATE_WEIGHT * (measured - self.rate)
        self._finished, self._measured_at = finished, now
        floor = CAPACITY_FACTOR * capacity if capacity else MIN_TOTAL_REQUESTS
        self.total_requests = max(floor, int(self.rate * TARGET_WAIT_S))

    def window(self, client_id: int) -> Window:
        """What a connection of this client id may have outstanding now: (requests, bytes or None)."""
        if self.sched.refusing:  # nothing new may be taken (a journal that cannot be written)
            return 0, 0
        budget = self.budget
        by_client = budget.by_client
        mine = by_client.get(client_id, 0)
        sharing = len(by_client) + (0 if mine else 1)  # the clients with work, this one among them
        requests = max(MIN_CLIENT_REQUESTS, self.total_requests // sharing)
        if budget.limit is None:
            return requests, None
        return requests, max(0, min(budget.share(sharing), mine + budget.free()))

    def welcome(self, route: Any, client_id: int) -> Window:
        """The window for a CLIENT_WELCOME to `route`, remembered as told."""
        window = self.told[route] = self.window(client_id)
        return window

    def update(self, route: Any, client_id: int) -> Window | None:
        """The window to tell `route` in a CREDIT, or None: it said no CLIENT_HELLO, or nothing worth telling."""
        told = self.told.get(route)
        if told is None:
            return None
        window = self.window(client_id)
        if not worth_telling(told, window):
            return None
        self.told[route] = window
        return window

    def forget(self, route: Any) -> None:
        """The connection is done (CLIENT_BYE)."""
        self.told.pop(route, None)

    def keep_only(self, routes: dict[Any, Any], older: dict[Any, Any]) -> None:
        """Forget the connections no longer among the balancer's routes (a route generation went)."""
        self.told = {route: w for route, w in self.told.items() if route in routes or route in older}
