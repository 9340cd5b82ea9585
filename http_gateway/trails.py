"""What the gateway remembers from the event stream for the console, beyond the balancer's own state.

The balancer keeps each request's status, node and attempt count, and each node's state and handled
count; it keeps no times. The gateway sees every event (it subscribes for the dashboard anyway), so it
keeps, from the moment it started:

- `RequestTrails`: the recent events of each recent request (bounded), from which a request's detail
  shows its attempts with their nodes and times;
- `ServerTrails`: since when each node is in its state, and how many of its requests failed or were
  re-queued (lost with it).

Both are fed and read on the event loop's thread (the hub's), never from a worker thread.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from wire import events as ev

# Requests whose events are kept (the oldest forgotten first), and events kept per request.
KEEP_REQUESTS = 20_000
EVENTS_PER_REQUEST = 32
# What ends an attempt, in words.
OUTCOMES = {ev.REQUEST_PROCESSED: "processed", ev.REQUEST_FAILED: "failed", ev.REQUEST_REQUEUED: "re-queued"}
_REQUEST_KINDS = frozenset(
    {ev.REQUEST_ADDED, ev.REQUEST_ASSIGNED, ev.REQUEST_PROCESSED, ev.REQUEST_FAILED, ev.REQUEST_REQUEUED,
     ev.REQUEST_REJECTED}
)  # fmt: skip
_NODE_STATE_KINDS = frozenset(
    {ev.NODE_JOINED, ev.NODE_DEAD, ev.NODE_DISCONNECTED, ev.NODE_DOWN, ev.NODE_UP, ev.NODE_DRAINING, ev.NODE_LEFT,
     ev.NODE_REPLACED, ev.NODE_KEPT_OUT}
)  # fmt: skip


class RequestTrails:
    """The recent stamped events `[ts, kind, client_id, request_id, ...]` of each recent request."""

    def __init__(self, keep: int = KEEP_REQUESTS) -> None:
        self.keep = keep
        self._trails: OrderedDict[tuple[int, int], list[list[Any]]] = OrderedDict()

    def feed(self, stamped: list[list[Any]]) -> None:
        trails = self._trails
        for event in stamped:
            if event[1] not in _REQUEST_KINDS or len(event) < 4:
                continue
            key = (event[2], event[3])
            trail = trails.get(key)
            if trail is None:
                trail = trails[key] = []
                if len(trails) > self.keep:
                    trails.popitem(last=False)
            if len(trail) < EVENTS_PER_REQUEST:
                trail.append(event)

    def of(self, client_id: int, request_id: int) -> dict[str, Any]:
        """A request's events (ts, kind, message) and its attempts (node, assigned at, ended at, outcome),
        under names that leave the balancer's row as it is (its `attempts` is a count)."""
        trail = self._trails.get((client_id, request_id), [])
        events = [{"ts": e[0], "kind": e[1], "message": ev.message(e)} for e in trail]
        return {"events": events, "attempt_log": attempts(trail)}


def attempts(trail: list[list[Any]]) -> list[dict[str, Any]]:
    """Each assignment of a request, with the event that ended it (if one came)."""
    out: list[dict[str, Any]] = []
    for event in trail:
        record = ev.parse(event)
        if record is None:
            continue
        if record.kind == ev.REQUEST_ASSIGNED:
            out.append({"attempt": record.attempt, "server_id": record.server_id, "assigned_at": record.ts,
                        "ended_at": None, "outcome": None})  # fmt: skip
        elif record.kind in OUTCOMES and out and out[-1]["ended_at"] is None:
            out[-1].update(ended_at=record.ts, outcome=OUTCOMES[record.kind])
    return out


class ServerTrails:
    """Per node: the state as last seen and since when, and failures and re-queues counted from events."""

    def __init__(self, started: float) -> None:
        self.started = started  # counts and times run from here
        self._state: dict[int, str] = {}
        self._since: dict[int, float | None] = {}
        self._changed_at: dict[int, float] = {}  # the last node event's time, for a state change it explains
        self.failures: Counter[int] = Counter()
        self.requeues: Counter[int] = Counter()

    def feed(self, stamped: list[list[Any]]) -> None:
        for event in stamped:
            kind = event[1]
            if kind in _NODE_STATE_KINDS:
                self._changed_at[event[2]] = event[0]
            elif kind == ev.REQUEST_FAILED and len(event) >= 5 and event[4] is not None:
                self.failures[event[4]] += 1
            elif kind == ev.REQUEST_REQUEUED and len(event) >= 7 and event[6] is not None:
                self.requeues[event[6]] += 1

    def annotate(self, servers: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The `servers` rows with `state_since` (None: before the gateway watched), `failures`, `requeues`."""
        out = []
        for row in servers:
            node, state = row["server_id"], row["state"]
            if self._state.get(node) != state:
                self._since[node] = self._start_of(node, now)
                self._state[node] = state
            out.append({**row, "state_since": self._since[node], "failures": self.failures[node],
                        "requeues": self.requeues[node]})  # fmt: skip
        return out

    def _start_of(self, node: int, now: float) -> float | None:
        """When a node's newly seen state began: its last node event's time when that is news, else now;
        None for a node seen first in its state with no event (there before the gateway watched)."""
        changed, before = self._changed_at.get(node), self._since.get(node)
        if changed is not None and (before is None or changed > before):
            return changed
        return None if node not in self._state else now
