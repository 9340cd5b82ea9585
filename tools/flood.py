"""One Client floods a balancer with its defaults; a second client arrives meanwhile (issue 23).

    python -m tools.flood                               # 1,000,000 x 16 B, submit_many then a submit loop
    python -m tools.flood --modes loop --count 200000 --runs 3

Per run: `zlb balancer` with its defaults (the 256 MiB memory budget), 4 `zlb server --handler
echo --capacity 50`, and a flooding Client in its own process that submits COUNT requests of
16 bytes (submit_many, or submit() in a loop), then collects every result with as_completed.
SECOND_AFTER_S after it starts, a second client (another process, another client id) submits
100 and collects them. Prints one JSON line per run: the flood's seconds, its re-sends, busy
answers and windows granted, the second client's worst and median latency, the balancer's
counters (submitted, busy, duplicates) and the CPU seconds of the balancer (from the flood's start) and of the flood.

Run it on another checkout with PYTHONPATH=CHECKOUT to compare (the processes it starts are then
that checkout's; counters a Client there does not have read as null). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import procstat
from bench.harness import Bench, LineReader
from client_node.client import Client

NODES = 4
CAPACITY = 50
PAYLOAD = b"x" * 16
SECOND_REQUESTS = 100
SECOND_AFTER_S = 5.0
RESULT_TIMEOUT_S = 600.0
# The clients run this file by its path: with PYTHONPATH=CHECKOUT, `-m tools.flood` would look in CHECKOUT's tools/.
ME = [sys.executable, os.path.abspath(__file__)]


def flood(frontend: str, count: int, mode: str) -> dict[str, Any]:
    """In the flooding process: submit `count`, then take every result; what the Client counted."""
    with Client(frontend, client_id=1) as client:
        print("started", flush=True)
        started = time.monotonic()
        if mode == "many":
            client.submit_many(PAYLOAD for _ in range(count))
        else:
            for _ in range(count):
                client.submit(PAYLOAD)
        submitted_s = time.monotonic() - started
        answered = bad = 0
        for result in client.as_completed(timeout=RESULT_TIMEOUT_S):
            answered += 1
            bad += not result.ok
        return {
            "mode": mode,
            "count": count,
            "answered": answered,
            "not_ok": bad,
            "seconds": round(time.monotonic() - started, 2),
            "submit_returned_s": round(submitted_s, 2),
            **{name: getattr(client, name, None) for name in ("resent", "busy_notices", "credit_updates")},
            "conflicting_answers": client.conflicting_answers,
            "window": getattr(client, "window", None),
            "cpu_s": round(time.process_time(), 1),
        }


def second(frontend: str) -> dict[str, Any]:
    """In the second process: submit SECOND_REQUESTS at once and time each one's answer."""
    with Client(frontend, client_id=2) as client:
        sent_at = {}
        for _ in range(SECOND_REQUESTS):
            sent_at[client.submit(PAYLOAD).request_id] = time.monotonic()
        latencies = [time.monotonic() - sent_at[r.request_id] for r in client.as_completed(timeout=RESULT_TIMEOUT_S)]
    return {
        "answered": len(latencies),
        "worst_s": round(max(latencies), 3),
        "median_s": round(statistics.median(latencies), 3),
        "resent": client.resent,
    }


def run(bench: Bench, count: int, mode: str) -> dict[str, Any]:
    """One measured run against a fresh balancer and nodes."""
    target = bench.start_zlb(NODES, CAPACITY, "echo")
    try:
        argv = [*ME, "--role", "flood", "--frontend", target.frontend]
        flooder = bench.procs.start(bench.name("flood"), [*argv, "--count", str(count), "--modes", mode], stdout=-1)
        reader = LineReader(flooder)
        reader.line(30, "the flooding client to start")
        cpu_before = procstat.cpu_seconds(target.pid)
        time.sleep(SECOND_AFTER_S)  # wait-ok: the flood runs alone this long before the second client arrives
        other = subprocess.run(
            [*ME, "--role", "second", "--frontend", target.frontend],
            capture_output=True,
            text=True,
            timeout=RESULT_TIMEOUT_S,
            check=True,
        )
        line = reader.line(RESULT_TIMEOUT_S, "the flood's result")
        status = bench.status(target)
        out = {
            "flood": json.loads(line),
            "second": json.loads(other.stdout),
            "balancer": {k: status["requests"][k] for k in ("submitted", "processed", "busy", "duplicates")},
            "balancer_cpu_s": round(procstat.cpu_seconds(target.pid) - cpu_before, 1),
        }
        bench.procs.stop([flooder])
        return out
    finally:
        bench.stop(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.flood", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--modes", default="many,loop", help="comma-separated: many (submit_many), loop (submit)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each mode, interleaved")
    parser.add_argument("--role", choices=("flood", "second"), help=argparse.SUPPRESS)
    parser.add_argument("--frontend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "flood":
        print(json.dumps(flood(args.frontend, args.count, args.modes)), flush=True)
        return 0
    if args.role == "second":
        print(json.dumps(second(args.frontend)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="zlb-flood-") as workdir:
        # The child processes run in the scratch directory: tools/ (not installed) is found from this checkout.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), root]))
        bench = Bench(workdir, {**os.environ, "PYTHONPATH": path})
        try:
            for _ in range(args.runs):
                for mode in args.modes.split(","):
                    print(json.dumps(run(bench, args.count, mode)), flush=True)
        finally:
            bench.procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
