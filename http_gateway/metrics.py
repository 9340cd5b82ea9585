"""Prometheus text exposition of a balancer's state, and the dispatch latency it does not keep.

Pure: `DispatchLatency` is fed stamped events and `render` is fed the replies
of the `status` and `servers` control commands; neither touches a socket.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire import events as ev

# Upper bounds in seconds; dispatch waits from sub-millisecond (idle nodes) to seconds (backlog).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Requests waiting for their first assignment that we remember; older ones are forgotten.
MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Histogram:
    """A cumulative-ready histogram snapshot: per-bucket counts (last is +Inf), sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total_s: float
    count: int


class DispatchLatency:
    """Time from a request's arrival (or re-queue) to its assignment, from the event stream.

    Events in one published batch share a stamp, so the resolution is one
    balancer loop iteration: a request assigned in the iteration it arrived
    counts as 0 s.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S, max_tracked: int = MAX_TRACKED) -> None:
        self.bounds = bounds
        self.max_tracked = max_tracked
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._count = 0
        self._waiting: OrderedDict[tuple[int, int], float] = OrderedDict()

    def feed(self, events: Iterable[list[Any]]) -> None:
        """Take stamped events `[ts, kind, *args]`; only request events matter."""
        for event in events:
            kind = event[1]
            if kind in (ev.REQUEST_ADDED, ev.REQUEST_REQUEUED):
                self._waiting[(event[2], event[3])] = event[0]
                if len(self._waiting) > self.max_tracked:
                    self._waiting.popitem(last=False)
            elif kind == ev.REQUEST_ASSIGNED:
                started = self._waiting.pop((event[2], event[3]), None)
                if started is not None:
                    self.observe(max(0.0, event[0] - started))

    def observe(self, seconds: float) -> None:
        """Count one dispatch that took `seconds`."""
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds
        self._count += 1

    def snapshot(self) -> Histogram:
        """An immutable copy, safe to hand to another thread."""
        return Histogram(self.bounds, tuple(self._counts), self._sum, self._count)


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels.items():
        text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{text}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Exposition:
    """Lines of the Prometheus text format, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> None:
        """A metric family: HELP, TYPE and its samples (counters get the _total suffix)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        suffix = "_total" if kind == "counter" else ""
        for labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        """A histogram family with cumulative buckets, sum and count."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        running = 0
        for bound, count in zip((*hist.bounds, math.inf), hist.counts):
            running += count
            self.lines.append(f"{name}_bucket{_labels(le=_number(float(bound)))} {running}")
        self.lines.append(f"{name}_sum {_number(float(hist.total_s))}")
        self.lines.append(f"{name}_count {hist.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(status: dict[str, Any], servers: list[dict[str, Any]], latency: Histogram | None) -> str:
    """The /metrics page from `status` and `servers` replies and the dispatch latency."""
    out = Exposition()
    out.family("zlb_up", "gauge", "1 when the balancer answered this scrape.", [({}, 1)])
    out.family("zlb_uptime_seconds", "gauge", "Seconds since the balancer started.", [({}, status["uptime_s"])])
    counters = status.get("requests", {})
    out.family(
        "zlb_requests",
        "counter",
        "Requests by outcome since the balancer started (submitted, processed, failed, requeued, ...).",
        [({"status": name}, value) for name, value in sorted(counters.items())],
    )
    current = [({"status": "pending"}, status["queue_depth"]), ({"status": "assigned"}, status["in_flight"])]
    out.family("zlb_requests_current", "gauge", "Requests waiting (pending) or running (assigned) now.", current)
    out.family("zlb_queue_depth", "gauge", "Requests waiting for a server.", [({}, status["queue_depth"])])
    by_priority = [({"priority": p}, n) for p, n in status.get("queue_by_priority", {}).items()]
    out.family("zlb_queue_depth_by_priority", "gauge", "Waiting requests per priority.", by_priority)
    out.family("zlb_in_flight", "gauge", "Requests running on server nodes.", [({}, status["in_flight"])])
    _servers(out, servers)
    bad = [
        ({"socket": k.split(".", 1)[0], "kind": k.split(".", 1)[-1]}, v) for k, v in sorted(status["bad_input"].items())
    ]
    out.family("zlb_bad_input", "counter", "Bad messages dropped, by socket and kind.", bad)
    if latency is not None:
        out.histogram(
            "zlb_dispatch_latency_seconds", "Time from a request's arrival or re-queue to its assignment.", latency
        )
    return out.text()


def render_unreachable(latency: Histogram | None) -> str:
    """The /metrics page when the balancer does not answer: `zlb_up 0` and what the gateway itself measured."""
    out = Exposition()
    out.family("zlb_up", "gauge", "1 when the balancer answered this scrape.", [({}, 0)])
    if latency is not None:
        out.histogram(
            "zlb_dispatch_latency_seconds", "Time from a request's arrival or re-queue to its assignment.", latency
        )
    return out.text()


def _servers(out: Exposition, servers: list[dict[str, Any]]) -> None:
    def per_node(key: str) -> list[tuple[dict[str, Any], float]]:
        return [({"server_id": s["server_id"]}, s[key]) for s in servers]

    out.family("zlb_node_in_flight", "gauge", "Requests running on each server node.", per_node("in_flight"))
    out.family("zlb_node_capacity", "gauge", "Requests each server node runs at once.", per_node("capacity"))
    out.family("zlb_node_handled", "counter", "Requests each server node has finished.", per_node("handled_requests"))
    states = [({"server_id": s["server_id"], "state": s["state"]}, 1) for s in servers]
    out.family("zlb_node_state", "gauge", "1 for each server node's current state.", states)
    out.family("zlb_nodes_active", "gauge", "Server nodes taking work.", [({}, sum(1 for s in servers if s["active"]))])
