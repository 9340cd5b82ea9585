"""The user's path: load through the documented `client_node.client.Client` API, nothing bench-made.

Four modes, as a user would write them:

    python -m bench.userclient --frontend EP --submit 25000        # submit_many, then as_completed
    python -m bench.userclient --frontend EP --submit 25000 --one-by-one   # submit() in a loop, then as_completed
    python -m bench.userclient --frontend EP --one-at-a-time --duration 3 --latency-file F
    python -m bench.userclient --frontend EP --one-at-a-time --count 100 --interval-s 0.1   # paced, a fixed count
    python -m bench.userclient --frontend EP --window 100 --duration 3   # submit() to keep 100 in flight

Prints `ready` once the Client exists, waits for a line on stdin with
--wait-go, and ends with one JSON line: counts, the monotonic times of the
first submit and the last result (so the bench can take the union of several
processes' windows), the Client's own re-send and busy counters, and this
process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
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
# A windowed run waits at most this long for the answers still in flight after its measured window.
DRAIN_S = 30.0


def submit_all(client: Client, count: int, payload: bytes, one_by_one: bool, timeout_s: float) -> dict[str, Any]:
    """Submit `count` requests (submit_many, or submit() in a loop), then collect every result with as_completed.

    Past `timeout_s` it stops waiting and says so (`timed_out`); the rest count as unanswered."""
    started = time.monotonic_ns()
    if one_by_one:
        for _ in range(count):
            client.submit(payload)
    else:
        client.submit_many(payload for _ in range(count))
    completed = failed = 0
    timed_out = False
    try:
        for result in client.as_completed(timeout=timeout_s):
            completed += 1
            if result.status != PROCESSED:
                failed += 1
    except TimeoutError:
        timed_out = True
    ended = time.monotonic_ns()
    return {
        "sent": count,
        "completed": completed,
        "failed": failed,
        "in_window": completed,
        "window_s": (ended - started) / 1e9,
        "start_mono_ns": started,
        "end_mono_ns": ended,
        "timed_out": timed_out,
    }


def one_at_a_time(client: Client, args: argparse.Namespace, payload: bytes) -> dict[str, Any]:
    """submit(...).result() in a loop; time each round trip after the warm-up.

    For --duration seconds, or --count requests, one every --interval-s at most (no warm-up then)."""
    latencies = array("q")
    completed = failed = 0
    clock = time.perf_counter_ns
    start = clock()
    counted = args.count is not None
    measure_from = start if counted else start + int(args.warmup_s * 1e9)
    end = measure_from + int(args.duration * 1e9)
    interval_ns = int(args.interval_s * 1e9)
    now = start
    first_ns = time.monotonic_ns()
    while (completed < args.count) if counted else (now < end):
        sent = clock()
        result = client.submit(payload).result(timeout=RESULT_TIMEOUT_S)
        now = clock()
        completed += 1
        failed += result.status != PROCESSED
        if sent >= measure_from:
            latencies.append(now - sent)
        if counted and completed < args.count and now - sent < interval_ns:
            time.sleep((interval_ns - (now - sent)) / 1e9)  # wait-ok: pacing the requests, not synchronising
    write_latencies(args, latencies)
    return {
        "sent": completed,
        "completed": completed,
        "failed": failed,
        "in_window": len(latencies),
        "window_s": (now - measure_from) / 1e9,
        "start_mono_ns": first_ns,
        "end_mono_ns": time.monotonic_ns(),
    }


def windowed(client: Client, args: argparse.Namespace, payload: bytes) -> dict[str, Any]:
    """submit() to keep --window requests in flight for warm-up plus --duration; time each round trip."""
    clock = time.perf_counter_ns
    sent_at: dict[int, int] = {}
    latencies = array("q")
    sent = completed = in_window = failed = 0
    start = clock()
    measure_from = start + int(args.warmup_s * 1e9)
    end = measure_from + int(args.duration * 1e9)
    now = start
    while now < end:
        while len(sent_at) < args.window:
            request_id = client.submit(payload).request_id
            sent_at[request_id] = clock()
            sent += 1
        client.pump(0.1)
        now = clock()
        for result in client.take_results():
            at = sent_at.pop(result.request_id)
            completed += 1
            failed += result.status != PROCESSED
            if at >= measure_from:
                latencies.append(now - at)
            if measure_from <= now <= end:
                in_window += 1
    deadline = clock() + int(DRAIN_S * 1e9)
    while sent_at and clock() < deadline:
        client.pump(0.1)
        for result in client.take_results():
            sent_at.pop(result.request_id)
            completed += 1
            failed += result.status != PROCESSED
    write_latencies(args, latencies)
    return {
        "sent": sent,
        "completed": completed,
        "failed": failed,
        "in_window": in_window,
        "window_s": (end - measure_from) / 1e9,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = load_parser("bench.userclient", __doc__, 1001, 0.5, "measured seconds (--one-at-a-time, --window)")
    parser.add_argument("--submit", type=int, default=None, help="submit this many, then as_completed")
    parser.add_argument("--one-at-a-time", action="store_true", help="submit(...).result() in a loop")
    parser.add_argument("--one-by-one", action="store_true", help="with --submit: submit() in a loop, not submit_many")
    parser.add_argument("--window", type=int, default=None, help="submit() to keep this many in flight")
    parser.add_argument("--count", type=int, default=None, help="with --one-at-a-time: this many, not --duration")
    parser.add_argument("--interval-s", type=float, default=0.0, help="with --count: start one at most this often")
    parser.add_argument("--timeout-s", type=float, default=RESULT_TIMEOUT_S, help="with --submit: as_completed's")
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
        elif args.window is not None:
            out = windowed(client, args, payload)
        else:
            out = submit_all(client, args.submit or 0, payload, args.one_by_one, args.timeout_s)
        out.update(
            unanswered=len(client.outstanding),
            duplicates=client.conflicting_answers,
            rejected=0,
            resent=client.resent,
            # Counters a Client of another commit may not have (tools.by_commit --same-bench): None then.
            busy_notices=getattr(client, "busy_notices", None),
            client_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
