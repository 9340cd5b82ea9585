"""Admin commands and queries served on the balancer's control socket.

Each command is a short function over the balancer's state that returns a
JSON-ready value or raises CommandError; the loop wraps it into a reply map
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. Errors are
replies, never silence.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balancer.eventlog import EventLog
from balancer.scheduler import Node, Request, Scheduler
from wire import events as ev
from wire.protocol import STATUSES

DEFAULT_REQUEST_LIMIT = 1000
# List replies are capped so one reply stays small and one query cheap.
MAX_LIST_REPLY = 1000
# A page of `requests` reads at most this many remembered requests (about 1.5 ms here), so a
# filtered page may hold fewer rows than asked, even none, and a `next` to go on from.
SCAN_PER_PAGE = 10_000
# `offset` is kept for callers from before `after`, bounded: skipping costs what it skips.
MAX_OFFSET = 10_000
# Rates are measured over this window of counter samples (see record_sample).
RATE_WINDOW_S = 10.0
RATE_SAMPLE_MIN_GAP_S = 0.1


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
    # (monotonic time, submitted, processed) samples, newest last; see record_sample.
    samples: deque[tuple[float, int, int]] = field(default_factory=deque)
    # The loop's longest iteration over its recent window (balancer/loop.py, IterationTimes), in ms.
    loop_max_ms: Callable[[], float] = lambda: 0.0
    # The journal's health for `status` (balancer/journal_keeper.py); None without --journal.
    journal: Callable[[], dict[str, Any] | None] = lambda: None


def record_sample(state: BalancerState, now: float) -> None:
    """Remember the request counters at `now` so `status` can report recent rates (call once per tick)."""
    counters = state.scheduler.counters
    samples = state.samples
    if samples and now - samples[-1][0] < RATE_SAMPLE_MIN_GAP_S:
        return  # a burst of queries adds nothing, and the deque stays small
    samples.append((now, counters["submitted"], counters["processed"]))
    while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
        samples.popleft()


def rates(state: BalancerState, now: float) -> dict[str, float]:
    """Requests per second submitted and processed: over the sample window, else over the uptime."""
    counters = state.scheduler.counters
    samples = state.samples
    if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
        (t0, sub0, done0), (t1, sub1, done1) = samples[0], samples[-1]
        window = t1 - t0
        return {
            "window_s": round(window, 3),
            "submitted_per_s": round((sub1 - sub0) / window, 2),
            "processed_per_s": round((done1 - done0) / window, 2),
        }
    uptime = max(now - state.started_mono, 1e-9)
    return {
        "window_s": round(uptime, 3),
        "submitted_per_s": round(counters["submitted"] / uptime, 2),
        "processed_per_s": round(counters["processed"] / uptime, 2),
    }


def node_view(node: Node, now: float, admin: str | None = None) -> dict[str, Any]:
    """A node as `zlb servers` shows it (the seed's shape plus ours); `admin`: an admin's kept down/draining."""
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
        "incarnation": f"{node.incarnation:016x}",
        # Messages the node could not send (it reports them on its heartbeat).
        "dropped": node.reported_dropped,
        # "down" or "draining" when an admin said so: kept across the node's rejoins until `up`.
        "admin": admin,
    }


def _node_view(state: BalancerState, node: Node, now: float) -> dict[str, Any]:
    kept = state.scheduler.table.admin_state(node.node_id)
    return node_view(node, now, kept.value if kept is not None else None)


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
    return [_node_view(state, n, now) for _id, n in sorted(state.scheduler.nodes.items())]


def cmd_requests(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """Remembered requests in arrival order, a page at a time.

    With `after` (a reply's `next`, or "" to start), the reply is {"requests": [...], "next": key or
    None}; without it, the list alone (the first page, for callers from before paging by key).
    """
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise CommandError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    client = _int_arg(args, "client", required=False)
    limit = _int_arg(args, "limit", required=False, minimum=0)
    limit = DEFAULT_REQUEST_LIMIT if limit is None else limit
    limit = min(limit, MAX_LIST_REPLY) if limit else MAX_LIST_REPLY
    offset = _int_arg(args, "offset", required=False, minimum=0) or 0
    if offset > MAX_OFFSET:
        raise CommandError(
            f"'offset' is at most {MAX_OFFSET} (skipping costs the balancer what it skips);"
            " page with 'after': pass each reply's 'next' back as 'after', starting from ''"
        )
    paged = "after" in args
    after = _after_number(state, args["after"]) if paged else -1
    rows, following = state.scheduler.requests_page(after, offset + limit, SCAN_PER_PAGE + offset, status, client)
    views = [request_view(req) for req in rows[offset:]]
    if not paged:
        return views
    return {"requests": views, "next": None if following is None else _page_key(state, following)}


def _page_key(state: BalancerState, number: int) -> str:
    """An opaque key for a place in the arrival order: this balancer run, and the arrival number."""
    return f"{_run_tag(state)}-{number:x}"


def _run_tag(state: BalancerState) -> str:
    # Arrival numbers start again when a balancer restarts: a key names the run it belongs to.
    return format(int(state.started_wall * 1_000_000), "x")


def _after_number(state: BalancerState, key: Any) -> int:
    """The arrival number a page key names; -1 for "" or None (from the start)."""
    if key is None or key == "":
        return -1
    if not isinstance(key, str) or key.count("-") != 1:
        raise CommandError("'after' must be a 'next' key from an earlier reply, or '' to start")
    tag, number = key.split("-")
    if tag != _run_tag(state):
        raise CommandError("'after' comes from an earlier run of the balancer; start again with after=''")
    try:
        value = int(number, 16)
    except ValueError:
        raise CommandError("'after' must be a 'next' key from an earlier reply, or '' to start") from None
    if value < 0:
        raise CommandError("'after' must be a 'next' key from an earlier reply, or '' to start")
    return value


def cmd_request(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    client = _int_arg(args, "client_id")
    request = _int_arg(args, "request_id")
    req = state.scheduler.get(client, request)
    if req is None:
        raise CommandError(f"Request {request} from Client {client} not found")
    return request_view(req)


def cmd_status(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    # Each query is also a rate sample, so rates are recent even between loop ticks.
    record_sample(state, now)
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
        "rates": rates(state, now),
        "bad_input": dict(state.bad_input),
        "counters": dict(state.counters),
        "memory": sched.budget.view(),
        "paused_clients": sched.paused_clients,
        "loop_max_ms": state.loop_max_ms(),
        # The log file and its writer: a problem stays here while it lasts (its event may leave the ring).
        "log": {"path": state.eventlog.path, "problem": state.eventlog.problem},
        "journal": state.journal(),
        # What is remembered: every pending and running request; finished ones with their results for a
        # window, then their ids for a second one (balancer/kept.py); what happens past each.
        "retention": {**sched.kept.view(), "log_events": state.eventlog.keep},
    }


def _count_by(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


LOG_FORMATS = {"messages": ev.message, "events": ev.as_dict, "lines": ev.log_line}


def cmd_logs(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """Kept log events: the newest `limit` ones, or a page from `offset` (oldest kept is 0)."""
    limit = _int_arg(args, "limit", required=False, minimum=0)
    offset = _int_arg(args, "offset", required=False, minimum=0)
    fmt = args.get("format") or "messages"
    render = LOG_FORMATS.get(fmt) if isinstance(fmt, str) else None
    if render is None:
        raise CommandError(f"unknown log format {fmt!r}; use one of {', '.join(LOG_FORMATS)}")
    limit = MAX_LIST_REPLY if limit is None else min(limit, MAX_LIST_REPLY)
    if offset is None:
        events = state.eventlog.recent(limit)
    else:
        events = state.eventlog.page(offset, limit)
    return [render(e) for e in events]


def _admin(method: str) -> Callable[[BalancerState, dict[str, Any], float], Any]:
    """A command that applies one scheduler admin transition to a node."""

    def run(state: BalancerState, args: dict[str, Any], now: float) -> Any:
        node_id = _int_arg(args, "server_id")
        try:
            node = getattr(state.scheduler, method)(node_id)
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        return _node_view(state, node, now)

    return run


def cmd_configure(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    servers = _int_arg(args, "servers", minimum=0)
    clients = _int_arg(args, "clients", minimum=0)
    state.scheduler.events.append((ev.SYSTEM_CONFIGURED, servers, clients))
    return {"servers": servers, "clients": clients}


def cmd_snapshot(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    # Capped like every list reply: one uncapped snapshot of 100k events held the loop 300 ms.
    logs = min(_int_arg(args, "logs", False, 0) or 50, MAX_LIST_REPLY)
    return {
        "status": cmd_status(state, {}, now),
        "servers": cmd_servers(state, {}, now),
        "logs": [ev.as_dict(e) for e in state.eventlog.recent(logs)],
    }


def cmd_ping(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    # The pid lets a supervisor tell the balancer it started from another one answering on the same port.
    return {"pong": True, "uptime_s": round(now - state.started_mono, 3), "pid": os.getpid()}


COMMANDS: dict[str, Callable[[BalancerState, dict[str, Any], float], Any]] = {
    "servers": cmd_servers,
    "requests": cmd_requests,
    "status": cmd_status,
    "logs": cmd_logs,
    "request": cmd_request,
    "down": _admin("mark_down"),
    "up": _admin("mark_up"),
    "drain": _admin("mark_draining"),
    "configure": cmd_configure,
    "snapshot": cmd_snapshot,
    "ping": cmd_ping,
}


# Commands that change what the balancer does; under curve with --admin-allow only admin keys may.
ADMIN_COMMANDS = frozenset({"down", "up", "drain", "configure"})


def handle(state: BalancerState, request: dict[str, Any], now: float, admin: bool = True) -> dict[str, Any]:
    """Run one control request and build its reply map; `admin` False refuses the changing commands."""
    cmd = request.get("cmd")
    command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if command is None:
        return {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}"}
    if not admin and cmd in ADMIN_COMMANDS:
        return {"ok": False, "error": f"admin key required for {cmd}"}
    try:
        return {"ok": True, "result": command(state, request, now)}
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}
