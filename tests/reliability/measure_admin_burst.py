"""Measure what a burst of pipelined admin queries costs a balancer with a deep queue and live nodes.

    python -m tests.reliability.measure_admin_burst [--waiting 300000] [--queries 200] [--paging key|offset]

Starts real processes on fresh loopback ports: `zlb balancer --max-memory-mb 0` with the default
heartbeat (500 ms, liveness 3), two `zlb server` nodes of capacity 1, node 0 marked down by an
admin; then a raw socket submits WAITING requests that each take a minute (node 1 holds one, the
rest wait). Once they are queued and the fill has left the 10 s window of `loop_max_ms`, it walks
the listing page by page (1,000 a page) to learn the page keys, timing the first and the last
page, then sends QUERIES `requests` pages pipelined on one DEALER (keys spread over the whole
listing; `--paging offset` sends offsets instead, as callers did before paging by key), and
while they are answered one `status` from a second DEALER. It prints:

- the page round trips at the start and at the end of the listing;
- how long the burst took to be answered, and the lone `status`'s round trip during it;
- `loop_max_ms` before and right after the burst;
- nodes declared dead (the log file's "is dead" lines), the nodes' states, node 0's admin state;
- node 0 killed with -9 and started again under its id: its state after it rejoined.

The figures go to docs/RELIABILITY.md ("Admin work"); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from client_node.client import json_payload
from tests.harness import Endpoints, ProcessGroup, start_balancer, wait_until
from wire import control_client, limits
from wire import protocol as p

PAGE = 1000
HOLD_MS = 60_000.0  # each request keeps node 1 busy this long: the queue stays deep


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.measure_admin_burst")
    parser.add_argument("--waiting", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--paging", choices=("key", "offset"), default="key")
    args = parser.parse_args()
    ends = Endpoints.fresh()
    with tempfile.TemporaryDirectory() as tmp:
        procs = ProcessGroup(Path(tmp), {**os.environ, **ends.env()})
        try:
            figures = run(procs, ends, args.waiting, args.queries, args.paging)
        finally:
            procs.stop_all()
    print(json.dumps(figures, indent=2))


def run(procs: ProcessGroup, ends: Endpoints, waiting: int, queries: int, paging: str) -> dict[str, Any]:
    balancer = start_balancer(procs, ends, 500, "--max-memory-mb", "0")
    balancer.start_server(0, "--capacity", "1")
    balancer.start_server(1, "--capacity", "1")
    balancer.wait_servers_active({0, 1}, timeout=30)
    assert procs.run("down", "0").returncode == 0
    fill(ends, waiting)
    wait_until(lambda: balancer.call("status")["queue_depth"] >= waiting - 1, 600, f"{waiting} queued")
    time.sleep(11)  # wait-ok: a measurement letting the fill leave loop_max_ms's 10 s window
    before = balancer.call("status")["loop_max_ms"]
    targets, first_ms, last_ms = page_targets(ends, waiting, queries, paging)
    burst = pipelined(ends, targets)
    status = balancer.call("status")
    servers = balancer.servers()
    log = (procs.workdir / "balancer.log").read_text(encoding="utf-8", errors="replace")
    figures = {
        "waiting": status["queue_depth"],
        "paging": paging,
        "first_page_ms": first_ms,
        "last_page_ms": last_ms,
        **burst,
        "loop_max_ms_before": before,
        "loop_max_ms_after": status["loop_max_ms"],
        "nodes_declared_dead": log.count(" is dead "),
        "log_lines_dropped": status["counters"].get("log_lines_dropped", 0),
        "states": {i: (s["state"], s.get("admin")) for i, s in servers.items()},
    }
    figures["state_of_node_0_after_rejoin"] = rejoin(procs, balancer)
    return figures


def fill(ends: Endpoints, waiting: int) -> None:
    """WAITING requests from client 7 in raw SUBMIT_BATCHes; the socket leaves, its requests stay. (A Client
    would keep all but its window at home, docs/PROTOCOL.md "Credit": a socket that says no CLIENT_HELLO is
    held to the memory budget alone, which --max-memory-mb 0 lifts.)"""
    payload = json_payload(HOLD_MS)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 60_000)  # every batch leaves before the socket closes (within a minute)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(ends.frontend)
    for first in range(1, waiting + 1, limits.BATCH_ITEMS):
        items = [[rid, 5, payload] for rid in range(first, min(waiting + 1, first + limits.BATCH_ITEMS))]
        sock.send(p.encode(p.MsgType.SUBMIT_BATCH, 7, 77, items))
    sock.close()


def page_targets(ends: Endpoints, waiting: int, queries: int, paging: str) -> tuple[list[dict], float, float]:
    """The arguments of QUERIES pages spread over the listing, and the round trips of its first and last page."""
    if paging == "offset":
        offsets = [i * max(1, waiting - PAGE) // max(1, queries - 1) for i in range(queries)]
        first = timed(ends, {"offset": 0})
        last = timed(ends, {"offset": offsets[-1]})
        return [{"offset": o} for o in offsets], first, last
    keys, key = [""], ""
    while True:
        page = call(ends, "requests", after=key, limit=PAGE)
        if page["next"] is None:
            break
        key = page["next"]
        keys.append(key)
    first = timed(ends, {"after": keys[0]})
    last = timed(ends, {"after": keys[-1]})
    return [{"after": keys[i * (len(keys) - 1) // max(1, queries - 1)]} for i in range(queries)], first, last


def timed(ends: Endpoints, args: dict) -> float:
    start = time.perf_counter()
    call(ends, "requests", limit=PAGE, **args)
    return round((time.perf_counter() - start) * 1000, 1)


def call(ends: Endpoints, cmd: str, **args: Any) -> Any:
    return control_client.call(ends.control, cmd, timeout_s=60.0, **args)


def pipelined(ends: Endpoints, targets: list[dict]) -> dict[str, Any]:
    """Send every page request at once on one DEALER, one status on another meanwhile; time the answers."""
    ctx = zmq.Context.instance()
    burst, lone = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock in (burst, lone):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ends.control)
    try:
        start = time.perf_counter()
        for args in targets:
            burst.send(p.encode_map({"cmd": "requests", "limit": PAGE, **args}))
        answered, errors, lone_ms, lone_sent = 0, 0, None, None
        poller = zmq.Poller()
        poller.register(burst, zmq.POLLIN)
        poller.register(lone, zmq.POLLIN)
        deadline = time.monotonic() + 300
        while answered < len(targets) and time.monotonic() < deadline:
            if lone_sent is None and answered >= 1:  # the burst is being answered: ask once from elsewhere
                lone_sent = time.perf_counter()
                lone.send(p.encode_map({"cmd": "status"}))
            for sock, _ in poller.poll(1000):
                reply = p.decode_map(sock.recv(), limit=64 * 2**20)
                if sock is lone:
                    lone_ms = round((time.perf_counter() - lone_sent) * 1000, 1)
                    continue
                answered += 1
                errors += not reply.get("ok")
        took = time.perf_counter() - start
    finally:
        burst.close(linger=0)
        lone.close(linger=0)
    return {
        "queries": len(targets),
        "answered": answered,
        "error_replies": errors,
        "burst_answered_in_ms": round(took * 1000, 1),
        "lone_status_during_burst_ms": lone_ms,
    }


def rejoin(procs: ProcessGroup, balancer: Any) -> str:
    """Kill node 0 with -9, start it again under its id: the state it rejoins in."""
    (node0,) = [proc for proc in procs.procs if proc.name.startswith("server-0-")]
    procs.kill9(node0)
    wait_until(lambda: balancer.servers()[0]["state"] == "dead", 30, "node 0 declared dead")
    balancer.start_server(0, "--capacity", "1")
    row = wait_until(lambda: (s := balancer.servers()[0])["state"] != "dead" and s, 30, "node 0 back")
    return f"{row['state']} (admin: {row.get('admin')})"


if __name__ == "__main__":
    main()
