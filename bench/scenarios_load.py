"""Scenarios that measure speed under load: throughput, latency, the harness check, the user path, priority."""

from __future__ import annotations

from collections.abc import Callable

from bench import baselines, procstat, stats
from bench.harness import LoadResult, Target
from bench.scenario_kit import Outcome, RunnerBase, common, load_average, row

# The harness check: zmq.proxy must reach this multiple of the frame relay, or the run is harness-bound.
HARNESS_HEADROOM = 2.0


class LoadScenarios(RunnerBase):
    """How fast zlb serves, alone and against the relay and zmq.proxy."""

    def scenario_throughput(self) -> Outcome:
        """Clients keep `window` requests each in flight against zlb."""
        cfg = self.cfg

        def measure(target: Target) -> tuple[LoadResult, float]:
            return self._load(target, cfg.clients, cfg.window), procstat.peak_rss_mib(target.pid)

        load, rss = self._with(self._zlb(), measure)
        record = {
            **common(load, rss),
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
            **common(load, rss),
            "p90_us": load.latency_us["p90_us"],
            "max_us": load.latency_us["max_us"],
            "errors": load.errors,
        }
        return Outcome(record, [row("latency", "zlb", load, rss, "1 client, window 1")])

    def scenario_ceiling(self) -> Outcome:
        """The old comparison: zlb against bench/relay.py (decodes msgpack) and zmq.proxy behind bench.loadgen."""
        cfg = self.cfg
        zlb_many, zlb_one, zlb_rss = self._throughput_and_latency(self._zlb())
        relay_many, relay_one, relay_rss = self._throughput_and_latency(
            lambda: self.bench.start_relay(cfg.nodes, cfg.capacity)
        )
        proxy_many, proxy_one, proxy_rss = self._throughput_and_latency(lambda: self.bench.start_proxy(cfg.nodes))
        record = {
            **common(zlb_many, zlb_rss),
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
            # The old comparison, kept so earlier figures can be reproduced; harness and userpath replace it.
            "ceiling (old baseline: a relay that decodes msgpack, behind bench.loadgen and zlb nodes): "
            f"zlb throughput = {record['vs_relay']} x relay, {record['vs_proxy']} x zmq.proxy; "
            f"window-1 p50 = {record['p50_vs_relay']} x relay, {record['p50_vs_proxy']} x zmq.proxy"
        ]
        return Outcome(record, rows, notes)

    def scenario_harness(self) -> Outcome:
        """The harness check: the lean clients and raw nodes drive zmq.proxy to >= 2x the frame relay, or say so."""
        cfg = self.cfg
        relay_many, relay_one, relay_rss = self._lean_pair(self._frame_relay())
        proxy_many, proxy_one, proxy_rss = self._lean_pair(lambda: self.bench.start_proxy(cfg.nodes))
        headroom = stats.ratio(proxy_many.requests_per_s, relay_many.requests_per_s)
        verdict = "ok" if headroom is not None and headroom >= HARNESS_HEADROOM else "harness-bound"
        record = {
            **common(relay_many, relay_rss),
            "relay_p50_us": relay_one.latency_us["p50_us"],
            "relay_cpu_us_per_request_window_1": relay_one.cpu_us_per_request,
            **baselines.cpu_fields("proxy", proxy_many),
            "proxy_p50_us": proxy_one.latency_us["p50_us"],
            "proxy_vs_relay": headroom,
            "required": HARNESS_HEADROOM,
            "verdict": verdict,
            "load_average": load_average(),
            "errors": sum(x.errors for x in (relay_many, relay_one, proxy_many, proxy_one)),
        }
        load = f"lean clients {cfg.clients} x window {cfg.window}, {cfg.nodes} raw echo nodes"
        rows = [
            row("harness", "frame relay", relay_many, relay_rss, load),
            row("harness", "zmq.proxy", proxy_many, proxy_rss, load),
            row("harness", "frame relay", relay_one, relay_rss, "1 lean client, window 1"),
            row("harness", "zmq.proxy", proxy_one, proxy_rss, "1 lean client, window 1"),
        ]
        notes = [
            f"harness: zmq.proxy = {headroom} x the frame relay with the same clients and nodes "
            f"(needs >= {HARNESS_HEADROOM}): {verdict}"
        ]
        return Outcome(record, rows, notes)

    def scenario_userpath(self) -> Outcome:
        """The user's path (zlb defaults, `zlb server --handler echo`, the Client API) against the frame relay."""
        cfg = self.cfg

        zlb, relay = self._zlb()(), None
        try:
            relay = self._frame_relay()()
            zlb_many = baselines.user_submit(self.bench, zlb, cfg.clients, cfg.user_requests)
            zlb_loop = baselines.user_submit(self.bench, zlb, cfg.clients, cfg.user_requests, one_by_one=True)
            relay_many = baselines.lean_load(self.bench, relay, cfg.clients, cfg.window, cfg.duration, cfg.warmup_s)
            zlb_one, relay_one = baselines.paired_one_at_a_time(self.bench, zlb, relay, cfg.duration, cfg.warmup_s)
            zlb_rss, relay_rss = procstat.peak_rss_mib(zlb.pid), procstat.peak_rss_mib(relay.pid)
        finally:
            for target in (zlb, relay):
                if target is not None:
                    self.bench.stop(target)
        record = {
            **common(zlb_many, zlb_rss),
            "p50_us": zlb_one.latency_us["p50_us"],
            "p99_us": zlb_one.latency_us["p99_us"],
            "requests": cfg.user_requests,
            "resent": baselines.resent(zlb_many),
            "balancer_cpu_us_per_request_window_1": zlb_one.cpu_us_per_request,
            "log_writer_cpu_us_per_request": zlb_many.helper_cpu_us_per_request,
            "submit_loop_requests_per_s": zlb_loop.requests_per_s,
            "submit_loop_cpu_us_per_request": zlb_loop.cpu_us_per_request,
            **baselines.cpu_fields("relay", relay_many),
            "relay_p50_us": relay_one.latency_us["p50_us"],
            "relay_cpu_us_per_request_window_1": relay_one.cpu_us_per_request,
            "vs_relay": stats.ratio(zlb_many.requests_per_s, relay_many.requests_per_s),
            "p50_vs_relay": stats.ratio(zlb_one.latency_us["p50_us"], relay_one.latency_us["p50_us"]),
            "submit_loop_vs_relay": stats.ratio(zlb_loop.requests_per_s, relay_many.requests_per_s),
            "load_average": load_average(),
            "errors": sum(x.errors for x in (zlb_many, zlb_loop, zlb_one, relay_many, relay_one)),
        }
        rows = [
            row(
                "userpath",
                "zlb",
                zlb_many,
                zlb_rss,
                f"Client API: {cfg.clients} processes submit_many {cfg.user_requests}",
            ),
            row("userpath", "zlb", zlb_loop, zlb_rss, f"Client API: {cfg.clients} processes submit() in a loop"),
            row("userpath", "frame relay", relay_many, relay_rss, f"lean clients {cfg.clients} x window {cfg.window}"),
            row("userpath", "zlb", zlb_one, zlb_rss, "Client API: submit().result(), one at a time"),
            row("userpath", "frame relay", relay_one, relay_rss, "1 lean client, window 1"),
        ]
        notes = [
            f"userpath: zlb throughput = {record['vs_relay']} x the frame relay (target >= 1.0); one at a time "
            f"p50 = {record['p50_vs_relay']} x (target <= 1.2); balancer CPU "
            f"{record['balancer_cpu_us_per_request']} us/request (its log writer "
            f"{record['log_writer_cpu_us_per_request']}) vs relay {record['relay_cpu_us_per_request']}; "
            f"submit() in a loop instead of submit_many: {record['submit_loop_vs_relay']} x"
        ]
        return Outcome(record, rows, notes)

    def _frame_relay(self) -> Callable[[], Target]:
        return lambda: baselines.start_frame_relay(self.bench, self.cfg.nodes, self.cfg.capacity)

    def _lean_pair(self, start: Callable[[], Target]) -> tuple[LoadResult, LoadResult, float]:
        """Lean clients at full window, then one lean client at window 1, against one broker."""
        cfg = self.cfg

        def measure(target: Target) -> tuple[LoadResult, LoadResult, float]:
            many = baselines.lean_load(self.bench, target, cfg.clients, cfg.window, cfg.duration, cfg.warmup_s)
            one = baselines.lean_load(self.bench, target, 1, 1, cfg.duration, cfg.warmup_s)
            return many, one, procstat.peak_rss_mib(target.pid)

        return self._with(start, measure)

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
            **common(busy, rss),
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
