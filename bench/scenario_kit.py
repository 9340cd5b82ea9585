"""What every benchmark scenario shares: the configuration, the record shape and the runner's helpers.

Every record carries the common fields (requests_per_s, p50_us, p99_us,
balancer_cpu_us_per_request, balancer_rss_mb; None where one does not apply)
plus the scenario's own figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import procstat
from bench.harness import Bench, BenchError, LoadResult, Target
from wire import control_client
from wire import protocol as p

COMMON_FIELDS = ("requests_per_s", "p50_us", "p99_us", "balancer_cpu_us_per_request", "balancer_rss_mb")
# The fields each scenario adds; the smoke test checks them all.
SCENARIO_FIELDS: dict[str, tuple[str, ...]] = {
    "throughput": ("p90_us", "max_us", "nodes", "clients", "window", "errors"),
    "latency": ("p90_us", "max_us", "errors"),
    "harness": (
        "relay_p50_us",
        "proxy_requests_per_s",
        "proxy_cpu_us_per_request",
        "proxy_p50_us",
        "proxy_vs_relay",
        "verdict",
    ),
    "userpath": (
        "requests",
        "resent",
        "relay_requests_per_s",
        "relay_cpu_us_per_request",
        "relay_p50_us",
        "vs_relay",
        "p50_vs_relay",
        "balancer_cpu_us_per_request_window_1",
        "log_writer_cpu_us_per_request",
        "submit_loop_requests_per_s",
        "submit_loop_vs_relay",
    ),
    "ceiling": (
        "relay_requests_per_s",
        "relay_p50_us",
        "proxy_requests_per_s",
        "proxy_p50_us",
        "vs_relay",
        "vs_proxy",
        "p50_vs_relay",
        "p50_vs_proxy",
    ),
    "capacity1": (
        "node_counts",
        "vs_relay_few",
        "vs_relay_many",
        "balancer_cpu_us_per_request_few",
        "balancer_cpu_us_per_request_many",
        "relay_cpu_us_per_request_few",
        "relay_cpu_us_per_request_many",
        "resent",
        "by_nodes",
    ),
    "payloads": (
        "sizes",
        "mb_per_s_256k",
        "relay_mb_per_s_256k",
        "vs_relay_256k",
        "balancer_cpu_us_per_request_256k",
        "balancer_rss_mb_256k",
        "busy_notices",
        "resent",
    ),
    "million": (
        "requests",
        "finished",
        "wall_s",
        "target_wall_s",
        "resent",
        "resent_fraction",
        "busy_notices",
        "busy_refusals",
        "client_rss_mb",
        "second_client_requests",
        "second_client_max_us",
        "second_client_p50_us",
    ),
    "priority": ("idle_p50_us", "idle_p99_us", "p99_vs_idle", "backlog", "service_ms"),
    "failover": ("failover_ms", "target_ms", "held_at_kill", "requeued", "lost", "duplicated"),
    "queue": (
        "queued",
        "enqueue_per_s",
        "bytes_per_waiting_request",
        "scheduler_bytes_per_waiting_request",
        "drain_per_s",
        "lost",
    ),
    "stall": ("longest_stall_ms", "stall_ms_by_phase", "target_ms", "pings", "admin_query_ms", "journal_compactions"),
    "nodes": (
        "nodes_connected",
        "idle_cpu_percent",
        "cpu_us_per_request_4_nodes",
        "dispatch_vs_4_nodes",
        "dispatch_us_per_request",
        "dispatch_us_per_request_4_nodes",
    ),
    "killnode": (
        "kills",
        "rerun_ms",
        "rerun_ms_median",
        "rerun_ms_max",
        "noticed_ms",
        "target_ms",
        "request_s",
        "lost",
    ),
    "lean": ("node_rss_mb", "node_rss_mb_median", "raw_node_rss_mb", "raw_node_rss_mb_median", "target_mb"),
    "ha": (
        "requests",
        "single_requests_per_s",
        "single_p50_us",
        "standby_cpu_us_per_request",
        "ha_vs_single",
        "p50_ha_vs_single",
        "takeovers",
        "takeover_ms",
        "takeover_ms_median",
        "takeover_ms_p90",
        "lease_s",
    ),
}
SCENARIOS = tuple(SCENARIO_FIELDS)
# Names a scenario was known by before it was replaced: `zlb bench --scenario payload` runs `payloads`
# (16 B to 1 MiB against the frame relay) and says so.
REPLACED = {"payload": "payloads"}


@dataclass
class BenchConfig:
    """Everything `zlb bench` can set."""

    nodes: int = 4
    clients: int = 2
    window: int = 100
    requests: int | None = None
    duration: float = 3.0
    warmup_s: float = 0.5
    capacity: int = 50
    payload_bytes: int = 16
    queue_size: int = 1_000_000
    queue_rate: float = 0.0  # requests/s for the queue scenario's sender; 0 sends in one burst
    sim_nodes: int = 1000
    sim_procs: int = 4
    heartbeat_ms: int = p.HEARTBEAT_INTERVAL_MS
    service_ms: float = 5.0
    payload_sizes: tuple[int, ...] = (16, 4 * 1024, 256 * 1024, 1024 * 1024)
    # The payloads scenario's clients keep min(window, this / payload size) in flight each, on both sides.
    payload_window_bytes: int = 16 * 1024 * 1024
    capacity1_nodes: tuple[int, int] = (4, 64)  # the capacity1 scenario's few and many nodes
    burst: int = 1_000_000  # the million scenario's one submit_many
    second_client_requests: int = 100  # one at a time meanwhile, from another client
    second_client_interval_s: float = 0.1
    kills: int = 5  # the killnode scenario's kill -9s
    kill_request_s: float = 2.0  # how long the killed node's request runs
    lean_nodes: int = 5
    user_requests: int = 50_000  # the user-path scenario's submits, shared by its client processes
    takeovers: int = 10  # the ha scenario's leader kills

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny counts: every scenario in a few seconds."""
        return cls(
            nodes=2,
            window=20,
            duration=0.2,
            warmup_s=0.05,
            queue_size=2000,
            sim_nodes=40,
            sim_procs=2,
            heartbeat_ms=200,  # short for a quick failover, long enough not to starve on a busy CI box
            service_ms=1.0,
            user_requests=1000,
            takeovers=2,
            capacity1_nodes=(2, 4),
            burst=2000,
            second_client_requests=10,
            second_client_interval_s=0.01,
            kills=2,
            kill_request_s=0.5,
            lean_nodes=2,
        )


