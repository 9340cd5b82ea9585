"""Credit: how much each client connection may have outstanding at the balancer.

Refusing a submit and letting its sender re-send turns overload into a storm: one
Client's million 16-byte requests under the default budget drew 6.9 million busy
answers and 2.6 million duplicate re-sends (issue 23). So the balancer tells each
client connection its **window**, how much it may have submitted and not yet
answered, and the Client keeps the rest in a local queue (client_node/window.py).
A result that goes back frees its room at the Client by itself; only a change of the
window itself is news. A window is two bounds, both for the connection's client id:

- **bytes** (each request as wire.limits.request_cost counts it, as the memory
  budget does): the client's share of the budget, the very share the budget's
  admission checks (balancer/budget.py), and never more than what the client holds
  plus what is free. Keep to it and no submit is refused busy, but for a window that shrank
  after it was told (it is told again with the connection's next results).
- **requests**: the balancer's completion rate times TARGET_WAIT_S, shared by the
  clients with work, and never below what keeps every live node busy. Memory is not
  what it guards: it keeps a request's wait at the balancer short, well under a
  Client's retry_s, so a timed re-send means a loss and not a long queue, and a
  client arriving late finds short queues ahead of it.

A request bigger than the byte window (a 16 MiB payload when a client's share is 12 MiB)
is not sent on chance: with nothing out, the Client asks for room for it (CLIENT_PING
with the bytes it wants), and the balancer reserves that much of its budget for the
client's next request (MemoryBudget.reserve_room) as soon as it is free, in the order
the connections asked, and says so (the `reserved` field of CLIENT_WELCOME or CREDIT).
What has no room waits here, in `wanting`, and is granted when results free some.

Pure, owned by ClientSide (balancer/clients.py), which sends what it decides: the
window in CLIENT_WELCOME (the answer to CLIENT_HELLO and CLIENT_PING), and CREDIT
when a result batch goes to a connection whose window moved enough since it was
last told (TOLD_*). Only connections that said CLIENT_HELLO are told anything: a raw
socket or a Majordomo client never sees a CREDIT.
"""

from __future__ import annotations

from typing import Any

