"""The benchmark scenarios. Each returns one JSON-ready record and table rows.

Every record carries the common fields (requests_per_s, p50_us, p99_us,
balancer_cpu_us_per_request, balancer_rss_mb; None where one does not apply)
plus the scenario's own figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import procstat, stats
from bench.harness import Bench, BenchError, LoadResult, Target
from wire import control_client
from wire import protocol as p

COMMON_FIELDS = ("requests_per_s", "p50_us", "p99_us", "balancer_cpu_us_per_request", "balancer_rss_mb")
# The fields each scenario adds; the smoke test checks them all.
SCENARIO_FIELDS: dict[str, tuple[str, ...]] = {
    "throughput": ("p90_us", "max_us", "nodes", "clients", "window", "errors"),
    "latency": ("p90_us", "max_us", "errors"),
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
    "nodes": (
        "nodes_connected",
        "idle_cpu_percent",
        "cpu_us_per_request_4_nodes",
        "dispatch_vs_4_nodes",
        "dispatch_us_per_request",
        "dispatch_us_per_request_4_nodes",
    ),
    "payload": ("sizes",),
}
SCENARIOS = tuple(SCENARIO_FIELDS)


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
    payload_sizes: tuple[int, ...] = (1024, 256 * 1024)

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny counts: every scenario in a few seconds."""
        return cls(
            nodes=2,
            window=20,
            duration=0.3,
            warmup_s=0.1,
            queue_size=2000,
            sim_nodes=40,
            sim_procs=2,
            heartbeat_ms=200,  # short for a quick failover, long enough not to starve on a busy CI box
            service_ms=1.0,
        )


@dataclass
class Outcome:
    """One scenario's record (for --json) and its table rows."""

    record: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _common(load: LoadResult | None, rss_mb: float | None) -> dict[str, Any]:
    return {
        "requests_per_s": None if load is None else load.requests_per_s,
        "p50_us": None if load is None else load.latency_us["p50_us"],
        "p99_us": None if load is None else load.latency_us["p99_us"],
        "balancer_cpu_us_per_request": None if load is None else load.cpu_us_per_request,
        "balancer_rss_mb": rss_mb,
    }


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


