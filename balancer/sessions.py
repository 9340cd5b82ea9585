"""Client ids: names, and the requests remembered under each.

Pure, like the scheduler that owns them. A client id is a name, not a lock:
any number of processes may submit under one at once, each over its own
connection, and each result goes back to the connection that submitted it
(the request's route). What a client id keys is its requests: the dict of a
ClientSession maps request ids, the idempotency keys, to their requests, so
the same (client id, request id) from two processes is one request.
Connections come and go without the balancer holding anything for them: no
incarnation, no lease (docs/PROTOCOL.md, "Sessions").
"""

from __future__ import annotations


class ClientSession(dict):
    """One client id's remembered requests by request id.

    Every decoded header carries a fresh int for the client id (only -5..256
    are cached by Python); pointing each Request at this one copy saves 32
    bytes per waiting request, a tenth of the memory of a queued request.
    """

    __slots__ = ("client_id",)

    def __init__(self, client_id: int) -> None:
        super().__init__()
        self.client_id = client_id


class ClientSessions(dict):
    """ClientSession by client id."""

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