from balancer.budget import LAPSED_S
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
# A client that said CLIENT_HELLO this recently counts among those sharing the byte budget before it holds
# anything: clients starting together would otherwise each hear the share of a client alone, and send it all
# at once (four clients told 48 MiB each of a 64 MiB budget sent 128 MiB, refused busy after it arrived).
ARRIVING_S = 2.0
# The connections already told hear of their smaller window at once while at most this many clients are
# arriving: each telling walks every connection, so a storm of new clients costs that walk 16 times per
# ARRIVING_S, not once per client (the others hear of it with their next results, as for any other change).
ARRIVING_TOLD_MAX = 16
# A client a result batch went to within this many ticks (heartbeats) counts among those sharing the bytes
# although it holds nothing at that moment: between one request and its next, several clients of big payloads
# were each told the share of a client alone and sent at once, to be refused busy once their bytes had arrived.
ACTIVE_TICKS = 2
# An ask for room not repeated within this long is forgotten: a starved Client asks every CREDIT_ASK_S
# (client_node/window.py), so only a connection that went away or no longer needs it stops asking.
WANT_FRESH_S = 1.0

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
        self.client_of: dict[Any, int] = {}  # route -> the client id it was told a window for
        self.arriving: dict[int, float] = {}  # client id -> when it said CLIENT_HELLO, for ARRIVING_S
        self.active: dict[int, int] = {}  # client id -> the tick a result batch last went to it
        self.ticks = 0
        # route -> (client id, bytes asked for, when last asked): room not yet reserved, in the order asked
        self.wanting: dict[Any, tuple[int, int, float]] = {}
        # client id -> the connection its reservation was granted to; route -> until when a connection whose
        # reservation lapsed gets none (a client id is a name anyone may say: one connection asking under a new
        # id every 2 s held the whole budget for as long as it went on)
        self.reserved_by: dict[int, Any] = {}
        self.lapsed_routes: dict[Any, float] = {}

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
        if self.arriving:
            self.arriving = {client: at for client, at in self.arriving.items() if now - at < ARRIVING_S}
        self.ticks += 1
        if self.active:
            since = self.ticks - ACTIVE_TICKS
            self.active = {client: tick for client, tick in self.active.items() if tick >= since}

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
        # Bytes are shared also with the clients waiting for room or holding room for a big request (a window
        # that let a request through ahead of them would be refused busy once the room went to them), with the
        # clients just arrived and with those answered lately.
        sharing = max(sharing + len(budget.reservations) + len(self.wanting), len(self.arriving), len(self.active))
        free = budget.free()
        if self.wanting:
            # Room freed is the first ask's until it has enough: small requests cannot overtake it for ever.
            head_client, head_cost, _at = next(iter(self.wanting.values()))
            if head_client != client_id:
                free -= head_cost
        # The client's results still on their way out count against its share, and it does not count them.
        unsent = budget.unsent_by_client.get(client_id, 0) if budget.unsent_by_client else 0
        return requests, max(0, min(budget.share(sharing), mine + free) - unsent)

    def welcome(self, route: Any, client_id: int) -> Window:
        """The window for a CLIENT_WELCOME to `route`, remembered as told."""
        window = self.told[route] = self.window(client_id)
        self.client_of[route] = client_id
        return window

    def arrived(self, route: Any, client_id: int, now: float) -> list[tuple[Any, Window]]:
        """A connection said CLIENT_HELLO: the other connections whose windows shrink now, with their new ones
        (sent at once: a window that shrank is told before its bytes are sent)."""
        known = client_id in self.arriving or client_id in self.budget.by_client
        self.arriving[client_id] = now
        if known or self.budget.limit is None or len(self.arriving) > ARRIVING_TOLD_MAX:
            return []
        others = [(r, c) for r, c in self.client_of.items() if r != route and c != client_id]
        return [(r, window) for r, c in others if (window := self.update(r, c)) is not None]

    def answered(self, route: Any, client_id: int) -> Window | None:
        """Results went to `route`: its client is active (ACTIVE_TICKS); the window to tell it, as update()."""
        self.active[client_id] = self.ticks
        return self.update(route, client_id)

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

    def want(self, route: Any, client_id: int, cost: int, now: float) -> int:
        """A connection asks for room for one request of `cost` bytes: the bytes reserved for it now, or 0
        (it waits in line, and grants() reserves them when they are free).

        A request no budget could hold is let go at once, unreserved, to hear why from the refusal. Room is
        reserved also for a request the window would let through now: sent on chance beside other clients'
        requests told the same free bytes, it was refused busy after it had arrived. A client whose last
        reservation lapsed unused is not put in line (MemoryBudget.lapsed_for)."""
        budget = self.budget
        if budget.limit is None or cost > budget.limit:
            return cost
        if self.sched.refusing or self._shut_out(route, client_id, now):
            self.wanting.pop(route, None)
            return 0
        if route not in self.told:
            return 0  # room goes to connections that said CLIENT_HELLO, and a lapse holds for the connection too
        held = budget.reservations.get(client_id)
        if held is not None and held[0] >= cost:
            return held[0]  # asked again while it is held (its answer crossed the ask)
        wanting = self.wanting
        first = not wanting or next(iter(wanting)) == route
        if first and self._reserve(route, client_id, cost, now):
            wanting.pop(route, None)
            return cost
        wanting[route] = (client_id, cost, now)  # one already in line keeps its place
        return 0

    def grants(self, now: float) -> list[tuple[Any, Window, int]]:
        """Room reserved now for connections that asked, first asked first: (route, window, bytes) each."""
        granted = []
        wanting = self.wanting
        for route, (client_id, cost, asked_at) in list(wanting.items()):
            if now - asked_at > WANT_FRESH_S:
                del wanting[route]  # it stopped asking
                continue
            if self._shut_out(route, client_id, now):
                del wanting[route]  # it let room lapse: not again for a while
                continue
            if not self._reserve(route, client_id, cost, now):
                break  # in order: who asked first is not overtaken by a smaller ask
            del wanting[route]
            window = self.window(client_id)
            if route in self.told:
                self.told[route] = window
            granted.append((route, window, cost))
        return granted

    def lapsed(self, client_ids: list[int], now: float) -> None:
        """Once per tick: these clients let their reservations lapse, and so did the connections they were
        granted to (shut out for LAPSED_S). What no longer matters is forgotten: the connections of
        reservations used or let go, lapses over."""
        for client_id in client_ids:
            route = self.reserved_by.pop(client_id, None)
            if route is not None:
                self.lapsed_routes[route] = now + LAPSED_S
        reservations = self.budget.reservations
        if len(self.reserved_by) > len(reservations):
            self.reserved_by = {c: r for c, r in self.reserved_by.items() if c in reservations}
        if self.lapsed_routes:
            self.lapsed_routes = {r: until for r, until in self.lapsed_routes.items() if until > now}

    def _shut_out(self, route: Any, client_id: int, now: float) -> bool:
        """True while this client, or this connection, may get no room: one of its reservations lapsed."""
        return self.budget.lapsed_for(client_id, now) or self.lapsed_routes.get(route, 0.0) > now

    def _reserve(self, route: Any, client_id: int, cost: int, now: float) -> bool:
        """Room for the client's next request, if the budget has it; remembered with the connection it goes to."""
        if not self.budget.reserve_room(client_id, cost, now):
            return False
        self.reserved_by[client_id] = route
        return True

    def forget(self, route: Any, client_id: int | None = None) -> None:
        """The connection is done (CLIENT_BYE): what it was told, asked for and reserved goes."""
        self.told.pop(route, None)
        self.client_of.pop(route, None)
        self.wanting.pop(route, None)
        if client_id is not None:
            self.budget.unreserve_room(client_id)

    def keep_only(self, routes: dict[Any, Any], older: dict[Any, Any]) -> None:
        """Forget the connections no longer among the balancer's routes (a route generation went)."""
        self.told = {route: w for route, w in self.told.items() if route in routes or route in older}
        self.client_of = {route: c for route, c in self.client_of.items() if route in self.told}
        self.wanting = {route: w for route, w in self.wanting.items() if route in routes or route in older}