class Runner:
    """Runs scenarios against one Bench and remembers results they share."""

    def __init__(self, bench: Bench, config: BenchConfig) -> None:
        self.bench = bench
        self.cfg = config
        self.results: dict[str, Outcome] = {}

    def run(self, name: str) -> Outcome:
        outcome = getattr(self, f"scenario_{name}")()
        self.results[name] = outcome
        return outcome

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

    # ---- scenarios --------------------------------------------------------

    def scenario_throughput(self) -> Outcome:
        """Clients keep `window` requests each in flight against zlb."""
        cfg = self.cfg

        def measure(target: Target) -> tuple[LoadResult, float]:
            return self._load(target, cfg.clients, cfg.window), procstat.peak_rss_mib(target.pid)

        load, rss = self._with(self._zlb(), measure)
        record = {
            **_common(load, rss),
            "p90_us": load.latency_us["p90_us"],
            "max_us": load.latency_us["max_us"],
            "nodes": cfg.nodes,
            "clients": cfg.clients,
            "window": cfg.window,
            "errors": load.errors,
        }
        note = f"{cfg.nodes} nodes, {cfg.clients} clients x window {cfg.window}"
        return Outcome(record, [row("throughput", "zlb", load, rss, note)])

    def scenario_latency(self) -> Outcome:
        """One client, one request at a time."""

        def measure(target: Target) -> tuple[LoadResult, float]:
            return self._load(target, 1, 1), procstat.peak_rss_mib(target.pid)

        load, rss = self._with(self._zlb(), measure)
        record = {
            **_common(load, rss),
            "p90_us": load.latency_us["p90_us"],
            "max_us": load.latency_us["max_us"],
            "errors": load.errors,
        }
        return Outcome(record, [row("latency", "zlb", load, rss, "1 client, window 1")])

    def scenario_ceiling(self) -> Outcome:
        """zlb against the minimal relay and zmq.proxy with the same clients, in this run."""
        cfg = self.cfg
        zlb_many, zlb_one, zlb_rss = self._throughput_and_latency(self._zlb())
        relay_many, relay_one, relay_rss = self._throughput_and_latency(
            lambda: self.bench.start_relay(cfg.nodes, cfg.capacity)
        )
        proxy_many, proxy_one, proxy_rss = self._throughput_and_latency(lambda: self.bench.start_proxy(cfg.nodes))
        record = {
            **_common(zlb_many, zlb_rss),
            "p50_us": zlb_one.latency_us["p50_us"],
            "p99_us": zlb_one.latency_us["p99_us"],
            "relay_requests_per_s": relay_many.requests_per_s,
            "relay_p50_us": relay_one.latency_us["p50_us"],
            "relay_p99_us": relay_one.latency_us["p99_us"],
            "relay_cpu_us_per_request": relay_many.cpu_us_per_request,
            "relay_rss_mb": relay_rss,
            "proxy_requests_per_s": proxy_many.requests_per_s,
            "proxy_p50_us": proxy_one.latency_us["p50_us"],
            "proxy_p99_us": proxy_one.latency_us["p99_us"],
            "proxy_cpu_us_per_request": proxy_many.cpu_us_per_request,
            "vs_relay": stats.ratio(zlb_many.requests_per_s, relay_many.requests_per_s),
            "vs_proxy": stats.ratio(zlb_many.requests_per_s, proxy_many.requests_per_s),
            "p50_vs_relay": stats.ratio(zlb_one.latency_us["p50_us"], relay_one.latency_us["p50_us"]),
            "p50_vs_proxy": stats.ratio(zlb_one.latency_us["p50_us"], proxy_one.latency_us["p50_us"]),
            "errors": sum(x.errors for x in (zlb_many, zlb_one, relay_many, relay_one, proxy_many, proxy_one)),
        }
        rows = [
            row("ceiling", "zlb", zlb_many, zlb_rss, f"window {cfg.window} x {cfg.clients}"),
            row("ceiling", "relay", relay_many, relay_rss, f"window {cfg.window} x {cfg.clients}"),
            row("ceiling", "zmq.proxy", proxy_many, proxy_rss, f"window {cfg.window} x {cfg.clients}"),
            row("ceiling", "zlb", zlb_one, zlb_rss, "window 1"),
            row("ceiling", "relay", relay_one, relay_rss, "window 1"),
            row("ceiling", "zmq.proxy", proxy_one, proxy_rss, "window 1"),
        ]
        notes = [
            f"ceiling: zlb throughput = {record['vs_relay']} x relay, {record['vs_proxy']} x zmq.proxy; "
            f"window-1 p50 = {record['p50_vs_relay']} x relay, {record['p50_vs_proxy']} x zmq.proxy"
        ]
        return Outcome(record, rows, notes)

    def scenario_priority(self) -> Outcome:
        """Priority-1 requests at a low rate while priority-9 requests saturate every node."""
        cfg = self.cfg
        payload = f'{{"cost_ms": {cfg.service_ms}}}'
        probe_rate = 100.0 if cfg.duration >= 1 else 200.0

        def probe(target: Target) -> LoadResult:
            return self._load(target, 1, 1, payload=payload, priority=1, rate=probe_rate)

        def measure(target: Target) -> tuple[LoadResult, LoadResult, int, float]:
            idle = probe(target)
            backlog_window = 4 * cfg.nodes * max(1, cfg.window // 2)
            low = self.bench.start_clients(
                target, cfg.clients, backlog_window, duration=3600, payload=payload, priority=9
            )
            try:
                status = self.bench.wait_status(
                    target, lambda s: s["queue_depth"] >= cfg.nodes * 2, "a low-priority backlog", 20
                )
                busy = probe(target)
                depth = min(status["queue_depth"], self.bench.status(target)["queue_depth"])
            finally:
                self.bench.procs.stop(low.procs)
            return idle, busy, depth, procstat.peak_rss_mib(target.pid)

        idle, busy, depth, rss = self._with(self._zlb(capacity=1, handler="simulate"), measure)
        record = {
            **_common(busy, rss),
            "idle_p50_us": idle.latency_us["p50_us"],
            "idle_p99_us": idle.latency_us["p99_us"],
            "p99_vs_idle": stats.ratio(busy.latency_us["p99_us"], idle.latency_us["p99_us"]),
            "backlog": depth,
            "service_ms": cfg.service_ms,
            "errors": idle.errors + busy.errors,
        }
        rows = [
            row("priority", "zlb idle", idle, rss, f"priority 1 alone, {cfg.service_ms} ms service"),
            row("priority", "zlb loaded", busy, rss, f"priority 1 over a priority-9 backlog of >= {depth}"),
        ]
        notes = [f"priority: loaded p99 = {record['p99_vs_idle']} x idle p99 (target <= 3)"]
        return Outcome(record, rows, notes)

    def scenario_failover(self) -> Outcome:
        """kill -9 a node holding requests; time until its last request is answered elsewhere."""
        cfg = self.cfg
        # Long enough (about half a second of work) that the victim surely holds requests when we look.
        requests, cost_ms, capacity = (400, 20.0, 8) if cfg.duration >= 1 else (40, 100.0, 4)
        payload = f'{{"cost_ms": {cost_ms}}}'
        liveness = p.LIVENESS
        start = self._zlb(nodes=2, capacity=capacity, handler="simulate", heartbeat_ms=cfg.heartbeat_ms, with_ids=True)

        def measure(target: Target) -> dict[str, Any]:
            run = self.bench.start_clients(target, 1, requests, requests=requests, payload=payload, record_replies=True)
            victim = target.nodes[0]
            held = self._wait_holding(target, 0)
            self.bench.procs.kill9(victim)
            killed_ns = time.monotonic_ns()
            target.nodes.remove(victim)
            load = self.bench.collect(run, 60)
            replies = load.clients[0]["replies"]
            retried = [r for r in replies if r[2] >= 2]
            last_ns = max((r[3] for r in retried), default=None)
            answered = {r[0] for r in replies}
            return {
                **_common(None, procstat.peak_rss_mib(target.pid)),
                "failover_ms": None if last_ns is None else round((last_ns - killed_ns) / 1e6, 1),
                "target_ms": liveness * cfg.heartbeat_ms + 100,
                "heartbeat_ms": cfg.heartbeat_ms,
                "held_at_kill": held,
                "requeued": len(retried),
                "lost": requests - len(answered),
                "duplicated": load.duplicates,
                "errors": load.errors,
            }

        record = self._with(start, measure)
        note = (
            f"kill -9 with {record['held_at_kill']} held: last re-run answer {record['failover_ms']} ms after the "
            f"kill (target {record['target_ms']}), lost {record['lost']}, duplicated {record['duplicated']}"
        )
        return Outcome(record, [row("failover", "zlb", None, record["balancer_rss_mb"], note)], [f"failover: {note}"])

    def _wait_holding(self, target: Target, node_id: int) -> int:
        """Wait until node `node_id` has requests in flight; return how many."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for server in control_client.call(target.control, "servers", timeout_s=5.0):
                if server["server_id"] == node_id and server["in_flight"] > 0:
                    return server["in_flight"]
            time.sleep(0.005)  # wait-ok: poll interval of a deadline-bounded wait
        raise BenchError(f"node {node_id} never held a request")

    def scenario_queue(self) -> Outcome:
        """A million requests queued with no node up, then drained by nodes that join."""
        cfg = self.cfg
        count = cfg.queue_size

        def measure(target: Target) -> dict[str, Any]:
            rss_before = procstat.memory_kib(target.pid)["VmRSS"]
            run = self.bench.start_clients(target, 1, count, requests=count, rate=cfg.queue_rate)
            go = time.monotonic()
            self.bench.wait_status(target, lambda s: s["queue_depth"] >= count, f"{count} queued requests", 600)
            enqueue_s = time.monotonic() - go
            rss_full = procstat.memory_kib(target.pid)["VmRSS"]
            for _ in range(cfg.nodes):
                self.bench.add_zlb_node(target, cfg.capacity, "echo", [])
            load = self.bench.collect(run, 1200)
            client = load.clients[0]
            drain_s = (client["last_reply_mono_ns"] - client["first_reply_mono_ns"]) / 1e9
            return {
                **_common(None, procstat.peak_rss_mib(target.pid)),
                "queued": count,
                "sent_per_s_limit": cfg.queue_rate or None,
                "enqueue_s": round(enqueue_s, 3),
                "enqueue_per_s": stats.rate(count, enqueue_s),
                "bytes_per_waiting_request": stats.per_item((rss_full - rss_before) * 1024, count, 1),
                "balancer_rss_empty_mb": round(rss_before / 1024, 1),
                "balancer_rss_full_mb": round(rss_full / 1024, 1),
                "drain_s": round(drain_s, 3),
                "drain_per_s": stats.rate(load.completed, drain_s),
                "balancer_cpu_us_per_request": load.cpu_us_per_request,
                "lost": load.unanswered,
                "errors": load.errors,
            }

        record = self._with(self._zlb(nodes=0), measure)
        record["scheduler_bytes_per_waiting_request"] = self.bench.scheduler_bytes_per_request(count)
        note = (
            f"{count} queued at {record['enqueue_per_s']}/s, {record['bytes_per_waiting_request']} B each "
            f"(scheduler alone {record['scheduler_bytes_per_waiting_request']} B); "
            f"drained at {record['drain_per_s']}/s"
        )
        return Outcome(record, [row("queue", "zlb", None, record["balancer_rss_mb"], note)], [f"queue: {note}"])

    def scenario_nodes(self) -> Outcome:
        """Dispatch cost and idle CPU with 1,000 simulated nodes versus 4."""
        cfg = self.cfg
        idle_s = max(0.5, min(3.0, cfg.duration))

        def measure_with(count: int, procs: int, capacity: int) -> Callable[[Target], dict[str, Any]]:
            def measure(target: Target) -> dict[str, Any]:
                self.bench.start_simnodes(target, count, procs, capacity, p.HEARTBEAT_INTERVAL_MS)
                self.bench.wait_zlb_nodes(target, count, 60)
                cpu0 = procstat.cpu_seconds(target.pid)
                t0 = time.monotonic()
                time.sleep(idle_s)  # wait-ok: the idle interval being measured, not a synchronisation
                idle_cpu_s_per_s = (procstat.cpu_seconds(target.pid) - cpu0) / (time.monotonic() - t0)
                t1 = time.monotonic()
                load = self._load(target, cfg.clients, cfg.window)
                loaded_s = time.monotonic() - t1
                dispatch_cpu_s = load.broker_cpu_s - idle_cpu_s_per_s * loaded_s
                return {
                    "load": load,
                    "idle_cpu_percent": round(idle_cpu_s_per_s * 100, 2),
                    "dispatch_us_per_request": stats.per_item(max(0.0, dispatch_cpu_s) * 1e6, load.completed),
                    "rss": procstat.peak_rss_mib(target.pid),
                }

            return measure

        few_capacity = max(1, -(-cfg.clients * cfg.window // 4))
        few = self._with(self._zlb(nodes=0), measure_with(4, 1, few_capacity))
        many = self._with(self._zlb(nodes=0), measure_with(cfg.sim_nodes, cfg.sim_procs, 1))
        record = {
            **_common(many["load"], many["rss"]),
            "nodes_connected": cfg.sim_nodes,
            "idle_cpu_percent": many["idle_cpu_percent"],
            "idle_cpu_percent_4_nodes": few["idle_cpu_percent"],
            "cpu_us_per_request_4_nodes": few["load"].cpu_us_per_request,
            "requests_per_s_4_nodes": few["load"].requests_per_s,
            "dispatch_us_per_request": many["dispatch_us_per_request"],
            "dispatch_us_per_request_4_nodes": few["dispatch_us_per_request"],
            "dispatch_vs_4_nodes": stats.ratio(many["dispatch_us_per_request"], few["dispatch_us_per_request"]),
            "cpu_vs_4_nodes": stats.ratio(many["load"].cpu_us_per_request, few["load"].cpu_us_per_request),
            "errors": many["load"].errors + few["load"].errors,
        }
        rows = [
            row("nodes", "zlb 4 sim nodes", few["load"], few["rss"], f"idle CPU {few['idle_cpu_percent']}%"),
            row(
                "nodes",
                f"zlb {cfg.sim_nodes} sim nodes",
                many["load"],
                many["rss"],
                f"idle CPU {many['idle_cpu_percent']}%",
            ),
        ]
        notes = [
            f"nodes: dispatch CPU per request (idle cost removed) {record['dispatch_us_per_request']} us with "
            f"{cfg.sim_nodes} nodes vs {record['dispatch_us_per_request_4_nodes']} us with 4 "
            f"= {record['dispatch_vs_4_nodes']} x (target <= 1.5)"
        ]
        return Outcome(record, rows, notes)

    def scenario_payload(self) -> Outcome:
        """Throughput with large opaque payloads, zlb and the relay side by side."""
        cfg = self.cfg
        sizes: list[dict[str, Any]] = []
        rows = []
        for size in cfg.payload_sizes:

            def measure(target: Target, size: int = size) -> tuple[LoadResult, float]:
                return self._load(target, cfg.clients, cfg.window, payload_bytes=size), procstat.peak_rss_mib(
                    target.pid
                )

            zlb, zlb_rss = self._with(self._zlb(), measure)
            relay, relay_rss = self._with(lambda: self.bench.start_relay(cfg.nodes, cfg.capacity), measure)
            sizes.append(
                {
                    "payload_bytes": size,
                    "requests_per_s": zlb.requests_per_s,
                    "mib_per_s": _mib_per_s(zlb.requests_per_s, size),
                    "p50_us": zlb.latency_us["p50_us"],
                    "p99_us": zlb.latency_us["p99_us"],
                    "balancer_cpu_us_per_request": zlb.cpu_us_per_request,
                    "balancer_rss_mb": zlb_rss,
                    "relay_requests_per_s": relay.requests_per_s,
                    "relay_cpu_us_per_request": relay.cpu_us_per_request,
                    "vs_relay": stats.ratio(zlb.requests_per_s, relay.requests_per_s),
                    "errors": zlb.errors + relay.errors,
                }
            )
            rows.append(row("payload", "zlb", zlb, zlb_rss, f"{_size_name(size)} payload"))
            rows.append(row("payload", "relay", relay, relay_rss, f"{_size_name(size)} payload"))
        first = sizes[0]
        record = {k: first[k] for k in COMMON_FIELDS}
        record["sizes"] = sizes
        record["errors"] = sum(s["errors"] for s in sizes)
        notes = [
            f"payload {_size_name(s['payload_bytes'])}: {s['mib_per_s']} MiB/s, {s['vs_relay']} x relay" for s in sizes
        ]
        return Outcome(record, rows, notes)


def _mib_per_s(rps: float | None, size: int) -> float | None:
    return None if rps is None else round(rps * size / (1024 * 1024), 1)


def _size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"
