"""Client ids: names, and the requests remembered under each.

Pure, like the scheduler that owns them. A client id is a name, not a lock:
any number of processes may submit under one at once, each over its own
connection, and each result goes back to the connection that submitted it
(the request's route). What a client id keys is its requests: the dict of a
ClientSession maps request ids, the idempotency keys, to their requests, so
the same (client id, request id) from two processes is one request.
Connections come and go without the balancer holding anything for them: no
incarnation, no lease (docs/PROTOCOL.md, "Sessions").

Request ids handed out by next_request_id (a control query, for `zlb client`
without --first-request-id) are reserved per client id, so two runs asking at
once get ranges of their own; reservations are journaled (RESERVED records).
"""

from __future__ import annotations

from array import array

from balancer.earlier import PAGE_BITS

# Client ids with a reservation held at once; beyond, the oldest reservation is let go of.
MAX_RESERVATIONS = 65_536
# Ids one next_request_id may reserve: a run of zlb client sends at most this many.
MAX_RESERVE = 2**32
MAX_REQUEST_ID = 2**64 - 1


class ClientSession(dict):
    """One client id's remembered requests by request id, and the highest request id it accepted.

    Every decoded header carries a fresh int for the client id (only -5..256
    are cached by Python); pointing each Request at this one copy saves 32
    bytes per waiting request, a tenth of the memory of a queued request.
    """

    __slots__ = ("client_id", "highest")

    def __init__(self, client_id: int) -> None:
        super().__init__()
        self.client_id = client_id
        self.highest = -1  # the highest request id accepted while this session lived (-1: none)


class ClientSessions(dict):
    """ClientSession by client id; request id reservations by client id."""

    def __init__(self) -> None:
        super().__init__()
        # client id -> the first request id past the last range next_request_id handed out, oldest first
        self.reserved: dict[int, int] = {}

    def sweep(self) -> int:
        """Forget sessions that remember no request (a refused submit made one); return how many."""
        idle = [cid for cid, s in self.items() if not s]
        for cid in idle:
            del self[cid]
        return len(idle)

    def of(self, client_id: int) -> ClientSession:
        """The session of a client id, made on first use."""
        session = self.get(client_id)
        if session is None:
            session = self[client_id] = ClientSession(client_id)
        return session

    def add(self, client_id: int, request_id: int, req: object) -> None:
        """Remember a request under its ids (a restored one: a submit does this inline)."""
        session = self.of(client_id)
        session[request_id] = req
        if request_id > session.highest:
            session.highest = request_id

    def next_request_id(self, client_id: int, count: int, earlier: dict[int, array] | None) -> int:
        """The first of `count` request ids above every id this client id is remembered by, and above every
        range handed out before; reserved from now on. `earlier`: the client's pages of ids past their results.
        """
        if not 1 <= count <= MAX_RESERVE:
            raise ValueError(f"count {count} is out of range (1 to {MAX_RESERVE})")
        session = self.get(client_id)
        first = max(1, session.highest + 1 if session is not None else 0, self.reserved.pop(client_id, 0))
        if earlier:
            top = max(earlier)
            first = max(first, (top << PAGE_BITS) + earlier[top][0].bit_length())  # the used-slot bitmap
        if first + count - 1 > MAX_REQUEST_ID:
            raise ValueError(f"client id {client_id} has no {count} unused request ids left below 2**64")
        self.reserve(client_id, first + count)
        return first

    def reserve(self, client_id: int, beyond: int) -> None:
        """Ids below `beyond` were handed out for this client id (also when restored from a journal)."""
        reserved = self.reserved
        beyond = max(beyond, reserved.pop(client_id, 0))
        if len(reserved) >= MAX_RESERVATIONS:
            del reserved[next(iter(reserved))]
        reserved[client_id] = beyond
