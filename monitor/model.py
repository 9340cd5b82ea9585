"""What the live dashboard knows: a pure model fed by control snapshots and events.

No sockets and no clock: every method takes the wall-clock time it should
consider "now" (event stamps are wall-clock too). The dashboard loop feeds
it a `snapshot` reply about once a second (node table, queue by priority,
counters) and the event stream in between (log lines, rates, latencies and
node changes the moment they happen).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from wire import events as ev
from wire.percentiles import p50_p90_p99

# Latency percentiles are over this many recent seconds.
WINDOW_S = 10.0
# The rate is over a shorter window, so it falls to zero soon after work stops.
RATE_WINDOW_S = 3.0
# The throughput sparkline covers this many seconds, one column per second.
HISTORY_S = 60
# Log lines kept for display (the screen shows the newest that fit).
KEEP_LOG_LINES = 200
# Requests whose arrival time is remembered for latency; the oldest are forgotten beyond this.
MAX_TRACKED = 100_000
# A notice of something that happened (a restart, a reconnection) stays this long; one of something
# that lasts (the balancer unreachable) stays while it lasts. A restart banner seen after 3 minutes was news no more.
NOTICE_S = 30.0


@dataclass(slots=True)
class NodeRow:
    """One server node as the dashboard shows it."""

    server_id: int
    state: str
    in_flight: int
    capacity: int
    handled: int
    pid: int | None
    host: str
    heartbeat_ms_ago: float | None = None  # as of the last snapshot
    services: str = "default"  # what it offers, comma-separated

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the node's last heartbeat, as of the last snapshot (refreshed every second)."""
        return None if self.heartbeat_ms_ago is None else self.heartbeat_ms_ago / 1000


@dataclass(frozen=True, slots=True)
class LogLine:
    """One event as a log line."""

    ts: float
    kind: str
    text: str


