"""Bytes per waiting request in the scheduler itself, without sockets.

The queue scenario measures the whole balancer process (its RSS also keeps
libzmq's receive buffers from the burst, which malloc does not hand back);
this measures what the scheduler's own structures cost, deterministically:
N requests decoded from real SUBMIT headers, as the loop would hand them over.

    python -m bench.memory --count 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from balancer.scheduler import Scheduler
from bench import procstat
from wire import protocol as p
from wire.protocol import MsgType

CLIENT_ID = 1001  # above Python's small-int cache, like any real client id


def bytes_per_waiting_request(count: int, payload_bytes: int = 16) -> float:
    """RSS growth of this process per request queued in a fresh Scheduler."""
    sched = Scheduler()
    route = b"\x00client-route"
    gc.collect()
    before = procstat.memory_kib(os.getpid())["VmRSS"]
    for request_id in range(1, count + 1):
        header = p.encode(MsgType.SUBMIT, CLIENT_ID, request_id, 5, 1)
        body = b"x" * payload_bytes  # a fresh bytes object per request, as a received frame is
        _type, (client_id, req_id, priority, incarnation) = p.decode(header)
        sched.submit(client_id, req_id, priority, route, body, incarnation)
        if len(sched.events) >= 256:
            sched.outbox.take_events()  # the loop publishes and drops these every iteration
    after = procstat.memory_kib(os.getpid())["VmRSS"]
    assert sched.waiting == count
    return round((after - before) * 1024 / count, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--payload-bytes", type=int, default=16)
    args = parser.parse_args(argv)
    print(json.dumps({"count": args.count, "bytes_per_waiting_request": bytes_per_waiting_request(args.count)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
