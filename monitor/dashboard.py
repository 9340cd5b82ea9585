"""`zlb monitor` on a terminal: a live dashboard drawn with rich.

`render` turns a `DashboardModel` into one screen for a given size (pure,
so tests render it to a recording console); `run_dashboard` is the loop:
a control snapshot about once a second, events in between, a redraw four
times a second on the alternate screen (no scrolling, no flicker).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.model import HISTORY_S, WINDOW_S, DashboardModel, NodeRow, clock
from monitor.stream import EventStream
from wire import control_client
from wire import events as ev

REFRESH_S = 0.25
SNAPSHOT_EVERY_S = 1.0
# A snapshot that takes longer than this means the balancer is away; keep the screen alive meanwhile.
SNAPSHOT_TIMEOUT_S = 0.5
SPARK = " ▁▂▃▄▅▆▇█"
BAR_WIDTH = 10
MIN_LOG_LINES = 3

STATE_STYLE = {"active": "green", "draining": "yellow", "down": "magenta", "dead": "bold red"}
KIND_STYLE = {
    ev.REQUEST_ADDED: "bright_black",
    ev.REQUEST_ASSIGNED: "cyan",
    ev.REQUEST_PROCESSED: "green",
    ev.REQUEST_FAILED: "bold red",
    ev.REQUEST_REQUEUED: "yellow",
    ev.REQUEST_REJECTED: "red",
    ev.REQUEST_LATE_RESULT: "yellow",
    ev.NODE_JOINED: "blue",
    ev.NODE_DEAD: "bold red",
    ev.NODE_DISCONNECTED: "bold red",
    ev.NODE_LEFT: "magenta",
    ev.NODE_DOWN: "magenta",
    ev.NODE_UP: "blue",
    ev.NODE_DRAINING: "yellow",
    ev.NODE_DRAINED: "yellow",
    ev.SYSTEM_BAD_INPUT: "red",
    ev.SYSTEM_JOURNAL_FAILED: "bold red",
    ev.SYSTEM_JOURNAL_DAMAGED: "bold red",
    ev.SYSTEM_JOURNAL_RECOVERED: "green",
    ev.SYSTEM_LOG_DEGRADED: "bold red",
}
# A node row while the balancer does not answer: its last known state may be long out of date.
UNKNOWN = "unknown"


def duration(seconds: float | None) -> str:
    """A short human duration: 850 ms, 2.4 s, 3:05, 1:02:03."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def load_bar(node: NodeRow, width: int = BAR_WIDTH, stale: bool = False) -> Text:
    """A bar of in-flight/capacity with the numbers after it."""
    ratio = min(1.0, node.in_flight / node.capacity) if node.capacity else 0.0
    filled = round(ratio * width)
    style = "red" if ratio >= 1 else "yellow" if ratio >= 0.5 else "green"
    if node.state != "active" or stale:
        style = "bright_black"
    return Text.assemble(
        ("█" * filled, style), ("░" * (width - filled), "bright_black"), f" {node.in_flight}/{node.capacity}"
    )


