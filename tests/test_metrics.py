"""/metrics: the Prometheus text rendering and the dispatch-latency histogram, parsed with prometheus-client."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from balancer.control import BalancerState, rates, record_sample
from balancer.eventlog import EventLog
from balancer.scheduler import Scheduler
from http_gateway import metrics
from tests.harness import LiveBalancer, ProcessGroup, timeout_arg, wait_until
from tests.test_http_gateway import start_gateway
from wire import events as ev

STATUS = {
    "uptime_s": 12.5,
    "queue_depth": 3,
    "queue_by_priority": {"1": 1, "5": 2},
    "in_flight": 2,
    "requests": {"submitted": 10, "processed": 5, "failed": 1, "requeued": 2},
    "bad_input": {"frontend.malformed": 4, "control.bad_frames": 1},
    "services": {
        "resize": {"waiting": 2, "running": 1, "nodes": 2, "expired": 3, "cancelled": 4, "dead": 5},
        "nosuch": {"waiting": 1, "running": 0, "nodes": 0, "expired": 7, "cancelled": 0, "dead": 0},
    },
}
SERVERS = [
    {"server_id": 0, "in_flight": 2, "capacity": 2, "handled_requests": 4, "state": "active", "active": True},
    {"server_id": 1, "in_flight": 0, "capacity": 1, "handled_requests": 2, "state": "dead", "active": False},
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def registry_with(status: dict[str, Any] | None, servers: list[dict[str, Any]], buckets=(0.1, 1.0)):
    """A gateway registry whose collector answers `status`/`servers`, or is unreachable when status is None."""

    class Away(Exception):
        pass

    def fetch() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if status is None:
            raise Away()
        return status, servers

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.BalancerCollector(fetch, Away))
    return registry, metrics.LatencyTracker(registry, buckets=buckets)


def test_latency_tracker_measures_dispatch_wait_and_end_to_end_time():
    """Arrival (or re-queue) to assignment, and arrival to result, land in the right buckets; strays are ignored."""
    registry, tracker = registry_with(STATUS, SERVERS)
    tracker.feed(
        [
            [100.0, ev.REQUEST_ADDED, 1, 7, 5],
            [100.05, ev.REQUEST_ASSIGNED, 1, 7, 0, 1],
            [101.0, ev.REQUEST_REQUEUED, 1, 7, 5, 1, 0],
            [101.5, ev.REQUEST_ASSIGNED, 1, 7, 2, 2],
            [102.0, ev.REQUEST_ADDED, 2, 7, 5],
            [105.0, ev.REQUEST_ASSIGNED, 2, 7, 1, 1],
            [106.0, ev.REQUEST_ASSIGNED, 9, 9, 1, 1],
            [106.5, ev.REQUEST_PROCESSED, 1, 7, 2],
            [106.6, ev.REQUEST_FAILED, 2, 7, 1, "boom"],
            [107.0, ev.REQUEST_PROCESSED, 9, 9, 1],
        ]
    )
    got = samples(metrics.render(registry).decode())
    wait = "zlb_dispatch_latency_seconds"
    assert [got[(f"{wait}_bucket", (("le", le),))] for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert got[(f"{wait}_count", ())] == 3
    assert abs(got[(f"{wait}_sum", ())] - 3.55) < 1e-9
    total = "zlb_request_latency_seconds"
    assert [got[(f"{total}_bucket", (("le", le),))] for le in ("0.1", "1.0", "+Inf")] == [0, 0, 2]
    assert abs(got[(f"{total}_sum", ())] - 11.1) < 1e-9
    # Nearest rank over 4.6 s and 6.5 s: the lower is the p50 (half the results took at most that).
    assert tracker.percentiles(107.0) == {"p50": pytest.approx(4.6), "p90": 6.5, "p99": 6.5, "count": 2}
    assert tracker.percentiles(200.0)["count"] == 0


def test_latency_tracker_forgets_the_oldest_beyond_its_bound():
    """Only `max_tracked` waiting requests are remembered, so memory stays bounded."""
    registry = CollectorRegistry()
    tracker = metrics.LatencyTracker(registry, max_tracked=2)
    tracker.feed([[0.0, ev.REQUEST_ADDED, 0, i, 5] for i in range(3)])
    tracker.feed([[1.0, ev.REQUEST_ASSIGNED, 0, i, 0, 1] for i in range(3)])
    assert samples(metrics.render(registry).decode())[("zlb_dispatch_latency_seconds_count", ())] == 2


def test_render_parses_as_prometheus_text_with_every_family():
    """The page parses and carries request counters, queue depth, per-node load, bad input and latency."""
    registry, tracker = registry_with(STATUS, SERVERS, buckets=(0.5,))
    tracker.dispatch.observe(0.2)
    tracker.dispatch.observe(2.0)
    got = samples(metrics.render(registry).decode())
    assert got[("zlb_up", ())] == 1
    assert got[("zlb_requests_total", (("status", "processed"),))] == 5
    assert got[("zlb_requests_total", (("status", "requeued"),))] == 2
    assert got[("zlb_requests_current", (("status", "pending"),))] == 3
    assert got[("zlb_queue_depth", ())] == 3
    assert got[("zlb_queue_depth_by_priority", (("priority", "5"),))] == 2
    assert got[("zlb_node_in_flight", (("server_id", "0"),))] == 2
    assert got[("zlb_node_handled_total", (("server_id", "1"),))] == 2
    assert got[("zlb_node_state", (("server_id", "1"), ("state", "dead")))] == 1
    assert got[("zlb_nodes_active", ())] == 1
    assert got[("zlb_bad_input_total", (("kind", "malformed"), ("socket", "frontend")))] == 4
    assert got[("zlb_dispatch_latency_seconds_bucket", (("le", "0.5"),))] == 1
    assert got[("zlb_dispatch_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert got[("zlb_dispatch_latency_seconds_count", ())] == 2
    assert got[("zlb_uptime_seconds", ())] == 12.5
    resize, nosuch = (("service", "resize"),), (("service", "nosuch"),)
    assert (got[("zlb_service_queue_depth", resize)], got[("zlb_service_queue_depth", nosuch)]) == (2, 1)
    assert (got[("zlb_service_running", resize)], got[("zlb_service_nodes", nosuch)]) == (1, 0)
    assert got[("zlb_service_expired_total", nosuch)] == 7
    assert (got[("zlb_service_cancelled_total", resize)], got[("zlb_service_dead_total", resize)]) == (4, 5)


def test_unreachable_balancer_is_zlb_up_0_and_the_histograms_remain():
    """With the balancer away a scrape still succeeds: zlb_up 0 and the gateway's own histograms."""
    registry, _ = registry_with(None, [])
    got = samples(metrics.render(registry).decode())
    assert got[("zlb_up", ())] == 0
    assert ("zlb_queue_depth", ()) not in got
    assert got[("zlb_dispatch_latency_seconds_count", ())] == 0


