"""The memory budget: one ceiling for the request and result bytes the balancer holds.

Pure bookkeeping, owned by the scheduler (balancer/scheduler.py); the loop's
parts charge what they hold on the scheduler's behalf. Three things count:

- live requests: waiting or running (charged to their client), each what
  limits.request_cost() says: its payload, REQUEST_OVERHEAD_BYTES, and for a big
  payload (over limits.LONE_PAYLOAD_BYTES) room for its result as big again, from
  its admission: the result arrives while the payload is still held, so both are
  in memory at once;
- unsent results: results the loop could not hand to a full client pipe, and
  big results libzmq still holds for a client's connection
  (balancer/clients.py; charged to that client, until they leave or the
  client is gone);
- kept results: finished requests remembered for resubmissions. They are the
  only evictable part: beyond the budget the oldest are forgotten first, so
  they never cause a rejection.

Unsent results count REQUEST_OVERHEAD_BYTES each on top of their bytes. A submit
is refused when the live and unsent bytes (and the room reserved) would pass the
budget, or when its client already holds more than its share: SHARE_OF_LIMIT of
the budget divided by the number of clients holding bytes, so one client alone
may hold most of it, the rest is room for a newcomer's first requests (a client
holding nothing is refused only when the total is full), and one flooding client
cannot starve another. The same share sizes the windows the balancer grants its
clients (balancer/credit.py), so a Client that keeps to its window is refused only
when its window shrank after it was told.

What the budget cannot see is what libzmq receives before the loop reads it:
the loop reads every socket as soon as it can, and a payload it refuses is
freed at once (docs/RELIABILITY.md, "Memory"). So a payload bigger than its
client's window is not sent on chance: the Client asks for room first, and a
**reservation** holds that room for its one request (reserve_room(), counted
as taken until the request arrives or its time is up). Four clients each
sending a 16 MiB payload on chance into a 64 MiB budget had up to 64 MiB more
arriving in libzmq than the budget could take, all of it in RSS at once.
"""

from __future__ import annotations

from wire.limits import REQUEST_OVERHEAD_BYTES, request_cost
from wire.protocol import REASON_BUSY

__all__ = ["DEFAULT_MAX_MEMORY_MB", "REQUEST_OVERHEAD_BYTES", "MemoryBudget", "hwm_for"]

# The default of `zlb balancer --max-memory-mb`: a quarter of a 1 GiB machine.
DEFAULT_MAX_MEMORY_MB = 256
MIB = 2**20
# The part of the budget the clients holding requests share (each its fraction); the rest is room for a
# newcomer's first requests and for results on their way out, so neither waits for a flood to drain.
SHARE_OF_LIMIT = 0.75
# A reservation not used in time is let go: its client died, went elsewhere, or asks without sending. Its time
# is RESERVATION_S plus what its bytes take at RESERVATION_BYTES_PER_S (a 64 MiB payload and its result's
# room: 3 s), and asking again does not extend it. A client whose reservation lapsed is not given another for
# LAPSED_S or until it sends a request: connections that ask and never send could otherwise hold the whole
# budget in turns (two such connections kept a Client's small requests waiting 30 s).
RESERVATION_S = 1.0
RESERVATION_BYTES_PER_S = 64 * 2**20
LAPSED_S = 30.0