class DashboardModel:
    """Balancer state as last seen, plus recent history for rates and latency."""

    def __init__(self, control: str = "", banner: str | None = None) -> None:
        self.control = control
        self.banner = banner  # a fixed line under the header, e.g. where the REST API is
        self.nodes: dict[int, NodeRow] = {}
        self.status: dict[str, Any] = {}
        self.status_at = 0.0
        self.logs: deque[LogLine] = deque(maxlen=KEEP_LOG_LINES)
        self.connected = False
        self.notice: str | None = "connecting to the balancer…"
        self.notice_until: float | None = None  # when a notice of an event goes; None: while its cause lasts
        self.started_at: float | None = None
        self.unreachable_since: float | None = None
        self._ticks: deque[tuple[float, int]] = deque()  # (ts, processed) from stats ticks
        self._arrivals: OrderedDict[tuple[int, int], float] = OrderedDict()
        self._latencies: deque[tuple[float, float]] = deque()  # (ts, seconds) of completions

    # ---- inputs ---------------------------------------------------------

    def apply_snapshot(self, snapshot: dict[str, Any], now: float) -> None:
        """Take a `snapshot` control reply as the current truth."""
        status = snapshot["status"]
        restarted = self.started_at is not None and status.get("started_at") != self.started_at
        first = self.started_at is None or restarted
        if restarted:
            self._tell(f"balancer restarted at {clock(status['started_at'])}; state reloaded", now + NOTICE_S)
            self._ticks.clear()
            self._arrivals.clear()
            self._latencies.clear()
        elif self.unreachable_since is not None and not first:
            self._tell(f"reconnected at {clock(now)}", now + NOTICE_S)
        elif not self.connected:
            self._tell(None)  # the first contact is no news, even after waiting for it
        elif self.notice_until is not None and now >= self.notice_until:
            self._tell(None)
        self.connected = True
        self.unreachable_since = None
        self.started_at = status.get("started_at")
        self.status = status
        self.status_at = now
        self.nodes = {row["server_id"]: node_row(row) for row in snapshot["servers"]}
        if first:
            self.logs.clear()
            for entry in snapshot.get("logs", []):
                self.logs.append(LogLine(entry["ts"], entry["kind"], entry["message"]))

    def mark_unreachable(self, now: float) -> None:
        """The balancer did not answer a snapshot request: what is known of its nodes is no longer current."""
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.connected = False
        if self.started_at is None:
            self._tell(f"waiting for the balancer at {self.control}…")
        else:
            self._tell(f"balancer unreachable at {self.control} since {clock(self.unreachable_since)}; retrying…")

    def _tell(self, notice: str | None, until: float | None = None) -> None:
        """Show `notice` (None: none) until `until`, or while its cause lasts when None."""
        self.notice = notice
        self.notice_until = until

    def apply_events(self, events: Iterable[list[Any]]) -> None:
        """Follow stamped events `[ts, kind, *args]` as they arrive."""
        for event in events:
            record = ev.parse(event)
            if record is not None and record.kind == ev.STATS:
                self._on_stats(record)
                continue
            self.logs.append(LogLine(event[0], event[1], ev.message(event)))
            handler = _HANDLERS.get(record.kind) if record is not None else None
            if handler is not None:  # an event from another protocol version is shown, not applied
                handler(self, record)

    def _on_stats(self, event: Any) -> None:
        self._ticks.append((event.ts, event.processed))
        while self._ticks and event.ts - self._ticks[0][0] > HISTORY_S + 1:
            self._ticks.popleft()
        # Queue figures come from the snapshot only, so the total and the per-priority split always agree.

    def _on_added(self, event: Any) -> None:
        self._arrivals[(event.client_id, event.request_id)] = event.ts
        if len(self._arrivals) > MAX_TRACKED:
            self._arrivals.popitem(last=False)

    def _on_assigned(self, event: Any) -> None:
        node = self.nodes.get(event.server_id)
        if node is not None:
            node.in_flight += 1

    def _on_finished(self, event: Any) -> None:
        node = self.nodes.get(event.server_id)
        if node is not None:
            node.in_flight = max(0, node.in_flight - 1)
            node.handled += 1
        started = self._arrivals.pop((event.client_id, event.request_id), None)
        if started is not None:
            self._latencies.append((event.ts, max(0.0, event.ts - started)))
            while self._latencies and event.ts - self._latencies[0][0] > WINDOW_S:
                self._latencies.popleft()

    def _on_joined(self, event: Any) -> None:
        self.nodes[event.server_id] = NodeRow(
            event.server_id, "active", 0, event.capacity, 0, event.pid, event.host, 0.0
        )

    def _on_kept_out(self, event: Any) -> None:
        """A node rejoined in the state an admin left it in (down or draining), not active."""
        node = self.nodes.get(event.server_id)
        if node is not None:
            node.state = event.state

    def _on_requeued(self, event: Any) -> None:
        # Latency counts from the first arrival: a re-queue is part of the wait.
        self._arrivals.setdefault((event.client_id, event.request_id), event.ts)

    # ---- outputs --------------------------------------------------------

    def uptime_s(self, now: float) -> float | None:
        if not self.status or "uptime_s" not in self.status:
            return None
        return self.status["uptime_s"] + (now - self.status_at if self.connected else 0.0)

    def rate(self, now: float) -> float:
        """Requests processed per second over the last RATE_WINDOW_S seconds of stats ticks."""
        recent = [t for t in self._ticks if now - t[0] <= RATE_WINDOW_S + 0.5]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return max(0, recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def throughput_history(self, now: float, seconds: int = HISTORY_S) -> list[float]:
        """Requests processed in each of the last `seconds` whole seconds, oldest first."""
        bins = [0.0] * seconds
        for (_t0, done0), (t1, done1) in pairwise(self._ticks):
            age = int(now - t1)
            if 0 <= age < seconds:
                bins[seconds - 1 - age] += max(0, done1 - done0)
        return bins

    def alerts(self) -> list[str]:
        """Problems the balancer reports in its status while they last: a failing journal, a degraded log."""
        out = []
        journal = self.status.get("journal") or {}
        if journal and not journal.get("healthy", True):
            since = clock(journal["since"]) if journal.get("since") else "?"
            out.append(
                f"JOURNAL FAILING since {since}: {journal.get('reason')}; new requests refused (busy), results held"
            )
        log = self.status.get("log") or {}
        if log.get("problem"):
            out.append(f"LOG DEGRADED: {log.get('path')}: {log['problem']}; lines are dropped and counted")
        return out

    def latency_percentiles(self, now: float) -> dict[str, float | None] | None:
        """p50/p90/p99 of submit-to-result seconds over the last WINDOW_S seconds, if any finished."""
        values = sorted(s for ts, s in self._latencies if now - ts <= WINDOW_S)
        return p50_p90_p99(values) if values else None


def node_row(row: dict[str, Any]) -> NodeRow:
    """A `servers` reply row as a NodeRow."""
    return NodeRow(
        server_id=row["server_id"],
        state=row["state"],
        in_flight=row["in_flight"],
        capacity=row["capacity"],
        handled=row["handled_requests"],
        pid=row.get("pid"),
        host=row.get("host") or "",
        heartbeat_ms_ago=row.get("last_heartbeat_ms_ago"),
        services=",".join(row.get("services") or ["default"]),
    )


def clock(ts: float) -> str:
    """HH:MM:SS in local time."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _set_state(state: str, clear_in_flight: bool) -> Any:
    """An event handler that moves the event's node to `state`."""

    def apply(model: DashboardModel, event: Any) -> None:
        node = model.nodes.get(event.server_id)
        if node is not None:
            node.state = state
            if clear_in_flight:
                node.in_flight = 0

    return apply


_HANDLERS: dict[str, Any] = {
    ev.REQUEST_ADDED: DashboardModel._on_added,
    ev.REQUEST_REQUEUED: DashboardModel._on_requeued,
    ev.REQUEST_ASSIGNED: DashboardModel._on_assigned,
    ev.REQUEST_PROCESSED: DashboardModel._on_finished,
    ev.REQUEST_FAILED: DashboardModel._on_finished,
    ev.NODE_JOINED: DashboardModel._on_joined,
    ev.NODE_KEPT_OUT: DashboardModel._on_kept_out,
    ev.NODE_DEAD: _set_state("dead", True),
    ev.NODE_DISCONNECTED: _set_state("dead", True),
    ev.NODE_LEFT: _set_state("dead", True),
    ev.NODE_DOWN: _set_state("down", True),
    ev.NODE_UP: _set_state("active", False),
    ev.NODE_DRAINING: _set_state("draining", False),
}
