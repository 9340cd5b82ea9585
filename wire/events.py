"""Event records: what happened in the balancer, and how it reads as a log line.

The scheduler emits compact tuples `(kind, *args)`; the loop stamps them with
wall-clock time and publishes them in batches. Consumers read them as named
records (`parse(event).server_id`; one NamedTuple class per kind, from FIELDS).
Producers keep plain tuples because they sit on the hot path: building a
NamedTuple costs 0.24 us against 0.06 us for a tuple, three per request. Nothing formats a line on the
hot path: formatting happens where a line is shown (the log file writer, the
monitor, `zlb logs`). The wording follows the seed's log where it has one.
"""

from __future__ import annotations

import time
from collections import namedtuple
from typing import Any

from wire.protocol import TOPIC_NODE, TOPIC_REQUEST, TOPIC_STATS, TOPIC_SYSTEM

REQUEST_ADDED = "request.added"
REQUEST_ASSIGNED = "request.assigned"
REQUEST_PROCESSED = "request.processed"
REQUEST_FAILED = "request.failed"
REQUEST_REQUEUED = "request.requeued"
REQUEST_REJECTED = "request.rejected"
REQUEST_LATE_RESULT = "request.late_result"
# The work model (protocol version 5): a request ended unrun or stopped (expired, cancelled), failed
# every attempt (dead), was queued again from the dead letters (retried), or waits for a service no
# live node offers (unserved, said when such a request arrives).
REQUEST_ENDED = "request.ended"
REQUEST_DEAD = "request.dead"
REQUEST_RETRIED = "request.retried"
REQUEST_UNSERVED = "request.unserved"
NODE_JOINED = "node.joined"
NODE_DEAD = "node.dead"
# Dead because its connection dropped and did not come back within the grace (balancer/drops.py).
NODE_DISCONNECTED = "node.disconnected"
NODE_DOWN = "node.down"
NODE_UP = "node.up"
NODE_DRAINING = "node.draining"
NODE_DRAINED = "node.drained"
NODE_LEFT = "node.left"
NODE_REPLACED = "node.replaced"
NODE_RESYNCED = "node.resynced"
NODE_REFUSED = "node.refused"
NODE_KEPT_OUT = "node.kept_out"
NODE_RETURNED = "node.returned"
SYSTEM_STARTED = "system.started"
SYSTEM_CONFIGURED = "system.configured"
SYSTEM_BAD_INPUT = "system.bad_input"
SYSTEM_JOURNAL_RESTORED = "system.journal_restored"
SYSTEM_STOPPING = "system.stopping"
SYSTEM_CLIENT_REFUSED = "system.client_refused"
STATS = "stats.tick"
SYSTEM_JOURNAL_DAMAGED = "system.journal_damaged"
SYSTEM_JOURNAL_FAILED = "system.journal_failed"
SYSTEM_JOURNAL_RECOVERED = "system.journal_recovered"
SYSTEM_LOG_DEGRADED = "system.log_degraded"
SYSTEM_LOG_RESUMED = "system.log_resumed"
SYSTEM_BUSY = "system.busy"
SYSTEM_CLIENT_PAUSED = "system.client_paused"
# HA (balancer/member.py, replication.py): leadership and the standby.
SYSTEM_HA_LEADING = "system.ha_leading"
SYSTEM_HA_STEPPED_DOWN = "system.ha_stepped_down"
SYSTEM_HA_FOLLOWING = "system.ha_following"
SYSTEM_HA_STANDBY_DROPPED = "system.ha_standby_dropped"
SYSTEM_HA_ALONE = "system.ha_alone"
SYSTEM_HA_ETCD = "system.ha_etcd"