def hwm_for(limit_bytes: int | None) -> int:
    """Messages libzmq may queue per peer and direction: one per 64 KiB of budget, at least 1,000.

    256 MiB gives 4,096: a non-reading client pins at most that many results in its pipe
    (4 MiB at 1 KiB), and a flood at most that many messages per connection before libzmq
    stops reading it. 1,000 (libzmq's default) keeps pipelining clients at full speed.
    """
    if limit_bytes is None:
        return 100_000
    return max(1000, limit_bytes // 65536)


def _subtract(counts: dict[int, int], client_id: int, size: int) -> None:
    """Take `size` off a client's count; a count that reaches 0 goes (its dict's length is read as "holding")."""
    left = counts.get(client_id, 0) - size
    if left > 0:
        counts[client_id] = left
    else:
        counts.pop(client_id, None)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class MemoryBudget:
    """Bytes held, in total and per client, against a limit (None: no limit, bytes still counted)."""

    __slots__ = (
        "by_client",
        "kept",
        "lapsed",
        "limit",
        "live",
        "reservations",
        "reserved",
        "unsent",
        "unsent_by_client",
    )

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit = limit_bytes
        self.live = 0  # waiting and running requests (limits.request_cost)
        self.unsent = 0  # results held back for clients whose pipe is full, and big ones libzmq still holds
        self.kept = 0  # finished requests remembered (the scheduler sets it)
        self.by_client: dict[int, int] = {}  # live + unsent bytes per client id
        self.unsent_by_client: dict[int, int] = {}  # the unsent part of it (its client does not count it)
        self.reserved = 0  # room held for requests their clients were told to send (reserve_room)
        self.reservations: dict[int, tuple[int, float]] = {}  # client id -> (bytes held, let go at)
        self.lapsed: dict[int, float] = {}  # client id -> until when it gets no reservation (one lapsed)

    @property
    def held(self) -> int:
        """Every byte that counts against the budget."""
        return self.live + self.unsent + self.kept

    def over(self) -> bool:
        """True when kept results should be evicted (oldest first) to fit the budget."""
        limit = self.limit
        return limit is not None and self.live + self.unsent + self.kept > limit

    def charge(self, client_id: int, size: int, unsent: bool = False) -> None:
        """Count a request of a `size`-byte payload (limits.request_cost), or an unsent result of `size` bytes
        (plus the per-request overhead), for a client."""
        if unsent:
            size += REQUEST_OVERHEAD_BYTES
            self.unsent += size
            self.unsent_by_client[client_id] = self.unsent_by_client.get(client_id, 0) + size
        else:
            size = request_cost(size)
            self.live += size
        by_client = self.by_client
        by_client[client_id] = by_client.get(client_id, 0) + size

    def release(self, client_id: int, size: int, unsent: bool = False) -> None:
        """Stop counting what charge() counted."""
        if unsent:
            size += REQUEST_OVERHEAD_BYTES
            self.unsent -= size
            _subtract(self.unsent_by_client, client_id, size)
        else:
            size = request_cost(size)
            self.live -= size
        by_client = self.by_client  # inline, not _subtract: every finished request comes through here
        left = by_client.get(client_id, 0) - size
        if left > 0:
            by_client[client_id] = left
        else:
            by_client.pop(client_id, None)

    def could_hold(self, size: int) -> bool:
        """Whether a request of `size` bytes could ever fit the budget (with nothing else held)."""
        return self.limit is None or request_cost(size) <= self.limit

    def admit(self, client_id: int, size: int) -> str:
        """Charge a new request of `size` bytes to this client if it fits: ''; else why not (nothing charged).

        refusal() and charge() in one call: every submission comes through here. A request its client
        reserved room for (reserve_room) takes that room, whatever the client's share.
        """
        if self.reservations and self._use_reservation(client_id, size):
            self.charge(client_id, size)
            return ""
        if self.lapsed:
            self.lapsed.pop(client_id, None)  # it sends after all: slow, not asking for nothing
        refusal = self.refusal(client_id, size)
        if not refusal:
            self.charge(client_id, size)
        return refusal

    def refusal(self, client_id: int, size: int) -> str:
        """'' if a new request of `size` bytes from this client fits, else why not (REASON_BUSY first)."""
        limit = self.limit
        if limit is None:
            return ""
        size = request_cost(size)
        held = self.live + self.unsent + self.reserved
        if held + size > limit:
            return f"{REASON_BUSY}: the balancer holds {_mib(held)} of its {_mib(limit)}"
        mine = self.by_client.get(client_id, 0)
        if not mine:
            return ""  # a client holding nothing always gets a request in while the total fits
        holders = len(self.by_client)
        share = self.share(holders)
        if mine + size > share:
            return (
                f"{REASON_BUSY}: client {client_id} holds {_mib(mine)}, its share of the"
                f" {_mib(limit)} budget with {holders} clients holding requests"
            )
        return ""

    def share(self, holders: int) -> int:
        """The bytes each of `holders` clients holding requests may hold (a limit must be set)."""
        return int(self.limit * SHARE_OF_LIMIT) // max(1, holders)

    def free(self) -> int:
        """Bytes a new request may still take before the budget is full (kept results are evicted for it)."""
        return self.limit - self.live - self.unsent - self.reserved

    def reserve_room(self, client_id: int, cost: int, now: float) -> bool:
        """Hold `cost` bytes (limits.request_cost of a payload) for this client's next request of that
        size, until it comes or its time is up (RESERVATION_S and the bytes' time); False when the budget
        has no such room now. (Whether a client that let one lapse may ask is its caller's: Credit.)

        One reservation per client id: asking again while it is held changes nothing (a bigger ask
        replaces it)."""
        if self.limit is None:
            return True
        reservations = self.reservations
        have = reservations.get(client_id)
        if have is not None:
            if have[0] >= cost:
                return True
            self.unreserve_room(client_id)
        if cost > self.free():
            return False
        reservations[client_id] = (cost, now + RESERVATION_S + cost / RESERVATION_BYTES_PER_S)
        self.reserved += cost
        return True

    def unreserve_room(self, client_id: int) -> None:
        """Let go of what reserve_room held for this client (its connection said goodbye)."""
        have = self.reservations.pop(client_id, None)
        if have is not None:
            self.reserved -= have[0]

    def expire_rooms(self, now: float) -> list[int]:
        """Let go of the reservations whose time is up; their clients (returned) get none for LAPSED_S."""
        gone = [client_id for client_id, (_cost, until) in self.reservations.items() if until <= now]
        for client_id in gone:
            self.unreserve_room(client_id)
            self.lapsed[client_id] = now + LAPSED_S
        if self.lapsed:
            self.lapsed = {client_id: until for client_id, until in self.lapsed.items() if until > now}
        return gone

    def lapsed_for(self, client_id: int, now: float) -> bool:
        """True while this client may get no reservation (one of its lapsed)."""
        return self.lapsed.get(client_id, 0.0) > now

    def _use_reservation(self, client_id: int, size: int) -> bool:
        have = self.reservations.get(client_id)
        if have is None or request_cost(size) > have[0]:
            return False
        self.unreserve_room(client_id)
        return True

    def view(self) -> dict[str, int | None]:
        """What `zlb status` shows under "memory"."""
        return {
            "max_bytes": self.limit,
            "held_bytes": self.held,
            "live_bytes": self.live,
            "unsent_bytes": self.unsent,
            "kept_bytes": self.kept,
            "reserved_bytes": self.reserved,
            "clients_holding": len(self.by_client),
        }
