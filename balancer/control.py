"""Admin commands and queries served on the balancer's control socket.

Each command is a short function over the balancer's state that returns a
JSON-ready value or raises CommandError; the loop wraps it into a reply map
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. Errors are
replies, never silence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balancer import events as ev
from balancer.eventlog import EventLog
from balancer.protocol import STATUSES
from balancer.scheduler import Node, Request, Scheduler

DEFAULT_REQUEST_LIMIT = 1000


class CommandError(Exception):
    """A control request that cannot be carried out; its text is the reply."""


@dataclass
class BalancerState:
    """What control commands may read and change: the loop's own objects."""

    scheduler: Scheduler
    eventlog: EventLog
    endpoints: dict[str, str]
    started_mono: float
    started_wall: float
    bad_input: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def node_view(node: Node, now: float) -> dict[str, Any]:
    """A node as `zlb servers` shows it (the seed's shape plus ours)."""
    return {
        "server_id": node.node_id,
        "handled_requests": node.handled,
        "active": node.active,
        "state": node.state.value,
        "in_flight": len(node.in_flight),
        "capacity": node.capacity,
        "pid": node.pid,
        "host": node.host,
        "last_heartbeat_ms_ago": round((now - node.last_seen) * 1000),
    }


def request_view(req: Request) -> dict[str, Any]:
    """A request as `zlb requests` shows it (the seed's shape plus ours)."""
    return {
        "client_id": req.client_id,
        "request_id": req.request_id,
        "priority": req.priority,
        "status": req.status,
        "server_id": req.server_id,
        "attempts": req.attempts,
    }


def _int_arg(args: dict[str, Any], name: str, required: bool = True, minimum: int | None = None) -> int | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if type(value) is not int:
        raise CommandError(f"'{name}' must be an integer")
    if minimum is not None and value < minimum:
        raise CommandError(f"'{name}' must be at least {minimum}")
    return value


def cmd_servers(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    return [node_view(n, now) for _id, n in sorted(state.scheduler.nodes.items())]


def cmd_requests(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise CommandError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    client = _int_arg(args, "client", required=False)
    limit = _int_arg(args, "limit", required=False, minimum=0)
    limit = DEFAULT_REQUEST_LIMIT if limit is None else limit
    out = []
    for req in state.scheduler.requests(status, client):
        if limit and len(out) >= limit:
            break
        out.append(request_view(req))
    return out


def cmd_status(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    sched = state.scheduler
    nodes = list(sched.nodes.values())
    return {
        "uptime_s": round(now - state.started_mono, 3),
        "started_at": state.started_wall,
        "endpoints": state.endpoints,
        "servers": len(nodes),
        "servers_active": sum(1 for n in nodes if n.active),
        "servers_by_state": _count_by(n.state.value for n in nodes),
        "queue_depth": sched.waiting,
        "queue_by_priority": {str(p): n for p, n in sched.waiting_by_priority().items()},
        "in_flight": sched.in_flight(),
        "requests": dict(sched.counters),
        "bad_input": dict(state.bad_input),
        "counters": dict(state.counters),
    }


def _count_by(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def cmd_logs(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    limit = _int_arg(args, "limit", required=False, minimum=0)
    events = state.eventlog.recent(limit)
    if args.get("format") == "events":
        return [ev.as_dict(e) for e in events]
    return [ev.message(e) for e in events]


def _admin(method: str) -> Callable[[BalancerState, dict[str, Any], float], Any]:
    """A command that applies one scheduler admin transition to a node."""

    def run(state: BalancerState, args: dict[str, Any], now: float) -> Any:
        node_id = _int_arg(args, "server_id")
        try:
            node = getattr(state.scheduler, method)(node_id)
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        return node_view(node, now)

    return run


def cmd_configure(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    servers = _int_arg(args, "servers", minimum=0)
    clients = _int_arg(args, "clients", minimum=0)
    state.scheduler.events.append((ev.SYSTEM_CONFIGURED, servers, clients))
    return {"servers": servers, "clients": clients}


def cmd_snapshot(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    return {
        "status": cmd_status(state, {}, now),
        "servers": cmd_servers(state, {}, now),
        "logs": [ev.as_dict(e) for e in state.eventlog.recent(_int_arg(args, "logs", False, 0) or 50)],
    }


def cmd_ping(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    return {"pong": True, "uptime_s": round(now - state.started_mono, 3)}


COMMANDS: dict[str, Callable[[BalancerState, dict[str, Any], float], Any]] = {
    "servers": cmd_servers,
    "requests": cmd_requests,
    "status": cmd_status,
    "logs": cmd_logs,
    "down": _admin("mark_down"),
    "up": _admin("mark_up"),
    "drain": _admin("drain"),
    "configure": cmd_configure,
    "snapshot": cmd_snapshot,
    "ping": cmd_ping,
}


def handle(state: BalancerState, request: dict[str, Any], now: float) -> dict[str, Any]:
    """Run one control request and build its reply map."""
    cmd = request.get("cmd")
    command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if command is None:
        return {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}"}
    try:
        return {"ok": True, "result": command(state, request, now)}
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}