# Positional argument names of each kind, for JSON output and lookups by name.
FIELDS: dict[str, tuple[str, ...]] = {
    REQUEST_ADDED: ("client_id", "request_id", "priority"),
    REQUEST_ASSIGNED: ("client_id", "request_id", "server_id", "attempt"),
    REQUEST_PROCESSED: ("client_id", "request_id", "server_id"),
    REQUEST_FAILED: ("client_id", "request_id", "server_id", "reason"),
    REQUEST_REQUEUED: ("client_id", "request_id", "priority", "attempts", "server_id"),
    REQUEST_REJECTED: ("client_id", "request_id", "reason"),
    REQUEST_LATE_RESULT: ("server_id", "ticket"),
    REQUEST_ENDED: ("client_id", "request_id", "status", "server_id"),
    REQUEST_DEAD: ("client_id", "request_id", "attempts", "reason"),
    REQUEST_RETRIED: ("client_id", "request_id", "priority"),
    REQUEST_UNSERVED: ("client_id", "request_id", "service"),
    NODE_JOINED: ("server_id", "capacity", "pid", "host"),
    NODE_DEAD: ("server_id", "silent_s", "requeued"),
    NODE_DISCONNECTED: ("server_id", "silent_s", "requeued"),
    NODE_DOWN: ("server_id", "requeued"),
    NODE_UP: ("server_id",),
    NODE_DRAINING: ("server_id", "in_flight"),
    NODE_DRAINED: ("server_id",),
    NODE_LEFT: ("server_id", "requeued"),
    NODE_REPLACED: ("server_id", "pid", "host", "requeued"),
    NODE_RESYNCED: ("server_id", "requeued"),
    NODE_REFUSED: ("server_id", "reason"),
    NODE_KEPT_OUT: ("server_id", "state"),
    NODE_RETURNED: ("server_id", "kept", "elsewhere"),
    SYSTEM_STARTED: ("frontend", "backend", "events", "control"),
    SYSTEM_CONFIGURED: ("servers", "clients"),
    SYSTEM_BAD_INPUT: ("socket", "kind", "detail", "count"),
    SYSTEM_JOURNAL_RESTORED: ("path", "pending", "finished", "torn_bytes"),
    SYSTEM_STOPPING: ("in_flight", "waiting"),
    SYSTEM_CLIENT_REFUSED: ("client_id", "reason"),
    STATS: ("queue_depth", "in_flight", "servers_active", "submitted", "processed", "failed", "requeued"),
    SYSTEM_JOURNAL_DAMAGED: ("path", "records_lost", "bytes_skipped", "bytes_missing", "kept_as"),
    SYSTEM_JOURNAL_FAILED: ("path", "error"),
    SYSTEM_JOURNAL_RECOVERED: ("path", "failing_s", "requests"),
    SYSTEM_LOG_DEGRADED: ("path", "error"),
    SYSTEM_LOG_RESUMED: ("path", "lines_dropped"),
    SYSTEM_BUSY: ("client_id", "reason"),
    SYSTEM_CLIENT_PAUSED: ("client_id", "reason"),
    SYSTEM_HA_LEADING: ("name", "epoch", "restored"),
    SYSTEM_HA_STEPPED_DOWN: ("name", "epoch", "reason"),
    SYSTEM_HA_FOLLOWING: ("standby", "records"),
    SYSTEM_HA_STANDBY_DROPPED: ("standby", "reason"),
    SYSTEM_HA_ALONE: ("name",),
    SYSTEM_HA_ETCD: ("ok", "reason"),
}

LEVELS: dict[str, str] = {
    NODE_DEAD: "WARNING",
    NODE_DISCONNECTED: "WARNING",
    NODE_DOWN: "WARNING",
    REQUEST_FAILED: "WARNING",
    REQUEST_REJECTED: "WARNING",
    REQUEST_REQUEUED: "WARNING",
    REQUEST_ENDED: "WARNING",
    REQUEST_DEAD: "ERROR",
    REQUEST_UNSERVED: "WARNING",
    SYSTEM_BAD_INPUT: "WARNING",
    SYSTEM_STOPPING: "WARNING",
    NODE_REPLACED: "WARNING",
    NODE_RESYNCED: "WARNING",
    NODE_REFUSED: "WARNING",
    NODE_KEPT_OUT: "WARNING",
    NODE_RETURNED: "WARNING",
    SYSTEM_CLIENT_REFUSED: "WARNING",
    SYSTEM_JOURNAL_DAMAGED: "ERROR",
    SYSTEM_JOURNAL_FAILED: "ERROR",
    SYSTEM_LOG_DEGRADED: "ERROR",
    SYSTEM_BUSY: "WARNING",
    SYSTEM_CLIENT_PAUSED: "WARNING",
    SYSTEM_HA_STEPPED_DOWN: "WARNING",
    SYSTEM_HA_STANDBY_DROPPED: "ERROR",
    SYSTEM_HA_ALONE: "WARNING",
    SYSTEM_HA_ETCD: "WARNING",
}


def _server(server_id: Any) -> str:
    """`Server N`, or what it is when the balancer could not name it (never a Python None in a line)."""
    return "a server the balancer no longer knows" if server_id is None else f"Server {server_id}"


def _fmt_requeued(a: tuple[Any, ...]) -> str:
    client, request, priority, attempts, server = a
    if attempts == 0:  # lost in transit (its WORK never left, or a live node never got it): no attempt counted
        lost = f"({_server(server)} never got it, or its answer was lost: no attempt counted)"
    else:
        lost = f"after attempt {attempts} ({_server(server)} lost it)"
    return f"Request {request} from Client {client} re-queued with priority {priority} {lost}"


