"""Scaling tables (throughput against nodes and clients, memory against queue depth) from repeated
`zlb bench --json` runs.

    python -m tools.scaling                # nodes 1/2/4/8, clients 1/2/4/8, queue depths
    python -m tools.scaling --duration 2 --depths 10000,100000

Prints Markdown tables: throughput against nodes (2 clients) and against
clients (4 nodes), and balancer memory against queue depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

COUNTS = (1, 2, 4, 8)


def bench_json(*args: str) -> dict[str, Any]:
    """Run `zlb bench ARGS --json` and return its object."""
    done = subprocess.run(
        [sys.executable, "-m", "zlb", "bench", "--json", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"zlb bench {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def throughput_row(label: str, result: dict[str, Any]) -> str:
    t = result["throughput"]
    return (
        f"| {label} | {t['requests_per_s']:,.0f} | {t['p50_us']:,.0f} | {t['p99_us']:,.0f} "
        f"| {t['balancer_cpu_us_per_request']} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="3")
    parser.add_argument("--depths", default="10000,100000,1000000")
    args = parser.parse_args(argv)
    head = "| {} | requests/s | p50 us | p99 us | balancer CPU us/request |\n|---|---|---|---|---|"
    print(head.format("nodes (2 clients)"))
    for n in COUNTS:
        res = bench_json("--scenario", "throughput", "--nodes", str(n), "--clients", "2", "--duration", args.duration)
        print(throughput_row(str(n), res), flush=True)
    print()
    print(head.format("clients (4 nodes)"))
    for c in COUNTS:
        res = bench_json("--scenario", "throughput", "--nodes", "4", "--clients", str(c), "--duration", args.duration)
        print(throughput_row(str(c), res), flush=True)
    print()
    print(
        "| queued requests | balancer RSS empty MiB | RSS full MiB | bytes per waiting request | enqueue/s | drain/s |"
    )
    print("|---|---|---|---|---|---|")
    for depth in args.depths.split(","):
        q = bench_json("--scenario", "queue", "--queue-size", depth)["queue"]
        print(
            f"| {int(depth):,} | {q['balancer_rss_empty_mb']} | {q['balancer_rss_full_mb']} "
            f"| {q['bytes_per_waiting_request']} | {q['enqueue_per_s']:,.0f} | {q['drain_per_s']:,.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
