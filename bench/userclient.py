"""The user's path: load through the documented `client_node.client.Client` API, nothing bench-made.

Two modes, as a user would write them:

    python -m bench.userclient --frontend EP --submit 25000        # submit_many, then as_completed
    python -m bench.userclient --frontend EP --submit 25000 --one-by-one   # submit() in a loop, then as_completed
    python -m bench.userclient --frontend EP --one-at-a-time --duration 3 --latency-file F

Prints `ready` once the Client exists, waits for a line on stdin with
--wait-go, and ends with one JSON line: counts, the monotonic times of the
first submit and the last result (so the bench can take the union of several
processes' windows), and the Client's own re-send count.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from array import array
from typing import Any

from bench.loadargs import load_parser, wait_for_go, write_latencies
from client_node.client import Client

PROCESSED = "processed"
# as_completed's bound: generous, since a 2-core machine under load may take a while.
RESULT_TIMEOUT_S = 300.0


def submit_all(client: Client, count: int, payload: bytes, one_by_one: bool) -> dict[str, Any]:
    """Submit `count` requests (submit_many, or submit() in a loop), then collect every result with as_completed."""
    started = time.monotonic_ns()
    if one_by_one:
        for _ in range(count):
            client.submit(payload)
    else:
        client.submit_many(payload for _ in range(count))
    completed = failed = 0
    for result in client.as_completed(timeout=RESULT_TIMEOUT_S):
        completed += 1
        if result.status != PROCESSED:
            failed += 1
    ended = time.monotonic_ns()
    return {
        "sent": count,
        "completed": completed,
        "failed": failed,
        "in_window": completed,
        "window_s": (ended - started) / 1e9,
        "start_mono_ns": started,
        "end_mono_ns": ended,
    }


def one_at_a_time(client: Client, args: argparse.Namespace, payload: bytes) -> dict[str, Any]:
    """submit(...).result() in a loop; time each round trip after the warm-up."""
    latencies = array("q")
    completed = failed = 0
    clock = time.perf_counter_ns
    start = clock()
    measure_from = start + int(args.warmup_s * 1e9)
    end = measure_from + int(args.duration * 1e9)
    now = start
    while now < end:
        sent = clock()
        result = client.submit(payload).result(timeout=RESULT_TIMEOUT_S)
        now = clock()
        completed += 1
        failed += result.status != PROCESSED
        if sent >= measure_from:
            latencies.append(now - sent)
    write_latencies(args, latencies)
    return {
        "sent": completed,
        "completed": completed,
        "failed": failed,
        "in_window": len(latencies),
        "window_s": (now - measure_from) / 1e9,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = load_parser("bench.userclient", __doc__, 1001, 0.5, "measured seconds (--one-at-a-time)")
    parser.add_argument("--submit", type=int, default=None, help="submit this many, then as_completed")
    parser.add_argument("--one-at-a-time", action="store_true", help="submit(...).result() in a loop")
    parser.add_argument("--one-by-one", action="store_true", help="with --submit: submit() in a loop, not submit_many")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    payload = b"x" * args.payload_bytes
    with Client(args.frontend, client_id=args.client_id) as client:
        if not wait_for_go(args):
            return 1
        if args.one_at_a_time:
            out = one_at_a_time(client, args, payload)
        else:
            out = submit_all(client, args.submit or 0, payload, args.one_by_one)
        out.update(
            unanswered=len(client.outstanding),
            duplicates=client.conflicting_answers,
            rejected=0,
            resent=client.resent,
        )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
