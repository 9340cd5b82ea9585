"""Admin commands and queries served on the balancer's control socket.

Each command is a short function over the balancer's state that returns a
JSON-ready value or raises CommandError; the loop wraps it into a reply map
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. Errors are
replies, never silence.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balancer.eventlog import EventLog
from balancer.scheduler import Node, Request, Scheduler
from wire import events as ev
from wire.protocol import ASSIGNED, PENDING, STATUSES
from wire.statuses import FILTER_STATUSES

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
    # The HA section (balancer/member.py, replication.py); None without --ha.
    ha: Callable[[], dict[str, Any] | None] = lambda: None


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
        "services": list(node.services),
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
        "service": req.service,
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


def cmd_next_request_id(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """`count` request ids the client id has not used (above every id remembered under it and every range
    handed out before), reserved for the caller: `zlb client` without --first-request-id asks this."""
    client = _int_arg(args, "client_id", minimum=0)
    count = _int_arg(args, "count", required=False, minimum=1)
    if client >= 2**64:
        raise CommandError("'client_id' must be below 2**64")
    try:
        first = state.scheduler.next_request_id(client, 1 if count is None else count)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return {"client_id": client, "first_request_id": first, "count": 1 if count is None else count}


def cmd_status(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    # Each query is also a rate sample, so rates are recent even between loop ticks.
    record_sample(state, now)
    sched = state.scheduler
    nodes = list(sched.nodes.values())
    ha = state.ha()
    roles = {} if ha is None else {"role": "leader", "epoch": ha.get("epoch"), "ha": ha}
    return {
        **roles,
        "uptime_s": round(now - state.started_mono, 3),
        "started_at": state.started_wall,
        "endpoints": state.endpoints,
        "servers": len(nodes),
        "servers_active": sum(1 for n in nodes if n.active),
        "servers_by_state": _count_by(n.state.value for n in nodes),
        "queue_depth": sched.waiting,
        "queue_by_priority": {str(p): n for p, n in sched.waiting_by_priority().items()},
        "in_flight": sched.in_flight(),
        # Per service: waiting, running, live nodes that offer it, expired, cancelled, dead.
        "services": sched.services_view(),
        "dead_letters": {k: v for k, v in sched.dead.view(0).items() if k != "dead"},
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


# ---- the web console's queries (http_gateway): one bounded page, one request in detail --------------

# A console page holds at most this many rows.
FIND_PAGE_MAX = 200
# A filter the arrival order cannot apply (a priority, several statuses) is applied to slices of it; a page
# stops after this many slices, short, with a `next` to go on from (as a page stops at SCAN_PER_PAGE reads).
FIND_SLICES = 64
# Looking a request id up without its client reads at most this many client sessions.
SEARCH_SESSIONS = 10_000
# Payload and result previews: this many bytes unless asked for more, never more than the maximum.
PREVIEW_BYTES = 1024
MAX_PREVIEW_BYTES = 16 * 1024


def cmd_find_requests(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """A page of requests in arrival order that match every filter given: `statuses` (a list), `client`,
    `priority`; or, with `request_id`, that request under every client (or under `client`).

    Reply: {"requests": [...], "next": key or None}. A page reads at most SCAN_PER_PAGE requests in at most
    FIND_SLICES slices, so it may hold fewer rows than `limit` (even none) and still have a `next`."""
    statuses = _statuses_arg(args)
    client = _int_arg(args, "client", required=False)
    priority = _int_arg(args, "priority", required=False)
    limit = min(_int_arg(args, "limit", required=False, minimum=1) or 50, FIND_PAGE_MAX)
    request_id = _int_arg(args, "request_id", required=False)
    keep = _request_filter(statuses, client, priority)
    if request_id is not None:
        return {"requests": [request_view(r) for r in _by_request_id(state, request_id, client) if keep(r)][:limit],
                "next": None}  # fmt: skip
    # One status and the client are filtered inside the arrival order; the rest on each slice read. A slice
    # asks for no more rows than the page lacks, so the page never overflows and its `next` is exact.
    inner = next(iter(statuses)) if statuses is not None and len(statuses) == 1 else None
    after: int | None = _after_number(state, args.get("after"))
    rows: list[Request] = []
    read = slices = 0
    while after is not None and len(rows) < limit and read < SCAN_PER_PAGE and slices < FIND_SLICES:
        step = limit - len(rows)
        page, after = state.scheduler.requests_page(after, step, step, inner, client)
        rows.extend(r for r in page if keep(r))
        read += step
        slices += 1
    return {"requests": [request_view(r) for r in rows], "next": None if after is None else _page_key(state, after)}


def _statuses_arg(args: dict[str, Any]) -> frozenset[str] | None:
    statuses = args.get("statuses")
    if statuses is None:
        return None
    if not isinstance(statuses, list) or not statuses or not all(s in FILTER_STATUSES for s in statuses):
        raise CommandError(f"'statuses' must be a list of: {', '.join(FILTER_STATUSES)}")
    return frozenset(statuses)


def _request_filter(statuses: frozenset[str] | None, client: int | None, priority: int | None) -> Any:
    def keep(req: Request) -> bool:
        return (
            (statuses is None or req.status in statuses)
            and (client is None or req.client_id == client)
            and (priority is None or req.priority == priority)
        )

    return keep


def _by_request_id(state: BalancerState, request_id: int, client: int | None) -> list[Request]:
    """The request with this id under `client`, or under every client (the first SEARCH_SESSIONS sessions)."""
    sched = state.scheduler
    clients = [client] if client is not None else list(itertools.islice(sched.sessions, SEARCH_SESSIONS))
    found = (sched.get(c, request_id) for c in clients)
    return [req for req in found if req is not None]


def cmd_request_detail(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """One request as `request` shows it, plus previews of its payload (while it waits or runs) or of its
    result (once finished: the payload is let go then, its digest kept), at most `preview` bytes each."""
    client = _int_arg(args, "client_id")
    request = _int_arg(args, "request_id")
    cap = min(_int_arg(args, "preview", required=False, minimum=0) or PREVIEW_BYTES, MAX_PREVIEW_BYTES)
    req = state.scheduler.get(client, request)
    if req is None:
        raise CommandError(f"Request {request} from Client {client} not found")
    finished = req.status not in (PENDING, ASSIGNED)
    body = None if req.body is None else preview(req.body, cap)
    digest = req.payload_digest
    return {
        **request_view(req),
        "payload": None if finished else body,
        "result": body if finished else None,
        # Finished requests keep their payload's digest (to tell a conflicting re-send), not the payload.
        "payload_digest": None if digest is None else f"{digest & (2**64 - 1):016x}",
        "result_kept": finished and req.body is not None,
    }


# Control characters that make bytes binary rather than text (tab, newline and carriage return are text).
_BINARY = frozenset(range(32)) - {9, 10, 13} | {127}


def preview(body: Any, cap: int) -> dict[str, Any]:
    """The first `cap` bytes of a payload or result: as text when they are UTF-8 text, else as hex."""
    view = memoryview(body)
    head = bytes(view[:cap])
    size = view.nbytes
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut inside a character drops its first bytes; any other undecodable byte makes it binary.
        text = head[: exc.start].decode("utf-8") if size > cap and exc.start >= len(head) - 3 else None
    if text is None or not _BINARY.isdisjoint(head):
        return {"bytes": size, "shown": min(size, cap), "encoding": "hex", "text": head.hex(" ")}
    return {"bytes": size, "shown": min(size, cap), "encoding": "utf-8", "text": text}


def cmd_cancel(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """Cancel a request: {"was": pending|assigned|dead|finished, "request": its view}; a finished one is
    left as it was, with a preview of its result."""
    client = _int_arg(args, "client_id")
    request = _int_arg(args, "request_id")
    was, req = state.scheduler.cancel(client, request)
    if req is None:
        raise CommandError(f"Request {request} from Client {client} not found")
    out: dict[str, Any] = {"was": was, "request": request_view(req)}
    if was == "finished" and req.body is not None:
        out["result"] = preview(req.body, PREVIEW_BYTES)
    return out


def cmd_dead(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """The dead letters, newest last (at most `limit`), and what their bounds dropped."""
    limit = _int_arg(args, "limit", required=False, minimum=0)
    return state.scheduler.dead.view(MAX_LIST_REPLY if limit is None else min(limit, MAX_LIST_REPLY))


def cmd_retry(state: BalancerState, args: dict[str, Any], now: float) -> Any:
    """Queue a dead letter again (`client_id`, `request_id`), or every one (`all`: true); how many."""
    if args.get("all") is True:
        return {"retried": state.scheduler.retry_all()}
    client = _int_arg(args, "client_id")
    request = _int_arg(args, "request_id")
    try:
        req = state.scheduler.retry(client, request)
    except KeyError as exc:
        raise CommandError(exc.args[0]) from None
    return {"retried": 1, "request": request_view(req)}


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
    "find_requests": cmd_find_requests,
    "request_detail": cmd_request_detail,
    "next_request_id": cmd_next_request_id,
    "cancel": cmd_cancel,
    "dead": cmd_dead,
    "retry": cmd_retry,
}


# Commands that change what the balancer does; under curve with --admin-allow only admin keys may.
ADMIN_COMMANDS = frozenset({"down", "up", "drain", "configure", "cancel", "retry"})


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
