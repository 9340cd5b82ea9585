"""What the two windows of finished requests cost: bytes an id past its result, and the loop's time.

    python -m tests.reliability.measure_retention [--ids 1000000]

Prints, for ids held past their results (balancer/earlier.py), the bytes tracemalloc sees per id and
the estimate the --remember-mb cap counts, for one Client's consecutive ids and for ids scattered at
random over the 64-bit range; then, for a scheduler with a million finished requests, the longest
expire_finished() call (one tick's slice) and what a submit of a new id costs with and without ids
held for its client. Figures, not assertions: docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from balancer.earlier import EarlierIds
from balancer.scheduler import Scheduler
from wire.protocol import PROCESSED


def bytes_per_id(request_ids: list[int]) -> tuple[float, float]:
    """(bytes tracemalloc counts, bytes the cap counts) per id, for these ids of one client."""
    digests = [-1 - random.getrandbits(63) for _ in range(1000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = EarlierIds(86_400.0, 1 << 40)
    for n, rid in enumerate(request_ids):
        ids.add(7, rid, PROCESSED, digests[n % 1000], n)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(request_ids), ids.bytes / len(request_ids)


def loop_costs(count: int) -> None:
    """The longest tick slice with `count` results past their window, and a submit's cost with ids held."""
    sched = Scheduler(heartbeat_s=60.0, liveness=3, max_memory_bytes=None, keep_finished_bytes=1 << 40)
    sched.hello(b"n", 0, 1_000_000, 1, "h", 0.0)
    for rid in range(count):
        sched.submit(7, rid, 5, b"r", b"payload", 0, 0.0)
    for _node, ticket, _req in sched.dispatch():
        sched.complete(b"n", ticket, True, b"result", 0.0)
    sched.outbox.replies.clear()
    sched.expire_finished(0.0)
    longest, ticks, now = 0.0, 0, 400.0
    while len(sched.kept):
        start = time.perf_counter()
        sched.expire_finished(now)
        longest = max(longest, time.perf_counter() - start)
        ticks, now = ticks + 1, now + 0.05
    print(f"{count:,} results past their window: {ticks} ticks, longest {longest * 1000:.2f} ms")
    for client_id, label in ((7, "with ids held for its client"), (8, "no ids held for its client")):
        n = 100_000
        start = time.perf_counter()
        for rid in range(count, count + n):
            sched.submit(client_id, rid, 5, b"r", b"payload", 0, now)
        print(f"submit of a new id, {label}: {(time.perf_counter() - start) / n * 1e9:.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    args = parser.parse_args()
    dense = bytes_per_id(list(range(1, args.ids + 1)))
    scattered = bytes_per_id([random.getrandbits(64) for _ in range(args.ids)])
    print(f"{args.ids:,} consecutive ids: {dense[0]:.1f} bytes an id measured, {dense[1]:.1f} counted")
    print(f"{args.ids:,} scattered ids:   {scattered[0]:.1f} bytes an id measured, {scattered[1]:.1f} counted")
    loop_costs(args.ids)


if __name__ == "__main__":
    main()
