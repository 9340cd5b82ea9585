"""Measure the longest loop iteration of a live balancer while WAITING requests wait and admin queries run.

    python -m tests.reliability.measure_loop_stall [WAITING]

Starts `zlb balancer --journal ... --max-memory-mb 0` on fresh loopback ports
with no nodes, fills its queue with WAITING requests of 100 bytes from a raw
DEALER, waits until they are all queued, then for 12 s (longer than the
10 s window of `loop_max_ms`) asks `zlb requests --limit 10` (all, pending,
by client) and `zlb status` back to back, and prints `loop_max_ms`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import zmq

from tests.harness import Endpoints
from wire import control_client
from wire import protocol as p
from wire.protocol import MsgType


def main(waiting: int) -> None:
    ends = Endpoints.fresh()
    env = {**os.environ, **ends.env()}
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--journal", f"{tmp}/journal", "--max-memory-mb", "0", "--log-file", f"{tmp}/log"]
        proc = subprocess.Popen([sys.executable, "-m", "zlb", "balancer", *args], env=env)
        try:
            run(ends, waiting)
        finally:
            proc.terminate()
            proc.wait(30)


def status(ends: Endpoints) -> dict:
    return control_client.call(ends.control, "status", timeout_s=10.0)


def run(ends: Endpoints, waiting: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            status(ends)
            break
        except control_client.BalancerUnreachable:
            if time.monotonic() > deadline:
                raise
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(ends.frontend)
    start = time.monotonic()
    payload = b"x" * 100
    for rid in range(waiting):
        sock.send_multipart([p.encode(MsgType.SUBMIT, rid % 10, rid, rid % 3, 1), payload])
    while status(ends)["queue_depth"] < waiting:
        time.sleep(0.5)  # wait-ok: a measurement script polling a slow fill, not a test
    print(f"{waiting} waiting after {time.monotonic() - start:.0f} s; fill loop_max_ms {status(ends)['loop_max_ms']}")
    queries = [("requests", {"limit": 10}), ("requests", {"limit": 10, "status": "pending"})]
    queries += [("requests", {"limit": 10, "client": 3}), ("status", {})]
    end, asked, slowest = time.monotonic() + 12, 0, 0.0
    while time.monotonic() < end:
        for cmd, kw in queries:
            t = time.perf_counter()
            control_client.call(ends.control, cmd, timeout_s=10.0, **kw)
            slowest = max(slowest, time.perf_counter() - t)
            asked += 1
    print(
        f"{asked} admin queries in 12 s, slowest round trip {slowest * 1000:.1f} ms;"
        f" loop_max_ms over the last 10 s: {status(ends)['loop_max_ms']}"
    )
    sock.close(linger=0)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