def sparkline(values: list[float]) -> str:
    """One character per value, scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return SPARK[1] * len(values)
    return "".join(SPARK[max(1, round(v / top * (len(SPARK) - 1)))] if v else SPARK[1] for v in values)


def header(model: DashboardModel, now: float, width: int) -> Text:
    """Title, endpoint, uptime and active servers on the left; clock and connection on the right.

    On a narrow terminal the endpoint, then the clock, give way so the connection state always shows.
    """
    active = sum(1 for n in model.nodes.values() if n.state == "active")
    if model.connected:
        live = short = Text("● live", "bold green")
        counts = (f"{active}/{len(model.nodes)} servers active", "green" if active else "red")
    else:
        live, short = Text("● balancer unreachable", "bold red"), Text("● unreachable", "bold red")
        counts = (f"{len(model.nodes)} servers, state {UNKNOWN}", "bright_black")
    uptime = f"  up {duration(model.uptime_s(now))}  "
    candidates = [
        (
            Text.assemble(("zlb monitor", "bold"), f"  {model.control}", uptime, counts),
            Text.assemble(f"{clock(now)} ", live),
        ),
        (Text.assemble(("zlb monitor", "bold"), uptime, counts), Text.assemble(f"{clock(now)} ", live)),
        (Text.assemble(("zlb monitor", "bold"), uptime, counts), short),
    ]
    for left, right in candidates:
        if left.cell_len + 1 + right.cell_len <= width:
            break
    gap = max(1, width - left.cell_len - right.cell_len)
    return Text.assemble(left, " " * gap, right, no_wrap=True, overflow="ellipsis")


def node_table(model: DashboardModel, now: float, rows: int) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for name, justify in (("ID", "right"), ("STATE", "left"), ("IN-FLIGHT", "left"), ("HANDLED", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("HEARTBEAT", justify="right", no_wrap=True)
    table.add_column("PID", justify="right", no_wrap=True)
    table.add_column("HOST", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("SERVICES", no_wrap=True, overflow="ellipsis", max_width=24)
    nodes = [model.nodes[i] for i in sorted(model.nodes)]
    shown = nodes if len(nodes) <= rows else nodes[: max(0, rows - 1)]
    stale = not model.connected  # no fresh heartbeat ages or states until the balancer answers again
    for node in shown:
        age = node.heartbeat_age_s() if node.state != "dead" and not stale else None
        state = Text(UNKNOWN, "bright_black") if stale else Text(node.state, STATE_STYLE.get(node.state, ""))
        table.add_row(
            str(node.server_id),
            state,
            load_bar(node, stale=stale),
            str(node.handled),
            duration(age) if age is not None else "-",
            str(node.pid or "-"),
            node.host,
            node.services,
        )
    if len(shown) < len(nodes):
        table.add_row("", "", Text(f"… {len(nodes) - len(shown)} more", "bright_black"), "", "", "", "", "")
    return table


def _by_service(services: dict[str, dict[str, int]]) -> str:
    """Waiting per service, when there is more than the default one ('!' marks one no live node offers)."""
    if set(services) <= {"default"}:
        return ""
    parts = [f"{name}:{row['waiting']}" + ("" if row["nodes"] else "!") for name, row in services.items()]
    return "  services " + " ".join(parts)


def summary(model: DashboardModel, now: float, width: int) -> list[Text]:
    status = model.status
    counts = status.get("requests", {})
    by_priority = status.get("queue_by_priority", {})
    priorities = " ".join(f"p{p}:{n}" for p, n in by_priority.items()) or "-"
    bad = sum(status.get("bad_input", {}).values())
    queue = Text.assemble(
        ("Queue   ", "bold"),
        (f"{status.get('queue_depth', 0)} waiting", "yellow" if status.get("queue_depth") else ""),
        f" ({priorities})  in flight {status.get('in_flight', 0)}{_by_service(status.get('services', {}))}",
        no_wrap=True,
        overflow="ellipsis",
    )
    totals = Text.assemble(
        ("Totals  ", "bold"),
        f"submitted {counts.get('submitted', 0)}  done {counts.get('processed', 0)}  ",
        (f"failed {counts.get('failed', 0)}", "red" if counts.get("failed") else ""),
        f"  requeued {counts.get('requeued', 0)}  ",
        (f"bad input {bad}", "red" if bad else ""),
        no_wrap=True,
        overflow="ellipsis",
    )
    prefix = f"Rate    {model.rate(now):,.1f} req/s  "
    span = max(0, min(HISTORY_S, width - len(prefix) - 10))
    rate = Text.assemble(
        (prefix[:8], "bold"),
        prefix[8:],
        (sparkline(model.throughput_history(now, span)) if span else "", "cyan"),
        f" {span} s" if span else "",
        no_wrap=True,
    )
    pct = model.latency_percentiles(now)
    values = "  ".join(f"{name} {duration(v)}" for name, v in pct.items()) if pct else "no results yet"
    latency = Text.assemble(
        ("Latency ", "bold"), values, (f"  (submit→result, last {WINDOW_S:g} s)", "bright_black"), no_wrap=True
    )
    pair = ha_line(status)
    return [queue, totals, rate, latency] if pair is None else [pair, queue, totals, rate, latency]


def ha_line(status: dict[str, Any]) -> Text | None:
    """The HA pair as the leader sees it: who leads, the standby in sync or the leader alone, the last takeover."""
    ha = status.get("ha")
    if status.get("role") != "leader" or not isinstance(ha, dict):
        return None
    if ha.get("in_sync"):
        standby = (f"standby {ha.get('standby')} in sync, lag {ha.get('lag_records', 0)} records", "green")
    else:
        standby = ("ALONE: no standby in sync", "bold red")
    took = ha.get("last_takeover") or {}
    since = f"  leading since {clock(took['at'])}" if took.get("at") else ""
    return Text.assemble(
        ("HA      ", "bold"), f"leader {ha.get('name')} (epoch {status.get('epoch')})  ", standby, since,
        no_wrap=True, overflow="ellipsis",
    )  # fmt: skip


def log_lines(model: DashboardModel, count: int) -> list[Text]:
    lines = list(model.logs)[-count:] if count > 0 else []
    return [
        Text.assemble(
            (clock(line.ts) + " ", "bright_black"),
            (line.text, KIND_STYLE.get(line.kind, "")),  # markers (✅ ⚠️ ❌) kept, as in the plain view
            no_wrap=True,
            overflow="ellipsis",
        )
        for line in lines
    ]


def render(model: DashboardModel, now: float, width: int, height: int) -> RenderableType:
    """The whole screen for a terminal of `width` x `height`."""
    top: list[RenderableType] = [header(model, now, width)]
    if model.banner:
        top.append(Text(model.banner, "bold cyan", no_wrap=True, overflow="ellipsis"))
    if model.notice:
        top.append(Text(model.notice, "bold yellow" if model.connected else "bold red", no_wrap=True))
    top.extend(Text(alert, "bold white on red", no_wrap=True, overflow="ellipsis") for alert in model.alerts())
    lines = summary(model, now, width)
    fixed = len(top) + 1 + len(lines) + 1  # table header, summary, log rule
    rows = max(1, min(len(model.nodes), height - fixed - MIN_LOG_LINES))
    table = node_table(model, now, rows)
    shown_rows = len(table.rows)
    logs_room = max(0, height - fixed - shown_rows)
    rule = Text("─ log " + "─" * max(0, width - 6), "bright_black", no_wrap=True, overflow="crop")
    return Group(*top, table, *lines, rule, *log_lines(model, logs_room))


class _Stop:
    """SIGTERM ends the loop like Ctrl-C, so the terminal is restored."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_args: Any) -> None:
        self.requested = True

    def is_requested(self) -> bool:
        return self.requested


def refresh_snapshot(model: DashboardModel, control: str) -> None:
    """One snapshot over control into the model, or mark the balancer unreachable."""
    try:
        model.apply_snapshot(
            control_client.call(control, "snapshot", timeout_s=SNAPSHOT_TIMEOUT_S, logs=100), time.time()
        )
    except (control_client.BalancerUnreachable, control_client.ControlError):
        model.mark_unreachable(time.time())


def run_dashboard(
    events: str,
    control: str,
    console: Console | None = None,
    should_stop: Callable[[], bool] | None = None,
    banner: str | None = None,
) -> None:
    """Draw the dashboard until Ctrl-C or SIGTERM, or until `should_stop()` (then signals are the caller's)."""
    console = console or Console()
    model = DashboardModel(control, banner)
    stream = EventStream(events)
    if should_stop is None:
        stop = _Stop()
        signal.signal(signal.SIGTERM, stop)
        should_stop = stop.is_requested
    next_snapshot = 0.0
    try:
        with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            while not should_stop():
                if time.monotonic() >= next_snapshot:
                    refresh_snapshot(model, control)
                    next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
                model.apply_events(stream.poll(REFRESH_S))
                size = console.size
                live.update(render(model, time.time(), size.width, size.height), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
