"""/metrics through prometheus-client: a collector over the balancer's status, and latency histograms.

The balancer keeps counters, not latencies, so the gateway measures them from
the event stream it already follows: `LatencyTracker` is fed stamped events
and observes two prometheus-client histograms. `BalancerCollector` asks the
balancer for `status` and `servers` at scrape time, so a scrape always shows
the balancer's own numbers; with the balancer away it yields `zlb_up 0`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from wire import events as ev
from wire.percentiles import p50_p90_p99

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Upper bounds in seconds; waits run from sub-millisecond (idle nodes) to seconds (backlog).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Requests in flight that we remember the start of; the oldest are forgotten beyond this.
MAX_TRACKED = 100_000
# The dashboard's latency percentiles cover results of the last this many seconds.
RECENT_WINDOW_S = 10.0

Fetch = Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]


class LatencyTracker:
    """Dispatch wait (arrival or re-queue to assignment) and end-to-end time (arrival to result)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        buckets: tuple[float, ...] = LATENCY_BUCKETS_S,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.dispatch = Histogram(
            "zlb_dispatch_latency_seconds",
            "Time from a request's arrival or re-queue to its assignment.",
            buckets=buckets,
            registry=registry,
        )
        self.total = Histogram(
            "zlb_request_latency_seconds",
            "Time from a request's arrival to its result (processed or failed).",
            buckets=buckets,
            registry=registry,
        )
        self.max_tracked = max_tracked
        self._waiting: OrderedDict[tuple[int, int], float] = OrderedDict()
        self._arrived: OrderedDict[tuple[int, int], float] = OrderedDict()
        self.recent: deque[tuple[float, float]] = deque(maxlen=10_000)

    def feed(self, events: Iterable[list[Any]]) -> None:
        """Take stamped events `[ts, kind, *args]`; only request events matter."""
        for event in events:
            record = ev.parse(event)
            if record is None or not record.kind.startswith("request.") or record.kind == ev.REQUEST_LATE_RESULT:
                continue
            kind, key, ts = record.kind, (record.client_id, record.request_id), record.ts
            if kind == ev.REQUEST_ADDED:
                self._remember(self._waiting, key, ts)
                self._remember(self._arrived, key, ts)
            elif kind == ev.REQUEST_REQUEUED:
                self._remember(self._waiting, key, ts)
            elif kind == ev.REQUEST_ASSIGNED:
                started = self._waiting.pop(key, None)
                if started is not None:
                    self.dispatch.observe(max(0.0, ts - started))
            elif kind in (ev.REQUEST_PROCESSED, ev.REQUEST_FAILED):
                started = self._arrived.pop(key, None)
                if started is not None:
                    self.total.observe(max(0.0, ts - started))
                    self.recent.append((ts, ts - started))

    def _remember(self, table: OrderedDict[tuple[int, int], float], key: Any, ts: float) -> None:
        table[key] = ts
        if len(table) > self.max_tracked:
            table.popitem(last=False)

    def percentiles(self, now: float) -> dict[str, float | None]:
        """p50/p90/p99 of end-to-end times of results in the last RECENT_WINDOW_S (None when there are none)."""
        while self.recent and self.recent[0][0] < now - RECENT_WINDOW_S:
            self.recent.popleft()
        values = sorted(v for _, v in self.recent)
        return {**p50_p90_p99(values), "count": len(values)}


class BalancerCollector(Collector):
    """Metric families from the balancer's `status` and `servers` replies, fetched at scrape time."""

    def __init__(self, fetch: Fetch, unreachable: type[Exception]) -> None:
        self._fetch = fetch
        self._unreachable = unreachable

    def collect(self) -> Iterator[Metric]:
        try:
            status, servers = self._fetch()
        except self._unreachable:
            yield _gauge("zlb_up", "1 when the balancer answered this scrape.", [({}, 0)])
            return
        yield from families(status, servers)


def _gauge(name: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, name, help_text, samples)


def _counter(name: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> CounterMetricFamily:
    return _family(CounterMetricFamily, name, help_text, samples)


def _family(kind: Any, name: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]) -> Any:
    rows = list(samples)
    names = sorted(rows[0][0]) if rows else []
    family = kind(name, help_text, labels=names)
    for labels, value in rows:
        family.add_metric([str(labels[n]) for n in names], value)
    return family


