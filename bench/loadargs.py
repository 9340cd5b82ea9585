"""What the bench's load-generator processes (loadgen, leanload, userclient) share on their command line.

`zlb bench` starts each of them the same way (--frontend, --client-id,
--duration, --warmup-s, --payload-bytes, --latency-file, --wait-go) and starts
them all together through the same ready/go handshake on stdin.
"""

from __future__ import annotations

import argparse
import sys
from array import array


def load_parser(prog: str, doc: str, client_id: int, warmup_s: float, duration_help: str) -> argparse.ArgumentParser:
    """A parser with the options every load generator takes; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--client-id", type=int, default=client_id)
    parser.add_argument("--duration", type=float, default=3.0, help=duration_help)
    parser.add_argument("--warmup-s", type=float, default=warmup_s)
    parser.add_argument("--payload-bytes", type=int, default=16)
    parser.add_argument("--latency-file", default=None)
    parser.add_argument("--wait-go", action="store_true", help="print ready, then wait for a line on stdin")
    return parser


def wait_for_go(args: argparse.Namespace) -> bool:
    """With --wait-go, print `ready` and wait for the bench's line on stdin; False if stdin closed instead."""
    if not args.wait_go:
        return True
    print("ready", flush=True)
    return bool(sys.stdin.readline())


def write_latencies(args: argparse.Namespace, latencies: array) -> None:
    """With --latency-file, the raw round trips (ns) as native int64s, which the bench reads back."""
    if args.latency_file:
        with open(args.latency_file, "wb") as fh:
            latencies.tofile(fh)
