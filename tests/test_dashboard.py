"""The live dashboard: its model fed by snapshots and events, and its screen rendered at fixed sizes."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from monitor.dashboard import duration, render, sparkline
from monitor.model import NOTICE_S, DashboardModel
from wire import events as ev

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def utc_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Render wall-clock times in UTC so snapshots do not depend on the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def server(server_id: int, in_flight: int, capacity: int, handled: int, heartbeat_ms: int, host: str) -> dict:
    return {
        "server_id": server_id,
        "handled_requests": handled,
        "active": True,
        "state": "active",
        "in_flight": in_flight,
        "capacity": capacity,
        "pid": 4242 + server_id,
        "host": host,
        "last_heartbeat_ms_ago": heartbeat_ms,
    }


def snapshot(started_at: float = NOW - 126, servers: list[dict] | None = None) -> dict[str, Any]:
    """A `snapshot` control reply of a small busy cluster."""
    return {
        "status": {
            "uptime_s": 125.0,
            "started_at": started_at,
            "queue_depth": 3,
            "queue_by_priority": {"1": 1, "5": 2},
            "in_flight": 2,
            "requests": {"submitted": 40, "processed": 33, "failed": 1, "requeued": 2},
            "bad_input": {"frontend.malformed": 2},
        },
        "servers": servers
        if servers is not None
        else [server(0, 1, 2, 12, 120, "alpha"), server(1, 1, 1, 9, 1400, "alpha"), server(2, 0, 1, 12, 80, "beta")],
        "logs": [
            {"ts": NOW - 3, "kind": ev.SYSTEM_CONFIGURED, "message": "System configured with 3 servers and 2 clients."}
        ],
    }


def known_model() -> DashboardModel:
    """The model after a snapshot, twelve stats ticks, a dispatch, a node death and a completion."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.apply_snapshot(snapshot(), NOW - 1)
    ticks = [[NOW - 12 + i, ev.STATS, 3, 2, 3, 40, 20 + 2 * i, 1, 2] for i in range(12)]
    model.apply_events(
        [
            *ticks,
            [NOW - 2, ev.REQUEST_ADDED, 0, 101, 1],
            [NOW - 1.5, ev.REQUEST_ASSIGNED, 0, 101, 2, 1],
            [NOW - 1.0, ev.NODE_DEAD, 1, 1.5, 1],
            [NOW - 1.0, ev.REQUEST_REQUEUED, 1, 102, 5, 1, 1],
            [NOW - 0.5, ev.REQUEST_PROCESSED, 0, 101, 2],
        ]
    )
    return model


def screen(model: DashboardModel, width: int, height: int) -> list[str]:
    """The rendered screen as plain text lines, trailing blanks removed."""
    console = Console(
        record=True, width=width, height=height, force_terminal=True, color_system=None, file=io.StringIO()
    )
    console.print(render(model, NOW, width, height))
    return [line.rstrip() for line in console.export_text().rstrip("\n").split("\n")]


EXPECTED_100x30 = """\
zlb monitor  tcp://127.0.0.1:5558  up 2:06  2/3 servers active                       22:13:20 ● live
ID  STATE   IN-FLIGHT       HANDLED  HEARTBEAT   PID  HOST   SERVICES
 0  active  █████░░░░░ 1/2       12     120 ms  4242  alpha  default
 1  dead    ░░░░░░░░░░ 0/1        9          -  4243  alpha  default
 2  active  ░░░░░░░░░░ 0/1       13      80 ms  4244  beta   default
Queue   3 waiting (p1:1 p5:2)  in flight 2
Totals  submitted 40  done 33  failed 1  requeued 2  bad input 2
Rate    2.0 req/s  ▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁███████████▁ 60 s
Latency p50 1.5 s  p90 1.5 s  p99 1.5 s  (submit→result, last 10 s)
─ log ──────────────────────────────────────────────────────────────────────────────────────────────
22:13:17 System configured with 3 servers and 2 clients.
22:13:18 Request 101 from Client 0 added to queue with priority 1
22:13:18 ✅ Request 101 assigned to Server 2
22:13:19 ⚠️ Server 1 is dead (silent for 1.5 s); 1 requests re-queued
22:13:19 Request 102 from Client 1 re-queued with priority 5 after attempt 1 (Server 1 lost it)
22:13:19 Request 101 from Client 0 processed by Server 2"""


def test_known_state_renders_the_expected_100x30_screen():
    """A known state renders to exactly the expected text at 100x30."""
    assert screen(known_model(), 100, 30) == EXPECTED_100x30.split("\n")