def families(status: dict[str, Any], servers: list[dict[str, Any]]) -> Iterator[Metric]:
    """Every family derived from one `status` and one `servers` reply."""
    yield _gauge("zlb_up", "1 when the balancer answered this scrape.", [({}, 1)])
    yield _gauge("zlb_uptime_seconds", "Seconds since the balancer started.", [({}, status["uptime_s"])])
    counters = sorted(status.get("requests", {}).items())
    yield _counter(
        "zlb_requests",
        "Requests by outcome since the balancer started (submitted, processed, failed, requeued, ...).",
        [({"status": name}, value) for name, value in counters],
    )
    current = [({"status": "pending"}, status["queue_depth"]), ({"status": "assigned"}, status["in_flight"])]
    yield _gauge("zlb_requests_current", "Requests waiting (pending) or running (assigned) now.", current)
    yield _gauge("zlb_queue_depth", "Requests waiting for a server.", [({}, status["queue_depth"])])
    by_priority = [({"priority": p}, n) for p, n in status.get("queue_by_priority", {}).items()]
    yield _gauge("zlb_queue_depth_by_priority", "Waiting requests per priority.", by_priority)
    yield _gauge("zlb_in_flight", "Requests running on server nodes.", [({}, status["in_flight"])])
    yield from _service_families(status.get("services", {}))
    yield from _server_families(servers)
    yield from _journal_families(status)
    bad = [({"socket": k.split(".", 1)[0], "kind": k.split(".", 1)[-1]}, v) for k, v in status["bad_input"].items()]
    yield _counter("zlb_bad_input", "Bad messages dropped, by socket and kind.", sorted(bad, key=str))


def _service_families(services: dict[str, dict[str, int]]) -> Iterator[Metric]:
    """Per service (label `service`): waiting, running and live nodes now; expired, cancelled and dead so far."""

    def per_service(key: str) -> list[tuple[dict[str, Any], float]]:
        return [({"service": name}, row[key]) for name, row in sorted(services.items())]

    yield _gauge("zlb_service_queue_depth", "Requests of the service waiting for a node.", per_service("waiting"))
    yield _gauge("zlb_service_running", "Requests of the service running on nodes.", per_service("running"))
    yield _gauge("zlb_service_nodes", "Live nodes offering the service.", per_service("nodes"))
    yield _counter("zlb_service_expired", "Requests of the service whose deadline passed.", per_service("expired"))
    yield _counter("zlb_service_cancelled", "Requests of the service cancelled.", per_service("cancelled"))
    yield _counter("zlb_service_dead", "Requests of the service that failed every attempt.", per_service("dead"))


def _journal_families(status: dict[str, Any]) -> Iterator[Metric]:
    """With --journal: whether it can be written now, and what its failures and the last start lost."""
    journal = status.get("journal")
    if not journal:
        return
    healthy = [({}, 1 if journal["healthy"] else 0)]
    yield _gauge("zlb_journal_healthy", "0 while the journal cannot be written (new work refused as busy).", healthy)
    counters = status.get("counters", {})
    failures = [({}, counters.get("journal_failures", 0))]
    yield _counter("zlb_journal_failures", "Times the journal turned unwritable since the balancer started.", failures)
    lost = [({}, counters.get("journal_records_lost", 0))]
    yield _gauge("zlb_journal_records_lost", "Journal records the last start could not read (damaged or cut).", lost)


def _server_families(servers: list[dict[str, Any]]) -> Iterator[Metric]:
    def per_node(key: str) -> list[tuple[dict[str, Any], float]]:
        return [({"server_id": s["server_id"]}, s[key]) for s in servers]

    yield _gauge("zlb_node_in_flight", "Requests running on each server node.", per_node("in_flight"))
    yield _gauge("zlb_node_capacity", "Requests each server node runs at once.", per_node("capacity"))
    yield _counter("zlb_node_handled", "Requests each server node has finished.", per_node("handled_requests"))
    states = [({"server_id": s["server_id"], "state": s["state"]}, 1) for s in servers]
    yield _gauge("zlb_node_state", "1 for each server node's current state.", states)
    active = sum(1 for s in servers if s["active"])
    yield _gauge("zlb_nodes_active", "Server nodes taking work.", [({}, active)])


def make_registry(fetch: Fetch, unreachable: type[Exception]) -> tuple[CollectorRegistry, LatencyTracker]:
    """A private registry (no process metrics of this gateway) with the collector and the histograms."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(fetch, unreachable))
    return registry, LatencyTracker(registry)


def render(registry: CollectorRegistry) -> bytes:
    """The exposition in Prometheus text format 0.0.4."""
    return generate_latest(registry)
