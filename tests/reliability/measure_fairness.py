"""Measure fairness between clients of one priority, and what it costs dispatch and memory.

    python -m tests.reliability.measure_fairness [--backlog 200000] [--skip-live]

1. Live (real processes on fresh loopback ports): `zlb balancer --max-memory-mb 0`, two
   `zlb server --handler echo --capacity 50` nodes, client 1 (`zlb client`) sends BACKLOG
   requests at priority 5 and reads its results; once a quarter of them are done, client 2 (a
   Client in this process) sends 10 requests at the same priority at once, and the script prints
   how long each took to come back (what the second client waited behind the first's backlog) and
   how many of the first's waited in the balancer then (since credit, a window's worth).
2. In this process, the pure scheduler: submit and dispatch of 200,000 requests (one node of
   that capacity), per request, from 1 client and from 1,000 clients; and bytes per waiting
   request for 1,000,000 from 1 client and for 200,000 from 100,000 clients (2 each).

Run it on another checkout with PYTHONPATH=CHECKOUT to compare (the processes it starts and the
scheduler it imports are then that checkout's). Nothing is asserted; the figures go to
docs/PERFORMANCE.md ("Fairness between clients").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from client_node.client import Client
from tests.harness import Endpoints, ProcessGroup, start_balancer, wait_until

SECOND_CLIENT_REQUESTS = 10


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.measure_fairness")
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--skip-live", action="store_true", help="Only the in-process figures.")
    parser.add_argument("--memory", nargs=2, type=int, metavar=("COUNT", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:  # one memory figure, in a fresh process (see bytes_per_request)
        print(bytes_per_request(*args.memory))
        return
    figures: dict[str, Any] = {}
    if not args.skip_live:
        figures["live"] = live(args.backlog)
    figures["dispatch_us_per_request"] = {
        "1_client": dispatch_cost(1),
        "1000_clients": dispatch_cost(1000),
    }
    figures["bytes_per_waiting_request"] = {
        "1_client_1000000": fresh_process_bytes(1_000_000, 1),
        "100000_clients_200000": fresh_process_bytes(200_000, 100_000),
    }
    print(json.dumps(figures, indent=2))


def live(backlog: int) -> dict[str, Any]:
    ends = Endpoints.fresh()
    with tempfile.TemporaryDirectory() as tmp:
        procs = ProcessGroup(Path(tmp), {**os.environ, **ends.env()})
        try:
            balancer = start_balancer(procs, ends, 500, "--max-memory-mb", "0")
            for node_id in (0, 1):
                balancer.start_server(node_id, "--handler", "echo", "--capacity", "50")
            balancer.wait_servers_active({0, 1}, timeout=30)
            first = procs.start(
                "client-1", "client", "--id", "1", "--requests", str(backlog), "--retry-s", "3600", "--timeout", "3600"
            )
            # A quarter of it done: the rest is still to come. Since credit (protocol version 6) a Client keeps
            # all but its window at home, so what waits in the balancer then is a window, not half the backlog.
            status = wait_until(
                lambda: (s := balancer.call("status"))["requests"]["processed"] >= backlog // 4 and s, 300, "a backlog"
            )
            depth = status["queue_depth"]
            waits = second_client(ends)
            first.wait(3600)
            return {
                "backlog": backlog,
                "first_client_waiting_when_second_sent": depth,
                "second_client_round_trips_ms": waits,
                "second_client_max_ms": max(waits),
                "second_client_median_ms": statistics.median(waits),
            }
        finally:
            procs.stop_all()


def second_client(ends: Endpoints) -> list[float]:
    """Milliseconds from sending the second client's requests, all at once, to each result."""
    waits = []
    with Client(ends.frontend, client_id=2, retry_s=None) as client:
        start = time.perf_counter()
        for rid in range(1, SECOND_CLIENT_REQUESTS + 1):
            client.submit(b"x", priority=5, request_id=rid)
        for _result in client.as_completed(timeout=600):
            waits.append(round((time.perf_counter() - start) * 1000, 1))
    return waits


def dispatch_cost(clients: int, count: int = 200_000) -> float:
    """CPU microseconds per request to submit and dispatch COUNT requests spread over CLIENTS clients
    (process CPU time, the best of three: on a shared machine wall time mostly measures the others)."""
    from balancer.scheduler import Scheduler

    best = float("inf")
    for _ in range(3):
        sched = Scheduler()
        sched.hello(b"node", 0, count, 1, "h", 0.0)
        ids = [(1000 + rid % clients, rid) for rid in range(count)]
        gc.collect()
        start = time.process_time()
        for client_id, rid in ids:
            sched.submit(client_id, rid, 5, b"c", b"x")
        sched.outbox.take_events()
        sched.dispatch()
        best = min(best, time.process_time() - start)
    return round(best / count * 1e6, 3)


def fresh_process_bytes(count: int, clients: int) -> float:
    """bytes_per_request in a process of its own: memory freed by an earlier figure would be reused."""
    argv = [sys.executable, "-m", "tests.reliability.measure_fairness", "--memory", str(count), str(clients)]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def bytes_per_request(count: int, clients: int) -> float:
    """RSS growth per request queued from CLIENTS clients (ids above Python's small-int cache)."""
    from balancer.scheduler import Scheduler

    sched = Scheduler()
    gc.collect()
    before = procstat.memory_kib(os.getpid())["VmRSS"]
    for rid in range(count):
        sched.submit(1001 + rid % clients, rid + 1001, 5, b"\x00client-route", b"x" * 16)
        if len(sched.events) >= 256:
            sched.outbox.take_events()
    after = procstat.memory_kib(os.getpid())["VmRSS"]
    return round((after - before) * 1024 / count, 1)


if __name__ == "__main__":
    main()
