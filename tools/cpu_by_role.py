"""CPU per request by role, every process of the run counted: the broker, its helper process (zlb's log
writer), the nodes and the clients, zlb against the frame relay, in the same shape.

    python -m tools.cpu_by_role --capacity 1                               # 4 nodes of capacity 1
    python -m tools.cpu_by_role --capacity 50 --window 64 --payload-bytes 262144
    python -m tools.cpu_by_role --capacity 1 --rounds 3 --json

On 2 shared cores a throughput ratio moves 10-30 % from run to run; the CPU a request costs each process
moves much less, and where the cores are the limit (capacity-1 nodes, 256 KiB payloads) the throughput
follows the whole run's CPU per request. Each round runs zlb (the Client API keeping `--window` in flight
with submit(), `zlb server` echo nodes) and then the frame relay (lean clients, raw echo nodes), or the
other way round in odd rounds; both brokers are up throughout. Each process's CPU (all its threads, by
its CPU-time clock) is read once the clients' warm-up is over and again `--duration` later; the
requests are those the clients answered in their measured window, which is the same span.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from bench import baselines, procstat
from bench.harness import Bench, Target
from bench.procs import STOP_TIMEOUT_S

ROLES = ("broker", "helper", "nodes", "clients")


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procstat.cpu_seconds(pid)
        except OSError:
            continue  # gone: its CPU is not counted (nothing the run measures ends early)
    return total


def _clients(bench: Bench, target: Target, args: argparse.Namespace) -> list[Any]:
    """The load processes, started and waiting for the go: the Client API for zlb, lean clients for the relay."""
    load = ("--window", str(args.window), "--duration", str(args.duration), "--warmup-s", str(args.warmup_s))
    load += ("--payload-bytes", str(args.payload_bytes))
    procs = []
    for _ in range(args.clients):
        start = baselines.start_user_client if target.name == "zlb" else baselines.start_lean_client
        procs.append(start(bench, target, *load))
    return procs


def measure(bench: Bench, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """One side's CPU per request by role over the clients' measured window."""
    procs = _clients(bench, target, args)
    clients = bench.go(target, procs, [])
    time.sleep(args.warmup_s)  # the clients' own warm-up: what they count starts here
    pids = {
        "broker": [target.pid],
        "helper": procstat.children(target.pid),
        "nodes": [node.pid for node in target.nodes],
        "clients": [proc.pid for proc in procs],
    }
    before = {role: _cpu(p) for role, p in pids.items()}
    time.sleep(args.duration)
    after = {role: _cpu(p) for role, p in pids.items()}
    load = bench.collect(clients, args.duration + args.warmup_s + 90)
    answered = sum(out["in_window"] for out in load.clients)
    per_role = {role: round((after[role] - before[role]) * 1e6 / max(1, answered), 1) for role in ROLES}
    return {
        "requests_per_s": load.requests_per_s,
        "answered": answered,
        "cpu_us_per_request": per_role,
        "total_us_per_request": round(sum(per_role.values()), 1),
        "errors": load.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cpu_by_role", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.nodes, args.capacity, args.clients, args.window, args.rounds) < 1 or args.duration <= 0:
        parser.error("--nodes, --capacity, --clients, --window, --rounds and --duration must be positive")
    sides: dict[str, list[dict[str, Any]]] = {"zlb": [], "relay": []}
    with tempfile.TemporaryDirectory(prefix="zlb-cpu-by-role-") as workdir:
        bench = Bench(workdir)
        try:
            targets = {
                "zlb": bench.start_zlb(args.nodes, args.capacity),
                "relay": baselines.start_frame_relay(bench, args.nodes, args.capacity),
            }
            for i in range(args.rounds):
                for side in ("zlb", "relay") if i % 2 == 0 else ("relay", "zlb"):
                    sides[side].append(measure(bench, targets[side], args))
        finally:
            bench.procs.stop_all(STOP_TIMEOUT_S)
    out = {"shape": {k: v for k, v in vars(args).items() if k != "json"}, "load_average": os.getloadavg()[0]}
    for side, runs in sides.items():
        out[side] = {
            "rounds": runs,
            "median_total_us_per_request": statistics.median(r["total_us_per_request"] for r in runs),
            "median_by_role": {role: statistics.median(r["cpu_us_per_request"][role] for r in runs) for role in ROLES},
            "median_requests_per_s": statistics.median(r["requests_per_s"] or 0 for r in runs),
        }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"CPU us per request by role, median of {args.rounds} round(s); shape {out['shape']}")
    print(f"{'':8}{'broker':>9}{'helper':>9}{'nodes':>9}{'clients':>9}{'total':>9}{'req/s':>10}")
    for side in sides:
        row = out[side]["median_by_role"]
        cells = "".join(f"{row[role]:9.1f}" for role in ROLES)
        total, rate = out[side]["median_total_us_per_request"], out[side]["median_requests_per_s"]
        print(f"{side:8}{cells}{total:9.1f}{rate:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
