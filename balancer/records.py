"""The scheduler's records: requests, nodes, what a submit did, and the outbox.

Plain slotted dataclasses with no behaviour beyond a property or two; the
scheduler (balancer/scheduler.py) and the node table (balancer/nodes.py)
change them, the loop and the control commands read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wire.protocol import DEFAULT_SERVICE, PENDING

# Journal record kinds (the first element of each record tuple).
ACCEPTED = 1  # (ACCEPTED, client_id, request_id, priority, route, payload[, service, deadline])
# deadline: wall-clock seconds (time.time()), so a restarted balancer (or a standby) keeps it; None: none.
FINISHED = 2  # (FINISHED, client_id, request_id, priority, status, server_id, attempts, result, payload_digest)
# Finished earlier, its result no longer kept (balancer/earlier.py): the digest is cut to 60 bits, its sign kept.
EARLIER = 3  # (EARLIER, client_id, request_id, status, payload_digest | None)
# Request ids below `beyond` were handed out by next_request_id for this client id (balancer/sessions.py).
RESERVED = 4  # (RESERVED, client_id, beyond)
# In the dead letters (failed every attempt), with its payload for a retry (balancer/dead.py).
DEAD_LETTER = 5  # (DEAD_LETTER, client_id, request_id, priority, route, payload, service, attempts, error, server_id)


# The scheduler's counters, shown by `zlb status` under "requests".
COUNTERS = (
    "submitted", "processed", "failed", "requeued", "rejected", "duplicates", "replays", "conflicts",
    "late_results", "clients_refused", "nodes_refused", "lost_in_transit", "undeliverable", "busy",
    "answered_expired", "reclaimed", "expired", "cancelled", "dead", "retried", "dead_dropped",
)  # fmt: skip


def queue_full_reason(max_queue: int | None) -> str:
    return f"queue full ({max_queue} waiting)"


def conflict_reason(client_id: int, request_id: int) -> str:
    return (
        f"request id {request_id} of client {client_id} was already used with another payload;"
        " request ids are idempotency keys: pick a new one"
    )


class NodeState(str, Enum):
    """Where a node is in its life; see docs/PROTOCOL.md for the transitions."""

    ACTIVE = "active"
    DRAINING = "draining"
    DOWN = "down"
    DEAD = "dead"


@dataclass(slots=True, eq=False)
class Request:
    """One client request. `body` is the opaque payload, then the result."""

    client_id: int
    request_id: int
    priority: int
    # Its slot in the arrival order (balancer/index.py, Arrivals): the chunk that holds it, so
    # that forgetting it costs O(1); None once forgotten. A shared pointer, not a number: an
    # int per waiting request would be 32 bytes of the ~260 that a million queued cost.
    place: Any
    route: Any  # the client's routing identity, opaque here
    body: Any
    status: str = PENDING
    server_id: int | None = None
    attempts: int = 0
    # A digest of the payload, taken when the body becomes the result, so a re-send of a
    # finished request id with another payload is told apart (None: not known, e.g. restored).
    payload_digest: int | None = None
    service: str = DEFAULT_SERVICE  # which nodes may run it (those that offer it)


@dataclass(slots=True, eq=False)
class Node:
    """A server node as the balancer sees it: one incarnation of one node id."""

    node_id: int
    route: Any  # the node's routing identity, opaque here
    capacity: int
    pid: int
    host: str
    incarnation: int
    expires_at: float  # in the node table's listening time (balancer/nodes.py), not the monotonic clock
    last_seen: float
    state: NodeState = NodeState.ACTIVE
    in_flight: dict[int, Request] = field(default_factory=dict)
    handled: int = 0
    reported_dropped: int = 0  # messages the node could not send, from its heartbeat
    last_assigned: int = 0
    heap_seq: int = -1  # the push that is this node's live entry in the node heap
    # False after a send found no connection to it: no work until it is heard from again.
    reachable: bool = True
    # The ticket counter when its previous heartbeat arrived: work up to there has had
    # a whole interval to reach the node, so its absence from a heartbeat means something.
    ticket_mark: int = 0
    # Tickets missing from consecutive heartbeats, and how many times in a row.
    missing: dict[int, int] = field(default_factory=dict)
    services: tuple[str, ...] = (DEFAULT_SERVICE,)  # what it offers (HELLO); it runs only requests of these
    heaps: tuple[list, ...] = ()  # the node table's free-node heaps of those services (balancer/nodes.py)

    @property
    def active(self) -> bool:
        return self.state is NodeState.ACTIVE


class Submitted(Enum):
    """What `submit` did with a request."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"  # already waiting or running; the route was refreshed
    FINISHED = "finished"  # already finished; its result was queued for the client again
    CONFLICT = "conflict"  # the id was used before with another payload
    REJECTED = "rejected"  # the queue is full
    BUSY = "busy"  # over the memory budget, or the client over its share: retry later
    TOO_LARGE = "too_large"  # over the whole memory budget: no wait could let it in


@dataclass(slots=True)
class Outbox:
    """What the scheduler decided and the loop has yet to carry out; the loop takes each list."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    replies: list[Request] = field(default_factory=list)
    replays: list[Request] = field(default_factory=list)  # stored results answering another process
    journal: list[tuple[Any, ...]] | None = None
    # Work taken back from a node that still runs it (cancelled, or past its deadline): (route, ticket, reason).
    cancels: list[tuple[Any, int, str]] = field(default_factory=list)

    def take_cancels(self) -> list[tuple[Any, int, str]]:
        cancels, self.cancels = self.cancels, []
        return cancels

    def take_events(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def take_replies(self) -> list[Request]:
        replies, self.replies = self.replies, []
        return replies

    def take_replays(self) -> list[Request]:
        replays, self.replays = self.replays, []
        return replays

    def take_journal(self) -> list[tuple[Any, ...]]:
        records, self.journal = self.journal, []
        return records
