"""Per-request cost of handing work to the node's daemon-thread pool vs a process pool.

A trivial handler, one request at a time (round trip through the pool), 5,000 per run:
    python -m tools.handler_pool
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import select
import time

from server_node.pool import HandlerPool


def run(work: bytes) -> tuple[bool, bytes]:
    return True, work


def threads(n: int) -> float:
    pool = HandlerPool(4, run)
    t = time.perf_counter()
    for i in range(n):
        pool.submit(i, b"x" * 100)
        while not pool.finished():
            select.select([pool.wake_fd], [], [], 1)
    pool.close()
    return (time.perf_counter() - t) / n * 1e6


def procs(n: int) -> float:
    with mp.get_context("fork").Pool(4) as pool:
        t = time.perf_counter()
        for _ in range(n):
            pool.apply(run, (b"x" * 100,))
        return (time.perf_counter() - t) / n * 1e6


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tools.handler_pool", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="round trips per run (3 runs each)")
    n = parser.parse_args().requests
    for f in (threads, procs):
        print(f.__name__, [round(f(n), 1) for _ in range(3)], "us per request")