def live_samples(url_get: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = url_get("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(reply.body.decode())


def test_live_metrics_follow_real_traffic(balancer: LiveBalancer, procs: ProcessGroup):
    """After real requests through a real node, /metrics counts them and their dispatch latencies."""
    gateway = start_gateway(procs)
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    done = procs.run("client", "--id", "1", "--requests", "4", "--timeout", timeout_arg(20))
    assert done.returncode == 0, done.stderr

    def counted() -> dict:
        got = live_samples(gateway.call)
        done = got[("zlb_dispatch_latency_seconds_count", ())] == 4 == got[("zlb_request_latency_seconds_count", ())]
        return got if done else {}

    got = wait_until(counted, 10, "four dispatches and four results in the histograms")
    assert got[("zlb_requests_total", (("status", "processed"),))] == 4
    assert got[("zlb_node_handled_total", (("server_id", "0"),))] == 4
    assert got[("zlb_node_in_flight", (("server_id", "0"),))] == 0
    assert got[("zlb_up", ())] == 1


def test_status_rates_cover_the_recent_window_and_fall_back_to_uptime():
    """Rates come from counter samples over about ten seconds; with one sample they are averages over the uptime."""
    state = BalancerState(Scheduler(), EventLog(None), {}, started_mono=0.0, started_wall=0.0)
    state.scheduler.counters.update(submitted=50, processed=40)
    record_sample(state, 20.0)
    assert rates(state, 20.0) == {"window_s": 20.0, "submitted_per_s": 2.5, "processed_per_s": 2.0}
    for second in range(21, 41):
        state.scheduler.counters.update(submitted=50 + 10 * (second - 20), processed=40 + 5 * (second - 20))
        record_sample(state, float(second))
    assert rates(state, 40.0) == {"window_s": 10.0, "submitted_per_s": 10.0, "processed_per_s": 5.0}
    assert len(state.samples) <= 12


def test_label_values_are_escaped():
    """Quotes, backslashes and newlines in a label value (a server's state) survive the parser."""
    odd = [{**SERVERS[0], "state": 'a"b\\c\nd'}]
    registry, _ = registry_with(STATUS, odd)
    got = samples(metrics.render(registry).decode())
    assert got[("zlb_node_state", (("server_id", "0"), ("state", 'a"b\\c\nd')))] == 1


def test_a_failing_journal_shows_as_zlb_journal_healthy_0():
    """With --journal the page says whether it can be written, how often it could not, and what a start lost."""
    journal = {"path": "/j", "healthy": False, "since": 1.0, "reason": "gone", "retry_error": None, "lock": "/j.lock"}
    counters = {"journal_failures": 2, "journal_records_lost": 199}
    registry, _tracker = registry_with({**STATUS, "journal": journal, "counters": counters}, SERVERS)
    got = samples(metrics.render(registry).decode())
    assert got[("zlb_journal_healthy", ())] == 0
    assert got[("zlb_journal_failures_total", ())] == 2
    assert got[("zlb_journal_records_lost", ())] == 199
    registry, _tracker = registry_with({**STATUS, "journal": {**journal, "healthy": True}}, SERVERS)
    assert samples(metrics.render(registry).decode())[("zlb_journal_healthy", ())] == 1
    registry, _tracker = registry_with(STATUS, SERVERS)  # no journal: no journal families
    assert not [key for key in samples(metrics.render(registry).decode()) if key[0].startswith("zlb_journal")]
