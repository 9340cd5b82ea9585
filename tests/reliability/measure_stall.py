"""Measure what an admin query and a journal compaction cost the loop with a large queue.

    python -m tests.reliability.measure_stall [WAITING] [CLIENTS]

In process, no sockets: the scheduler filled with WAITING requests of 1 KiB
from CLIENTS clients, then (1) `zlb requests` as the control command runs it
(the first ten, pending, by client, a first and a last page of 1,000 by key, and
a page by status that matches nothing: it stops at its scan bound), (2) the
incremental compaction, step by step: the longest step is the longest the loop
would wait (the inline rewrite it replaced took 421 ms at 500,000 waiting
requests; balancer/compaction.py).
"""

from __future__ import annotations

import sys
import tempfile
import time

from balancer import control
from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.eventlog import EventLog
from balancer.scheduler import Scheduler


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def main(waiting: int, clients: int) -> None:
    sched = Scheduler(journal=True)
    for rid in range(waiting):
        sched.submit(rid % clients, rid, rid % 3, b"r", b"x" * 1024)
    sched.outbox.take_journal()
    state = control.BalancerState(sched, EventLog(None), {}, 0.0, 0.0)
    deep = control.cmd_requests(state, {"after": "", "limit": 1}, 0.0)["next"].split("-")[0] + f"-{waiting - 1001:x}"
    queries = [{"limit": 10}, {"limit": 10, "status": "pending"}, {"limit": 10, "client": 0}, {"limit": 1000}]
    queries += [{"after": "", "limit": 1000}, {"after": deep, "limit": 1000}, {"after": "", "status": "failed"}]
    for args in queries:
        start = time.perf_counter()
        control.cmd_requests(state, args, 0.0)
        print(f"requests {args}: {ms(start):.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        journal = jr.Journal(f"{tmp}/j")
        journal.open([])
        start = time.perf_counter()
        run = Compaction(journal, sched)
        longest, steps, total = ms(start), 1, time.perf_counter()
        while True:
            start = time.perf_counter()
            done = run.step()
            longest, steps = max(longest, ms(start)), steps + 1
            if done:
                break
        print(f"incremental compaction: longest step {longest:.1f} ms, {steps} steps, {ms(total) / 1000:.1f} s")
        journal.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