def test_many_nodes_and_lines_fit_an_80x24_terminal():
    """Forty nodes and two hundred log lines still fit 80x24: rows are cut with a count, the log fills the rest."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.apply_snapshot(snapshot(servers=[server(i, i % 2, 1, i, 50, "h") for i in range(40)]), NOW)
    model.apply_events([[NOW, ev.REQUEST_ADDED, 0, i, 5] for i in range(200)])
    lines = screen(model, 80, 24)
    assert len(lines) == 24
    assert max(len(line) for line in lines) <= 80
    assert any(line.strip() == "… 27 more" for line in lines)
    assert lines[-1].endswith("Request 199 from Client 0 added to queue with priority 5")


def test_events_move_node_load_and_state_between_snapshots():
    """Assignments, completions, death, down and up change the node rows at once, before the next snapshot."""
    model = DashboardModel()
    model.apply_snapshot(snapshot(servers=[server(0, 0, 2, 0, 10, "a"), server(1, 0, 1, 0, 10, "a")]), NOW)
    model.apply_events(
        [
            [NOW, ev.REQUEST_ASSIGNED, 0, 1, 0, 1],
            [NOW, ev.REQUEST_ASSIGNED, 0, 2, 1, 1],
            [NOW, ev.REQUEST_PROCESSED, 0, 1, 0],
            [NOW, ev.NODE_DOWN, 1, 1],
            [NOW, ev.NODE_JOINED, 2, 4, 99, "b"],
        ]
    )
    rows = {i: (n.state, n.in_flight, n.handled, n.capacity) for i, n in model.nodes.items()}
    assert rows == {0: ("active", 0, 1, 2), 1: ("down", 0, 0, 1), 2: ("active", 0, 0, 4)}
    model.apply_events([[NOW, ev.NODE_UP, 1], [NOW, ev.NODE_DEAD, 0, 1.6, 0]])
    assert (model.nodes[1].state, model.nodes[0].state) == ("active", "dead")


def test_latency_percentiles_and_rate_cover_the_recent_window():
    """Submit-to-result latency counts from the first arrival; old results and ticks fall out of the window."""
    model = DashboardModel()
    model.apply_events(
        [
            [NOW - 30, ev.REQUEST_ADDED, 0, 1, 5],
            [NOW - 29, ev.REQUEST_PROCESSED, 0, 1, 0],
            [NOW - 5, ev.REQUEST_ADDED, 0, 2, 5],
            [NOW - 4, ev.REQUEST_REQUEUED, 0, 2, 5, 1, 0],
            [NOW - 2, ev.REQUEST_PROCESSED, 0, 2, 1],
            [NOW - 3, ev.STATS, 0, 0, 1, 10, 100, 0, 0],
            [NOW - 1, ev.STATS, 0, 0, 1, 10, 150, 0, 0],
        ]
    )
    assert model.latency_percentiles(NOW) == {"p50": 3.0, "p90": 3.0, "p99": 3.0}
    assert model.rate(NOW) == 25.0
    assert model.throughput_history(NOW, 3) == [0.0, 50.0, 0.0]


def test_unreachable_balancer_then_restart_is_announced_and_state_reloaded():
    """A lost balancer is shown unreachable; one that comes back with a new start time is announced and re-read."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.apply_snapshot(snapshot(), NOW)
    assert model.connected and model.notice is None
    model.mark_unreachable(NOW + 1)
    assert not model.connected
    assert model.notice == "balancer unreachable at tcp://127.0.0.1:5558 since 22:13:21; retrying…"
    assert screen(model, 100, 30)[0].endswith("3 servers, state unknown 22:13:20 ● balancer unreachable")
    model.apply_snapshot(snapshot(started_at=NOW + 2, servers=[]), NOW + 3)
    assert model.connected and model.nodes == {}
    assert model.notice == "balancer restarted at 22:13:22; state reloaded"
    model.mark_unreachable(NOW + 4)
    model.apply_snapshot(snapshot(started_at=NOW + 2, servers=[]), NOW + 5)
    assert model.notice == "reconnected at 22:13:25"


