"""Smoke test of `zlb bench --quick --json`: it runs, reports, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import COMMON_FIELDS, SCENARIO_FIELDS
from tests.harness import scaled

ROOT = Path(__file__).resolve().parent.parent
# The full --quick run took under 30 s on a quiet 2-core machine before the ha scenario, which adds about
# 10 s (etcd, two members, two leader kills that each wait out the 2 s lease).
BENCH_TIMEOUT_S = 65
# Every scenario --quick: the shapes of issue 23 (capacity1, payloads, million, killnode, lean) add about 35 s.
ALL_TIMEOUT_S = 120
# The default suite runs these: the harness check's verdict, a kill -9, a deep queue, the stall probe and one
# client's burst against a balancer with every default (~12 s).
SMOKE_SCENARIOS = ("harness", "million", "failover", "queue", "stall")


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _quick_bench(tmp_path: Path, *scenarios: str, timeout_s: float = BENCH_TIMEOUT_S) -> tuple[dict, list[int]]:
    """`zlb bench --quick --json` (of `scenarios`, or all): its JSON and the PIDs it says it started."""
    chosen = ["--scenario", ",".join(scenarios)] if scenarios else []
    done = subprocess.run(
        [sys.executable, "-m", "zlb", "bench", "--quick", "--json", *chosen],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=scaled(timeout_s),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"pids: ([\d ]+)", done.stderr)
    assert match, done.stderr[-2000:]
    return json.loads(done.stdout), [int(p) for p in match.group(1).split()]


def _check_fields(result: dict) -> None:
    for name, record in result.items():
        missing = [f for f in (*COMMON_FIELDS, *SCENARIO_FIELDS[name], "non_default") if f not in record]
        assert missing == [], f"{name} lacks {missing}"
        assert record["errors"] == 0, f"{name}: {record}"


@pytest.mark.timeout(BENCH_TIMEOUT_S + 10)
def test_quick_bench_judges_its_harness_survives_a_kill_and_stops_its_processes(tmp_path: Path) -> None:
    """The harness verdict is the one its own figures give (zmq.proxy's throughput over the frame relay's,
    against the required multiple); the kill -9, the deep queue and one client's burst lose nothing; a scenario
    that runs the balancer off its defaults says which, the burst's says none; every started PID is gone."""
    result, pids = _quick_bench(tmp_path, *SMOKE_SCENARIOS)
    assert list(result) == list(SMOKE_SCENARIOS)
    _check_fields(result)
    harness = result["harness"]
    assert harness["required"] == 2.0
    headroom = harness["proxy_requests_per_s"] / harness["requests_per_s"]  # requests_per_s: the frame relay's
    assert harness["proxy_vs_relay"] == pytest.approx(headroom, abs=1e-3)
    assert harness["verdict"] == ("ok" if harness["proxy_vs_relay"] >= harness["required"] else "harness-bound")
    failover = result["failover"]
    assert failover["held_at_kill"] >= 1 and (failover["lost"], failover["duplicated"]) == (0, 0)
    assert result["queue"]["lost"] == 0 and result["queue"]["queued"] > 0
    assert result["stall"]["lost"] == 0 and result["stall"]["pings"] > 0
    assert set(result["stall"]["stall_ms_by_phase"]) == {"idle", "enqueue", "admin", "drain"}
    million = result["million"]
    assert million["finished"] and million["requests"] == 2000 and million["second_client_requests"] == 10
    assert million["resent_fraction"] == pytest.approx(million["resent"] / 2000, abs=1e-4)
    assert million["busy_refusals"] >= 0
    assert million["second_client_max_us"] >= million["second_client_p50_us"] > 0
    assert million["non_default"] == {} and result["harness"]["non_default"] == {}
    assert result["queue"]["non_default"] == {"--max-memory-mb": "0"}
    assert set(result["stall"]["non_default"]) == {"--max-memory-mb", "--journal"}
    # --quick heartbeats every 200 ms where the balancer's default is 500.
    assert result["failover"]["non_default"] == {"--heartbeat-ms": "200"}
    assert len(pids) >= 4
    assert [pid for pid in pids if _alive(pid)] == []


