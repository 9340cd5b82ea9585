"""What the gateway remembers for the console, in memory with a fake clock: history points, request trails,
each server's time in its state."""

from __future__ import annotations

from typing import Any

from http_gateway.history import COLUMNS, History
from http_gateway.trails import RequestTrails, ServerTrails
from wire import events as ev

T0 = 1_700_000_000.0


def snapshot(processed: int, queue: int = 0, started_at: float = T0 - 100, up: bool = True) -> dict[str, Any]:
    status = {"requests": {"submitted": processed + queue, "processed": processed}, "queue_depth": queue,
              "in_flight": 0, "started_at": started_at}  # fmt: skip
    servers = [{"server_id": 0, "state": "active"}, {"server_id": 1, "state": "dead"}]
    return {"up": up, "status": status, "servers": servers, "latency": {"p50": 0.1, "p90": 0.2, "p99": 0.3}}


def test_history_keeps_one_point_a_step_for_the_window_with_rates_between_points():
    """At most one point per step; rates are the counters' difference over the time between two points (none
    across a balancer restart); points older than the window go; the CSV holds the same points."""
    history = History(window_s=10.0, step_s=2.0)
    assert history.sample(T0, snapshot(0))["processed_per_s"] is None
    assert history.sample(T0 + 1, snapshot(5)) is None, "within a step"
    point = history.sample(T0 + 2, snapshot(10, queue=4))
    assert (point["processed_per_s"], point["submitted_per_s"], point["queue_depth"]) == (5.0, 7.0, 4)
    assert (point["servers_active"], point["servers"], point["p99_s"]) == (1, 2, 0.3)
    assert history.sample(T0 + 4, snapshot(1, started_at=T0 + 3))["processed_per_s"] is None, "restarted"
    assert history.sample(T0 + 6, snapshot(0, up=False)) is None, "the balancer away: no point"
    for t in range(8, 16, 2):
        history.sample(T0 + t, snapshot(1, started_at=T0 + 3))
    assert [p["ts"] - T0 for p in history.points()] == [4, 8, 10, 12, 14]
    lines = history.csv_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 6
    assert lines[1].split(",")[1] == "", "an unknown rate is an empty cell"


def test_a_request_trail_gives_each_attempt_its_node_times_and_outcome():
    """Assigned, re-queued (its node lost), assigned again, processed: two attempts, each with node and times."""
    trails = RequestTrails(keep=2)
    trails.feed([
        [T0, ev.REQUEST_ADDED, 0, 7, 5],
        [T0 + 1, ev.REQUEST_ASSIGNED, 0, 7, 2, 1],
        [T0 + 3, ev.REQUEST_REQUEUED, 0, 7, 5, 1, 2],
        [T0 + 4, ev.REQUEST_ASSIGNED, 0, 7, 0, 2],
        [T0 + 5, ev.REQUEST_PROCESSED, 0, 7, 0],
        [T0 + 5, ev.NODE_DEAD, 2, 1.5, 1],
    ])  # fmt: skip
    trail = trails.of(0, 7)
    assert trail["attempt_log"] == [
        {"attempt": 1, "server_id": 2, "assigned_at": T0 + 1, "ended_at": T0 + 3, "outcome": "re-queued"},
        {"attempt": 2, "server_id": 0, "assigned_at": T0 + 4, "ended_at": T0 + 5, "outcome": "processed"},
    ]
    assert [e["kind"] for e in trail["events"]][-1] == ev.REQUEST_PROCESSED
    trails.feed([[T0, ev.REQUEST_ADDED, 1, 1, 5], [T0, ev.REQUEST_ADDED, 1, 2, 5]])
    assert trails.of(0, 7) == {"events": [], "attempt_log": []}, "the oldest request is forgotten past `keep`"


def test_server_trails_time_each_state_and_count_failures_and_requeues():
    """A node there before the gateway has no known start; a change takes its event's time (or the time it was
    seen); failures and re-queues are counted by node from the events."""
    trails = ServerTrails(started=T0)
    rows = trails.annotate([{"server_id": 0, "state": "active"}], T0 + 1)
    assert rows == [{"server_id": 0, "state": "active", "state_since": None, "failures": 0, "requeues": 0}]
    trails.feed([
        [T0 + 2, ev.REQUEST_FAILED, 3, 9, 0, "boom"],
        [T0 + 3, ev.REQUEST_REQUEUED, 3, 10, 5, 1, 0],
        [T0 + 3, ev.NODE_DEAD, 0, 1.0, 1],
        [T0 + 4, ev.NODE_JOINED, 1, 1, 42, "vm"],
    ])  # fmt: skip
    rows = trails.annotate([{"server_id": 0, "state": "dead"}, {"server_id": 1, "state": "active"}], T0 + 5)
    assert [(r["state_since"], r["failures"], r["requeues"]) for r in rows] == [(T0 + 3, 1, 1), (T0 + 4, 0, 0)]
    rows = trails.annotate([{"server_id": 1, "state": "down"}], T0 + 9)  # a change whose event was missed
    assert rows[0]["state_since"] == T0 + 9