def test_a_notice_of_an_event_expires_and_one_of_a_lasting_state_does_not():
    """Restart and reconnection banners go after NOTICE_S (one stayed 3 minutes); unreachable stays while it lasts."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.apply_snapshot(snapshot(), NOW)
    model.apply_snapshot(snapshot(started_at=NOW + 2), NOW + 3)
    assert model.notice == "balancer restarted at 22:13:22; state reloaded"
    model.apply_snapshot(snapshot(started_at=NOW + 2), NOW + 3 + NOTICE_S - 1)
    assert model.notice == "balancer restarted at 22:13:22; state reloaded"
    model.apply_snapshot(snapshot(started_at=NOW + 2), NOW + 3 + NOTICE_S)
    assert model.notice is None
    assert "restarted" not in "\n".join(screen(model, 100, 30))
    model.mark_unreachable(NOW + 100)
    model.mark_unreachable(NOW + 100 + 3 * NOTICE_S)
    assert model.notice == "balancer unreachable at tcp://127.0.0.1:5558 since 22:15:00; retrying…"
    model.apply_snapshot(snapshot(started_at=NOW + 2), NOW + 200)
    assert model.notice == "reconnected at 22:16:40"
    model.apply_snapshot(snapshot(started_at=NOW + 2), NOW + 200 + NOTICE_S)
    assert model.notice is None


def test_nodes_show_unknown_with_no_heartbeat_age_while_the_balancer_is_unreachable():
    """Without a balancer the rows say `unknown` and no heartbeat age; `active` and the frozen ages are gone."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.apply_snapshot(snapshot(), NOW)
    model.mark_unreachable(NOW + 1)
    rows = node_rows(screen(model, 100, 30))
    assert [row.split()[:2] for row in rows] == [["0", "unknown"], ["1", "unknown"], ["2", "unknown"]]
    assert not any("active" in row or " ms " in row for row in rows), rows
    model.apply_snapshot(snapshot(), NOW + 2)
    assert node_rows(screen(model, 100, 30))[0].split()[:2] == ["0", "active"]


def node_rows(lines: list[str]) -> list[str]:
    """The node table's rows: lines that start with a server id."""
    return [line for line in lines if re.match(r"\s*\d+\s", line)]


def test_first_contact_after_waiting_is_not_called_a_reconnection():
    """A dashboard started before its balancer says it is waiting, then shows no notice at first contact."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    model.mark_unreachable(NOW)
    assert model.notice == "waiting for the balancer at tcp://127.0.0.1:5558…"
    model.apply_snapshot(snapshot(), NOW + 1)
    assert model.connected and model.notice is None


def test_durations_and_sparklines_read_well():
    """Durations pick a unit by size; a sparkline scales to its largest value."""
    assert [duration(x) for x in (None, 0.25, 2.45, 185, 3723)] == ["-", "250 ms", "2.5 s", "3:05", "1:02:03"]
    assert sparkline([0, 1, 2, 4]) == "▁▂▄█"
    assert sparkline([0, 0]) == "▁▁"


def test_a_failing_journal_and_a_degraded_log_are_shown_under_the_header_while_they_last():
    """The balancer's own problems from its status stand out above the node table, and the screen still fits."""
    model = DashboardModel("tcp://127.0.0.1:5558")
    failing = snapshot()
    failing["status"]["journal"] = {"path": "/var/zlb/j", "healthy": False, "since": NOW - 5, "reason": "it is gone"}
    failing["status"]["log"] = {"path": "/dev/full", "problem": "No space left on device"}
    model.apply_snapshot(failing, NOW)
    lines = screen(model, 120, 24)
    assert len(lines) <= 24
    assert lines[1] == "JOURNAL FAILING since 22:13:15: it is gone; new requests refused (busy), results held"
    assert lines[2] == "LOG DEGRADED: /dev/full: No space left on device; lines are dropped and counted"
    healthy = snapshot()
    healthy["status"]["journal"] = {"path": "/var/zlb/j", "healthy": True, "since": NOW - 5, "reason": None}
    model.apply_snapshot(healthy, NOW + 1)
    assert model.alerts() == [] and "JOURNAL" not in "\n".join(screen(model, 120, 24))


def test_an_ha_leader_shows_its_pair_and_when_it_took_over():
    """With --ha the summary names the leader and its epoch, the standby in sync (or ALONE), and the takeover."""
    from monitor.dashboard import ha_line

    status = {"role": "leader", "epoch": 12, "ha": {"name": "tcp://a:1", "in_sync": True, "standby": "tcp://b:1"}}
    status["ha"]["last_takeover"] = {"at": 0.0 + 3600 * 24 * 365}
    line = ha_line(status).plain
    assert "leader tcp://a:1 (epoch 12)" in line and "standby tcp://b:1 in sync" in line and "leading since" in line
    status["ha"]["in_sync"] = False
    assert "ALONE" in ha_line(status).plain
    assert ha_line({"role": "standby"}) is None and ha_line({}) is None