_TEMPLATES: dict[str, Any] = {
    REQUEST_ADDED: lambda a: f"Request {a[1]} from Client {a[0]} added to queue with priority {a[2]}",
    REQUEST_ASSIGNED: lambda a: f"✅ Request {a[1]} assigned to {_server(a[2])}",
    REQUEST_PROCESSED: lambda a: f"Request {a[1]} from Client {a[0]} processed by {_server(a[2])}",
    REQUEST_FAILED: lambda a: f"❌ Request {a[1]} from Client {a[0]} failed: {a[3]}",
    REQUEST_REQUEUED: _fmt_requeued,
    REQUEST_REJECTED: lambda a: f"Request {a[1]} from Client {a[0]} rejected: {a[2]}",
    REQUEST_LATE_RESULT: lambda a: f"Late result for ticket {a[1]} from {_server(a[0])} dropped",
    REQUEST_ENDED: lambda a: (
        f"Request {a[1]} from Client {a[0]} {a[2]}"
        + ("" if a[3] is None else f" (was running on {_server(a[3])}, told to stop)")
    ),
    REQUEST_DEAD: lambda a: f"☠️ Request {a[1]} from Client {a[0]} is dead after {a[2]} attempts: {a[3]}",
    REQUEST_RETRIED: lambda a: f"Request {a[1]} from Client {a[0]} retried from the dead letters (priority {a[2]})",
    REQUEST_UNSERVED: lambda a: f"Request {a[1]} from Client {a[0]} waits: no live server offers service {a[2]!r}",
    NODE_JOINED: lambda a: f"Server {a[0]} joined (capacity {a[1]}, pid {a[2]} on {a[3]})",
    NODE_DEAD: lambda a: f"⚠️ Server {a[0]} is dead (silent for {a[1]:.1f} s); {a[2]} requests re-queued",
    NODE_DISCONNECTED: lambda a: (
        f"⚠️ Server {a[0]} is dead (its connection dropped; last heard {a[1]:.1f} s before); {a[2]} requests re-queued"
    ),
    NODE_DOWN: lambda a: f"Server {a[0]} marked as down; {a[1]} requests re-queued",
    NODE_UP: lambda a: f"Server {a[0]} marked as up",
    NODE_DRAINING: lambda a: f"Server {a[0]} draining ({a[1]} requests in flight)",
    NODE_DRAINED: lambda a: f"Server {a[0]} drained",
    NODE_LEFT: lambda a: f"Server {a[0]} left; {a[1]} requests re-queued",
    NODE_REPLACED: lambda a: f"⚠️ Server {a[0]} taken over by pid {a[1]} on {a[2]}; {a[3]} requests re-queued",
    NODE_RESYNCED: lambda a: f"⚠️ Server {a[0]} resynced; {a[1]} requests lost on the way re-queued",
    NODE_REFUSED: lambda a: f"⚠️ A second Server {a[0]} was refused: {a[1]}",
    NODE_KEPT_OUT: lambda a: f"Server {a[0]} rejoined and stays {a[1]}: an admin's choice holds until zlb up {a[0]}",
    NODE_RETURNED: lambda a: (
        f"⚠️ Server {a[0]} came back holding work it was declared dead with: {a[1]} requests stay with it,"
        f" {a[2]} run elsewhere too (that death not counted as an attempt)"
    ),
    SYSTEM_STARTED: lambda a: f"Balancer started (frontend {a[0]}, backend {a[1]}, events {a[2]}, control {a[3]})",
    SYSTEM_CONFIGURED: lambda a: f"System configured with {a[0]} servers and {a[1]} clients.",
    SYSTEM_BAD_INPUT: lambda a: f"Dropped bad message on {a[0]}: {a[1]} ({a[2]}); {a[3]} so far",
    SYSTEM_JOURNAL_RESTORED: lambda a: f"Journal {a[0]} restored: {a[1]} requests to run again, {a[2]} finished",
    SYSTEM_CLIENT_REFUSED: lambda a: f"A second Client {a[0]} was refused: {a[1]}",
    SYSTEM_STOPPING: lambda a: f"Balancer stopping: {a[0]} in flight finish first, {a[1]} waiting stay queued",
    STATS: lambda a: f"{a[0]} waiting, {a[1]} in flight, {a[2]} servers active, {a[4]} processed",
    SYSTEM_JOURNAL_DAMAGED: lambda a: (
        f"Journal {a[0]} was damaged: {a[1]} records lost, {a[2]} bytes skipped"
        + (f", {a[3]} bytes cut off its end" if a[3] else "")
        + f"; the damaged file is kept as {a[4]}"
    ),
    SYSTEM_JOURNAL_FAILED: lambda a: (
        f"Journal {a[0]} cannot be written: {a[1]}; new requests are refused (busy) and results held until it can"
    ),
    SYSTEM_JOURNAL_RECOVERED: lambda a: (
        f"Journal {a[0]} is written again after {a[1]} s: a fresh snapshot of {a[2]} requests; requests accepted again"
    ),
    SYSTEM_LOG_DEGRADED: lambda a: f"Log file {a[0]} cannot be written ({a[1]}); lines are dropped and counted",
    SYSTEM_LOG_RESUMED: lambda a: f"Log file {a[0]} is written again; {a[1]} lines were dropped",
    SYSTEM_BUSY: lambda a: f"Submit of Client {a[0]} refused for now: {a[1]}",
    SYSTEM_CLIENT_PAUSED: lambda a: f"Client {a[0]} paused: {a[1]}",
    SYSTEM_HA_LEADING: lambda a: f"Balancer {a[0]} leads with epoch {a[1]}; {a[2]} requests restored from its journal",
    SYSTEM_HA_STEPPED_DOWN: lambda a: f"Balancer {a[0]} stopped leading (epoch {a[1]}): {a[2]}",
    SYSTEM_HA_FOLLOWING: lambda a: f"Standby {a[0]} follows: snapshot of {a[1]} records sent",
    SYSTEM_HA_STANDBY_DROPPED: lambda a: f"Standby {a[0]} dropped from the synchronous path: {a[1]}",
    SYSTEM_HA_ALONE: lambda a: f"Leader {a[0]} has no standby in sync: a loss of this host would lose answered work",
    SYSTEM_HA_ETCD: lambda a: "etcd reachable again" if a[0] else f"etcd unreachable: {a[1]}",
}