@pytest.mark.slow
@pytest.mark.timeout(ALL_TIMEOUT_S + 10)
def test_quick_bench_prints_every_scenario_and_stops_its_processes(tmp_path: Path) -> None:
    """Every scenario appears with its fields, nothing was lost, and every started PID is gone."""
    result, pids = _quick_bench(tmp_path, timeout_s=ALL_TIMEOUT_S)
    assert list(result) == list(SCENARIO_FIELDS)
    _check_fields(result)
    assert result["throughput"]["requests_per_s"] > 0
    assert result["failover"]["lost"] == 0
    assert result["failover"]["duplicated"] == 0
    assert result["queue"]["lost"] == 0
    assert result["userpath"]["requests_per_s"] > 0
    assert result["userpath"]["relay_requests_per_s"] > 0
    assert result["userpath"]["balancer_cpu_us_per_request"] > 0
    assert result["stall"]["lost"] == 0
    payloads = result["payloads"]
    assert [s["payload_bytes"] for s in payloads["sizes"]] == [16, 4096, 256 * 1024, 1024 * 1024]
    assert all(s["mb_per_s"] > 0 and s["relay_mb_per_s"] > 0 for s in payloads["sizes"])
    capacity1 = result["capacity1"]
    assert [s["nodes"] for s in capacity1["by_nodes"]] == capacity1["node_counts"] == [2, 4]
    assert capacity1["vs_relay_few"] > 0 and capacity1["relay_cpu_us_per_request_many"] > 0
    killnode = result["killnode"]
    assert killnode["lost"] == 0 and len(killnode["rerun_ms"]) == killnode["kills"] == 2
    assert all(ms > 0 for ms in killnode["rerun_ms"])
    assert result["lean"]["node_rss_mb_median"] > result["lean"]["raw_node_rss_mb_median"] > 0
    assert len(pids) >= 10
    assert [pid for pid in pids if _alive(pid)] == []


def test_bench_rejects_an_unknown_scenario(tmp_path: Path) -> None:
    """A bad --scenario is a one-line usage error with a non-zero exit, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "zlb", "bench", "--scenario", "warp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "unknown scenario 'warp'" in done.stderr
    assert "Traceback" not in done.stderr


def _one_at_a_time_tool(tmp_path: Path, module: str, target: str) -> dict:
    """Run a one-at-a-time developer tool (tools.hops, tools.opcodes) briefly; its JSON output."""
    # tools/ is not installed: it runs from a checkout, so the checkout goes on the path.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        # 1.5 s: under the tracer and a loaded CI machine, 0.5 s twice gave too few round trips to count a hop
        # (no submit hop in the broker once, no client at all once).
        [sys.executable, "-m", module, "--target", target, "--duration", "1.5", "--warmup-s", "0.2", "--json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["zlb", "relay"])
def test_hops_traces_every_part_of_a_round_trip(tmp_path: Path, target: str) -> None:
    """`python -m tools.hops` traces real processes and lines their notes up into whole round trips:
    every wake-up and every process's Python between wake and send comes out positive."""
    out = _one_at_a_time_tool(tmp_path, "tools.hops", target)
    assert out["round_trips_traced"] >= 20
    assert len(out["parts_us"]) == 7 and all(v > 0 for v in out["parts_us"].values()), out
    assert out["chain_us"] > out["wake_ups_us"] > 0 and out["round_trip_p50_us"] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["zlb", "relay"])
def test_opcodes_counts_every_process_of_a_round_trip(tmp_path: Path, target: str) -> None:
    """`python -m tools.opcodes` counts the bytecode each real process runs before and after its sends;
    a zlb balancer's two hops come out apart, and its result hop runs less before its send than after."""
    out = _one_at_a_time_tool(tmp_path, "tools.opcodes", target)
    assert set(out) == {"client", "broker", "node"}
    assert all(row["before"] > 0 and row["top_before"] for row in out.values()), out
    if target == "zlb":
        broker = out["broker"]
        hops = {k: broker.get(k, 0) for k in ("before_submit", "before_result", "after_result")}
        assert hops["before_submit"] > 0 and hops["after_result"] > hops["before_result"] > 0, broker
