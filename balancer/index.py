"""Queries over the scheduler's requests at a cost that follows what they read, not what is held.

The scheduler already keeps every request in a structure of its status, so
those are the index; nothing extra is maintained on the hot path:

- pending: the waiting queue (balancer/waiting.py), read lazily in dispatch order;
- assigned: the nodes' in-flight tables (bounded by their capacity);
- processed and failed: the finished requests whose results are kept (balancer/kept.py);
- by client: the client's session, read lazily in submission order.

So `zlb requests --limit 10` over a million waiting requests reads about ten
of them, where sorting everything took 191 ms at 500,000. The order without
--client is the order of first dispatch, never-dispatched requests last in
the order they will be dispatched; with --client it is submission order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import chain

from balancer.kept import KeptResults
from balancer.records import Node, Request
from balancer.sessions import ClientSessions
from balancer.waiting import WaitingQueue
from wire.protocol import ASSIGNED, FAILED, PENDING, PROCESSED


def _seq(req: Request) -> int:
    return req.seq or 0


def requests(
    queue: WaitingQueue,
    kept: KeptResults,
    nodes: Mapping[bytes, Node],
    sessions: ClientSessions,
    status: str | None = None,
    client_id: int | None = None,
) -> Iterator[Request]:
    """Remembered requests, optionally filtered by status and client, read lazily where the list is long."""
    if client_id is not None:
        # Lazy over the session dict: a query runs to its end within one loop step, nothing changes meanwhile.
        session = sessions.get(client_id)
        pool: Iterable[Request] = session.values() if session else ()
        return (r for r in pool if status is None or r.status == status)
    dispatched: list[Request] = []
    if status in (None, PROCESSED, FAILED):
        dispatched.extend(r for r in kept if status is None or r.status == status)
    if status in (None, ASSIGNED):
        for node in nodes.values():
            dispatched.extend(node.in_flight.values())
    waiting: Iterable[Request] = ()
    if status in (None, PENDING):
        dispatched.extend(queue.retried())
        waiting = (r for r in queue if r.seq is None)
    dispatched.sort(key=_seq)
    return chain(dispatched, waiting)
