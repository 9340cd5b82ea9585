"""The Client process of `python -m tools.walk`: warm up, then trace whole requests.

    python walk_client.py FRONTEND ROOT OUT --mark M --warmup N --runs R --gap-s S

Runs from the checkout ROOT (first on PYTHONPATH after this directory). Each traced request
is profiled from the call of `Client.submit` to the return of `Pending.result`, the moment
the caller has its Result; its payload is the mark and the run's number, which the balancer
and the node see (sitecustomize.py) and the echo handler sends back. Writes one JSON object
to OUT: the runs' events, and which files the client code came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from walktracer import Tracer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("frontend")
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--mark", required=True)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--gap-s", type=float, default=0.1)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    args = parser.parse_args()

    import client_node.client as client_module
    from client_node.client import Client

    tracer = Tracer(args.root)
    if tracer.where(client_module.Client.submit.__code__) is None:
        print(f"walk_client: the Client came from {client_module.__file__}, not {args.root}", file=sys.stderr)
        return 2
    mark = args.mark.encode()
    runs = []
    with Client(args.frontend, client_id=os.getpid() % 1_000_000, connect_timeout_s=args.timeout_s) as client:
        for i in range(args.warmup):  # the first waits for the node to join
            payload = b"walk-warm-up-%d" % i
            result = client.submit(payload).result(timeout=3 * args.timeout_s if i == 0 else args.timeout_s)
            if result.body != payload:
                print(f"walk_client: warm-up {i} came back {result.status} {result.body[:80]!r}", file=sys.stderr)
                return 3
        for run in range(args.runs):
            time.sleep(args.gap_s)  # every process idle, its timers run: none is due inside the window
            payload = mark + b"%06d" % run
            tracer.events = []
            sys.setprofile(tracer.profile)
            pending = client.submit(payload)
            result = pending.result(timeout=args.timeout_s)
            sys.setprofile(None)
            if result.body != payload or not result.ok:
                print(f"walk_client: run {run} came back {result.status} {result.body[:80]!r}", file=sys.stderr)
                return 3
            runs.append({"run": run, "start": [None, None], "events": tracer.events, "tail": [], "waits": 0})
    with open(args.out, "w") as fh:
        json.dump({"pid": os.getpid(), "client_file": client_module.__file__, "runs": runs}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