@dataclass
class Outcome:
    """One scenario's record (for --json) and its table rows."""

    record: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def common(load: LoadResult | None, rss_mb: float | None) -> dict[str, Any]:
    return {
        "requests_per_s": None if load is None else load.requests_per_s,
        "p50_us": None if load is None else load.latency_us["p50_us"],
        "p99_us": None if load is None else load.latency_us["p99_us"],
        "balancer_cpu_us_per_request": None if load is None else load.cpu_us_per_request,
        "balancer_rss_mb": rss_mb,
    }


def load_average() -> float:
    """The machine's 1-minute load average: other work on a shared machine moves every figure."""
    return round(os.getloadavg()[0], 2)


def row(scenario: str, target: str, load: LoadResult | None, rss_mb: float | None, note: str = "") -> dict[str, Any]:
    """A table row for one measurement."""
    lat = load.latency_us if load is not None else {}
    return {
        "scenario": scenario,
        "target": target,
        "requests_per_s": None if load is None else load.requests_per_s,
        **{k: lat.get(k) for k in ("p50_us", "p90_us", "p99_us", "max_us")},
        "cpu_us_per_request": None if load is None else load.cpu_us_per_request,
        "rss_mb": rss_mb,
        "note": note,
    }


class RunnerBase:
    """Runs scenarios against one Bench; the helpers every scenario uses."""

    def __init__(self, bench: Bench, config: BenchConfig) -> None:
        self.bench = bench
        self.cfg = config

    # ---- helpers ----------------------------------------------------------

    def _load(self, target: Target, clients: int, window: int, **kw: Any) -> LoadResult:
        cfg = self.cfg
        kw.setdefault("payload_bytes", cfg.payload_bytes)
        if cfg.requests is not None:
            per_client = max(1, cfg.requests // clients)
            run = self.bench.start_clients(target, clients, window, requests=per_client, warmup_s=cfg.warmup_s, **kw)
            return self.bench.collect(run, cfg.warmup_s + 600)
        return self.bench.load(target, clients, window, cfg.duration, cfg.warmup_s, **kw)

    def _with(self, start: Callable[[], Target], measure: Callable[[Target], Any]) -> Any:
        target = start()
        try:
            return measure(target)
        finally:
            self.bench.stop(target)

    def _zlb(self, **kw: Any) -> Callable[[], Target]:
        cfg = self.cfg
        kw.setdefault("nodes", cfg.nodes)
        kw.setdefault("capacity", cfg.capacity)
        return lambda: self.bench.start_zlb(**kw)

    def _throughput_and_latency(self, start: Callable[[], Target]) -> tuple[LoadResult, LoadResult, float]:
        cfg = self.cfg

        def measure(target: Target) -> tuple[LoadResult, LoadResult, float]:
            many = self._load(target, cfg.clients, cfg.window)
            one = self._load(target, 1, 1)
            return many, one, procstat.peak_rss_mib(target.pid)

        return self._with(start, measure)

    def _wait_holding(self, target: Target, node_id: int) -> int:
        """Wait until node `node_id` has requests in flight; return how many."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for server in control_client.call(target.control, "servers", timeout_s=5.0):
                if server["server_id"] == node_id and server["in_flight"] > 0:
                    return server["in_flight"]
            time.sleep(0.005)  # wait-ok: poll interval of a deadline-bounded wait
        raise BenchError(f"node {node_id} never held a request")