def topic_of(kind: str) -> bytes:
    """The PUB topic an event kind is published under."""
    if kind.startswith("request."):
        return TOPIC_REQUEST
    if kind.startswith("node."):
        return TOPIC_NODE
    if kind.startswith("stats."):
        return TOPIC_STATS
    return TOPIC_SYSTEM


# The topic of every known kind, looked up once per published event.
TOPICS: dict[str, bytes] = {kind: topic_of(kind) for kind in FIELDS}


def topic_of_event(event: tuple[Any, ...]) -> bytes:
    """The PUB topic of an event tuple `(kind, *args)`."""
    return TOPICS.get(event[0]) or topic_of(event[0])


def message(event: list[Any] | tuple[Any, ...]) -> str:
    """The human log line of a stamped event `[ts, kind, *args]`."""
    kind = event[1]
    template = _TEMPLATES.get(kind)
    if template is None:
        return f"{kind} {list(event[2:])}"
    try:
        return template(tuple(event[2:]))
    except (IndexError, TypeError, ValueError):
        return f"{kind} {list(event[2:])}"


def level(kind: str) -> str:
    """The log level of an event kind."""
    return LEVELS.get(kind, "INFO")


def clock_ms(ts: float) -> str:
    """`HH:MM:SS.mmm` in local time: how every log view but the file stamps a line."""
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))}.{int(ts * 1000) % 1000:03d}"


def timed_line(event: list[Any] | tuple[Any, ...]) -> str:
    """`HH:MM:SS.mmm message`: a stamped event as `zlb logs`, `zlb monitor --plain` and `/logs` show it."""
    return f"{clock_ms(event[0])} {message(event)}"


def log_line(event: list[Any] | tuple[Any, ...]) -> str:
    """A log-file line: ISO timestamp, level, kind and the message."""
    ts = event[0]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
    return f"{stamp} {level(event[1]):7} {event[1]:18} {message(event)}"


def as_dict(event: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A stamped event as a JSON-ready map with named fields and its message."""
    kind = event[1]
    names = FIELDS.get(kind, ())
    out: dict[str, Any] = {"ts": event[0], "kind": kind}
    out.update(zip(names, event[2:]))
    out["message"] = message(event)
    return out


# ---- named records: how consumers read events -------------------------------


def _record_class(kind: str) -> type:
    name = "".join(part.title() for part in kind.replace(".", "_").split("_"))
    cls = namedtuple(name, ("ts", *FIELDS[kind]))
    cls.kind = kind
    return cls


# One record class per kind, fields named as in FIELDS: `parse(e).server_id`, never `e[4]`.
RECORDS: dict[str, type] = {kind: _record_class(kind) for kind in FIELDS}


def parse(event: list[Any] | tuple[Any, ...]) -> Any:
    """A stamped event `[ts, kind, *args]` as its kind's named record; None if the kind or arity is unknown

    (an event from another protocol version: shown as a log line, not applied).
    """
    cls = RECORDS.get(event[1]) if len(event) >= 2 else None
    if cls is None or len(event) - 1 != len(cls._fields):
        return None
    return cls(event[0], *event[2:])
