"""The last 15 minutes as the console charts them: kept by the gateway, the same for every viewer.

The hub hands each balancer snapshot it fetches (about one a second) to `History.sample`, which keeps
at most one point per STEP_S: request rates from the balancer's counters (the difference between two
points, so a rate covers exactly the time between them), queue depth, requests in flight, nodes
active and known, and the gateway's submit-to-result percentiles over its last 10 s. A page loaded
now, a second viewer or a reload reads the same past (`points`, `csv_text`); points older than
WINDOW_S are let go. Owned by the event loop's thread, like the hub that feeds it.
"""

from __future__ import annotations

import csv
import io
from collections import deque
from typing import Any

WINDOW_S = 15 * 60.0
# One point per this many seconds: 450 points for the window, a few tens of KiB as JSON.
STEP_S = 2.0
COLUMNS = (
    "ts",
    "processed_per_s",
    "submitted_per_s",
    "queue_depth",
    "in_flight",
    "servers_active",
    "servers",
    "p50_s",
    "p90_s",
    "p99_s",
)


class History:
    """Points of the last WINDOW_S seconds, oldest first."""

    def __init__(self, window_s: float = WINDOW_S, step_s: float = STEP_S) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self._points: deque[dict[str, Any]] = deque()
        self._last_counts: tuple[float, int, int, float] | None = None  # (ts, submitted, processed, started_at)

    def sample(self, now: float, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """Add a point from a snapshot taken at wall time `now` (with the gateway's `latency` in it);
        the point added, or None when too soon after the last one or with the balancer away."""
        if self._points and now - self._points[-1]["ts"] < self.step_s:
            return None
        if not snapshot.get("up"):
            return None
        point = self._point(now, snapshot)
        self._points.append(point)
        while self._points and now - self._points[0]["ts"] > self.window_s:
            self._points.popleft()
        return point

    def _point(self, now: float, snapshot: dict[str, Any]) -> dict[str, Any]:
        status = snapshot["status"]
        counts = status.get("requests", {})
        submitted, processed = int(counts.get("submitted", 0)), int(counts.get("processed", 0))
        started = status.get("started_at", 0.0)
        last, self._last_counts = self._last_counts, (now, submitted, processed, started)
        # Rates need two samples of the same balancer run: a restart starts its counters again.
        rates = (None, None)
        if last is not None and last[3] == started and now > last[0]:
            span = now - last[0]
            rates = (round(max(0, processed - last[2]) / span, 2), round(max(0, submitted - last[1]) / span, 2))
        latency = snapshot.get("latency") or {}
        servers = snapshot.get("servers") or []
        return {
            "ts": round(now, 3),
            "processed_per_s": rates[0],
            "submitted_per_s": rates[1],
            "queue_depth": status.get("queue_depth"),
            "in_flight": status.get("in_flight"),
            "servers_active": sum(1 for s in servers if s.get("state") == "active"),
            "servers": len(servers),
            "p50_s": latency.get("p50"),
            "p90_s": latency.get("p90"),
            "p99_s": latency.get("p99"),
        }

    def points(self) -> list[dict[str, Any]]:
        """Every kept point, oldest first."""
        return list(self._points)

    def csv_text(self) -> str:
        """The points as CSV with a header row; an empty cell where a value is not known."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for point in self._points:
            writer.writerow("" if point[c] is None else point[c] for c in COLUMNS)
        return out.getvalue()
