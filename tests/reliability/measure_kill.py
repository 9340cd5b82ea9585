"""Measure how soon the work of a node killed with kill -9 runs again on another node (issue 23).

    python -m tests.reliability.measure_kill [--runs 10] [--heartbeat-ms 500] [--liveness 3] [--cost-ms 2000]
        [--balancer-arg=--reconnect-grace-ms=50 ...]

Real processes on fresh loopback ports, every run afresh: `zlb balancer` and two `zlb server` nodes
whose handler notes when each run starts (tests.reliability.handlers:stamped, on the monotonic clock
every process on the host shares). A Client submits one request of COST_MS; once it runs, its node
is killed with SIGKILL, and the run measured is from the kill to the start of its second run, on the
other node. Prints one JSON line per run (the milliseconds, and the event that declared the node
dead: `node.dead` for its silence, `node.disconnected` for its dropped connection) and a summary.
Nothing is asserted; the figures are in docs/RELIABILITY.md ("Failures seen at once").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from client_node.client import Client, json_payload
from tests.harness import Endpoints, ProcessGroup, start_balancer, wait_until
from tests.reliability.handlers import runs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.measure_kill")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--heartbeat-ms", type=int, default=500)
    parser.add_argument("--liveness", type=int, default=3)
    parser.add_argument("--cost-ms", type=int, default=2000)
    parser.add_argument("--balancer-arg", action="append", default=[], help="passed to zlb balancer as it is")
    args = parser.parse_args()
    figures = []
    for _ in range(args.runs):
        ends = Endpoints.fresh()
        with tempfile.TemporaryDirectory() as tmp:
            procs = ProcessGroup(Path(tmp), {**os.environ, **ends.env(), "PYTHONUNBUFFERED": "1"})
            try:
                figure = run(procs, ends, Path(tmp), args)
            finally:
                procs.stop_all()
        figures.append(figure)
        print(json.dumps(figure), flush=True)
    took = [f["kill_to_rerun_ms"] for f in figures]
    summary = {"runs": len(took), "median_ms": round(statistics.median(took), 1), "min_ms": min(took)}
    print(json.dumps({**summary, "max_ms": max(took), "declared_by": sorted({f["declared_by"] for f in figures})}))


def run(procs: ProcessGroup, ends: Endpoints, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    balancer = start_balancer(procs, ends, args.heartbeat_ms, *args.balancer_arg, liveness=args.liveness)
    log = str(tmp / "runs.log")
    env = {"ZLB_TEST_RUN_LOG": log}
    nodes = {i: balancer.start_server(i, handler="stamped", env=env) for i in (0, 1)}
    balancer.wait_servers_active({0, 1})
    with Client(ends.frontend, client_id=1) as client:
        pending = client.submit(json_payload(args.cost_ms, "killed"), request_id=1)
        [(_c, _r, victim, _a, _t)] = wait_until(lambda: runs(log), 10, "the request to start")
        killed_at = time.monotonic()
        os.kill(nodes[victim].pid, signal.SIGKILL)
        nodes[victim].popen.wait(10)
        again = wait_until(lambda: runs(log)[1:], 30, "the request to start again")[0]
        result = pending.result(timeout=30)
    events = balancer.call("logs", format="events")
    deaths = ("node.dead", "node.disconnected")
    declared = [e for e in events if e.get("kind") in deaths and e.get("server_id") == victim]
    return {
        "kill_to_rerun_ms": round((again[4] - killed_at) * 1000, 1),
        "declared_by": declared[0]["kind"] if declared else "none",
        "rerun_on": again[2],
        "attempts": result.attempts,
        "heartbeat_ms": args.heartbeat_ms,
        "liveness": args.liveness,
    }


if __name__ == "__main__":
    main()
