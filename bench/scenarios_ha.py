"""The HA scenario: what a leader + standby pair costs on the user's path, and how long a takeover takes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bench import baselines, procstat, stats
from bench.ha import HaBench, HaPair, etcd_binary
from bench.harness import LoadResult, Target
from bench.scenario_kit import Outcome, RunnerBase, common, row
from wire.percentiles import percentile

# The targets the note states (the reader checks them; the bench does not fail on them).
HA_VS_SINGLE_TARGET = 0.7
P50_HA_VS_SINGLE_TARGET = 1.5
TAKEOVER_OVER_LEASE_S = 1.0


class HaScenarios(RunnerBase):
    """An HA pair (etcd, leader, standby in sync) against one balancer with a journal; leader kills."""

    def scenario_ha(self) -> Outcome:
        """The user path against a journaled balancer and an HA pair, then kill -9 the leader, again and again."""
        cfg = self.cfg
        etcd_binary()  # no etcd: fail before starting anything
        ha = HaBench(self.bench)
        single: Target | None = None
        pair: HaPair | None = None
        try:
            pair = ha.begin_pair()  # its first member campaigns while the single balancer starts
            journal = os.path.join(self.bench.workdir, f"{self.bench.name('single')}.journal")
            single = self._zlb(extra=("--journal", journal))()
            ha.complete_pair(pair, cfg.nodes, cfg.capacity)
            figures = self._user_path(single, pair)
            self.bench.stop(single)  # the takeovers run with the machine to the pair alone
            single = None
            takeovers = [round(ha.takeover_ms(pair, restart=i < cfg.takeovers - 1), 1) for i in range(cfg.takeovers)]
        finally:
            if single is not None:
                self.bench.stop(single)
            if pair is not None:
                ha.stop(pair)
        return self._outcome(figures, takeovers, ha.lease_s)

    def _user_path(self, single: Target, pair: HaPair) -> dict[str, Any]:
        """submit_many from cfg.clients processes and one-at-a-time round trips, alternating between the two."""
        cfg, bench = self.cfg, self.bench
        ha_target = pair.target
        assert ha_target is not None
        standby = next(m for m in pair.members if m.control != ha_target.control)
        assert standby.proc is not None
        standby_cpu = [0.0]

        def counting_standby(run: Callable[[], LoadResult]) -> Callable[[], LoadResult]:
            def measured() -> LoadResult:
                before = procstat.cpu_seconds(standby.proc.pid)
                load = run()
                standby_cpu[0] += procstat.cpu_seconds(standby.proc.pid) - before
                return load

            return measured

        # Two runs each (A B B A), each of half the submits: both sides see the same share of the machine's moods.
        half = max(1, cfg.user_requests // 2)
        single_many, ha_many = baselines.alternated(
            lambda: baselines.user_submit(bench, single, cfg.clients, half),
            counting_standby(lambda: baselines.user_submit(bench, ha_target, cfg.clients, half)),
            slices=2,
        )
        # Fewer, longer slices in a quick run: each slice starts a Python process.
        slices = baselines.PAIRED_SLICES if cfg.duration >= 1 else 2
        slice_s = cfg.duration / slices
        single_one, ha_one = baselines.alternated(
            lambda: baselines.user_one_at_a_time(bench, single, slice_s, cfg.warmup_s),
            lambda: baselines.user_one_at_a_time(bench, ha_target, slice_s, cfg.warmup_s),
            slices=slices,
        )
        return {
            "single_many": single_many,
            "ha_many": ha_many,
            "single_one": single_one,
            "ha_one": ha_one,
            "single_rss": procstat.peak_rss_mib(single.pid),
            "ha_rss": procstat.peak_rss_mib(ha_target.pid),
            "standby_cpu_us_per_request": stats.per_item(standby_cpu[0] * 1e6, ha_many.completed),
        }

    def _outcome(self, f: dict[str, Any], takeovers: list[float], lease_s: int) -> Outcome:
        cfg = self.cfg
        single_many, ha_many, single_one, ha_one = f["single_many"], f["ha_many"], f["single_one"], f["ha_one"]
        ordered = sorted(takeovers)
        record = {
            **common(ha_many, f["ha_rss"]),
            "p50_us": ha_one.latency_us["p50_us"],
            "p99_us": ha_one.latency_us["p99_us"],
            "requests": 2 * max(1, cfg.user_requests // 2),
            "resent": baselines.resent(ha_many) + baselines.resent(single_many),
            "single_requests_per_s": single_many.requests_per_s,
            "single_p50_us": single_one.latency_us["p50_us"],
            "single_p99_us": single_one.latency_us["p99_us"],
            "single_cpu_us_per_request": single_many.cpu_us_per_request,
            "standby_cpu_us_per_request": f["standby_cpu_us_per_request"],
            "ha_vs_single": stats.ratio(ha_many.requests_per_s, single_many.requests_per_s),
            "p50_ha_vs_single": stats.ratio(ha_one.latency_us["p50_us"], single_one.latency_us["p50_us"]),
            "takeovers": len(takeovers),
            "takeover_ms": takeovers,
            "takeover_ms_median": percentile(ordered, 50),
            "takeover_ms_p90": percentile(ordered, 90),
            "lease_s": lease_s,
            "takeover_target_ms": (lease_s + TAKEOVER_OVER_LEASE_S) * 1000,
            "errors": sum(x.errors for x in (single_many, ha_many, single_one, ha_one)),
        }
        journaled = f"journal; {cfg.nodes} echo nodes"
        rows = [
            row("ha", "zlb single", single_many, f["single_rss"], f"{journaled}; {cfg.clients} x submit_many"),
            row("ha", "zlb ha pair", ha_many, f["ha_rss"], f"leader + standby in sync; {cfg.clients} x submit_many"),
            row("ha", "zlb single", single_one, f["single_rss"], "submit().result(), one at a time"),
            row("ha", "zlb ha pair", ha_one, f["ha_rss"], "submit().result(), one at a time"),
        ]
        notes = [
            f"ha: throughput = {record['ha_vs_single']} x one journaled balancer (target >= {HA_VS_SINGLE_TARGET});"
            f" one at a time p50 = {record['p50_ha_vs_single']} x (target <= {P50_HA_VS_SINGLE_TARGET}); standby CPU"
            f" {record['standby_cpu_us_per_request']} us/request; takeover after kill -9 of the leader: median"
            f" {record['takeover_ms_median']} ms, p90 {record['takeover_ms_p90']} ms over {len(takeovers)} kills"
            f" (lease {lease_s} s; target: median <= {record['takeover_target_ms']:g} ms)"
        ]
        return Outcome(record, rows, notes)
