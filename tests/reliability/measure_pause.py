"""Measure what stopping the balancer does to its nodes and their work (issue 21).

    python -m tests.reliability.measure_pause [--stop-s 30] [--nodes 2] [--capacity 2] [--extra 3]
        [--heartbeat-ms 500] [--liveness 3] [--runs 1]
    python -m tests.reliability.measure_pause --pulses 100 [--pulse-stop-ms 80] [--pulse-every-ms 100] ...

Real processes on fresh loopback ports: `zlb balancer` and NODES `zlb server` nodes of CAPACITY
whose handler records each execution and holds its request until a gate file exists. A Client
submits NODES x CAPACITY + EXTRA held requests (the nodes hold what they can, the rest wait), then
the balancer is SIGSTOPped for STOP_S and continued; once every node was heard again (or 15 s
passed) the gate opens and every result is collected. With --pulses N the balancer is instead
stopped for PULSE_STOP_MS of every PULSE_EVERY_MS, N times (a loop late by less than a heartbeat
again and again, as on a starved machine), while a Client sends a request every 20 ms.

Prints one JSON line per run: nodes declared dead, nodes that came back holding work
(`node.returned`), requests that ran more than once, failed requests, the attempts of each result,
and how long after SIGCONT every node had been heard again. Nothing here is asserted; the figures
are in docs/RELIABILITY.md ("A paused balancer").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from client_node.client import Client
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from tests.reliability.handlers import executions, gate_payload


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.measure_pause")
    parser.add_argument("--stop-s", type=float, default=30.0)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--extra", type=int, default=3)
    parser.add_argument("--heartbeat-ms", type=int, default=500)
    parser.add_argument("--liveness", type=int, default=3)
    parser.add_argument("--pulses", type=int, default=0)
    parser.add_argument("--pulse-stop-ms", type=float, default=80.0)
    parser.add_argument("--pulse-every-ms", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        ends = Endpoints.fresh()
        with tempfile.TemporaryDirectory() as tmp:
            procs = ProcessGroup(Path(tmp), {**os.environ, **ends.env(), "PYTHONUNBUFFERED": "1"})
            try:
                figures = run(procs, ends, Path(tmp), args)
            finally:
                procs.stop_all()
        print(json.dumps(figures), flush=True)


def run(procs: ProcessGroup, ends: Endpoints, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    balancer = start_balancer(procs, ends, args.heartbeat_ms, liveness=args.liveness)
    log = str(tmp / "runs.log")
    for node_id in range(args.nodes):
        extra = ("--capacity", str(args.capacity))
        balancer.start_server(node_id, *extra, handler="gated_counting", env={"ZLB_TEST_EXEC_LOG": log})
    balancer.wait_servers_active(set(range(args.nodes)), 30)
    if args.pulses:
        figures = pulsed(balancer, ends, args)
    else:
        figures = stopped_once(balancer, ends, tmp, args)
    events = balancer.call("logs", format="events")
    runs = executions(log)
    figures.update(
        dead=sum(e["kind"] in ("node.dead", "node.disconnected") for e in events),
        returned=[(e["server_id"], e["kept"], e["elsewhere"]) for e in events if e["kind"] == "node.returned"],
        ran_twice=sum(1 for n in runs.values() if n > 1),
        requests=balancer.call("status")["requests"],
    )
    return figures


def stopped_once(balancer: LiveBalancer, ends: Endpoints, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    gate = tmp / "gate"
    held = args.nodes * args.capacity
    with Client(ends.frontend, client_id=1, retry_s=5.0) as client:
        pending = [client.submit(gate_payload(str(gate), i)) for i in range(held + args.extra)]
        wait_until(lambda: client.pump(0) >= 0 and balancer.call("status")["in_flight"] == held, 30, "work held")
        os.kill(balancer.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(args.stop_s)  # wait-ok: the fault being measured
        finally:
            os.kill(balancer.proc.pid, signal.SIGCONT)
        woke = time.monotonic()
        heard_after = None
        deadline = woke + 15
        while time.monotonic() < deadline:
            servers = balancer.servers().values()
            if all(s["state"] != "dead" and s["last_heartbeat_ms_ago"] < args.heartbeat_ms for s in servers):
                if time.monotonic() - woke > args.heartbeat_ms / 1000:  # heard after the wake, not before it
                    heard_after = round(time.monotonic() - woke, 2)
                    break
            client.pump(0.05)
        gate.touch()
        results = [p.result(timeout=60) for p in pending]
    return {
        "stop_s": args.stop_s,
        "heartbeat_ms": args.heartbeat_ms,
        "liveness": args.liveness,
        "all_heard_again_after_s": heard_after,
        "failed": sum(not r.ok for r in results),
        "attempts": dict(Counter(r.attempts for r in results)),
    }


def pulsed(balancer: LiveBalancer, ends: Endpoints, args: argparse.Namespace) -> dict[str, Any]:
    done = threading.Event()

    def pulse() -> None:
        for _ in range(args.pulses):
            os.kill(balancer.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(args.pulse_stop_ms / 1000)  # wait-ok: the fault being measured
            finally:
                os.kill(balancer.proc.pid, signal.SIGCONT)
            time.sleep((args.pulse_every_ms - args.pulse_stop_ms) / 1000)  # wait-ok: the fault's rhythm
        done.set()

    gate = Path(tempfile.gettempdir()) / f"zlb-measure-pause-open-{os.getpid()}"
    gate.touch()  # requests here are not held: the gate is open
    results = []
    pulser = threading.Thread(target=pulse, daemon=True)
    with Client(ends.frontend, client_id=2, retry_s=5.0) as client:
        pulser.start()
        next_send = time.monotonic()
        while not done.is_set():
            if time.monotonic() >= next_send:
                client.submit(gate_payload(str(gate), 0))
                next_send += 0.02
            client.pump(max(0.0, next_send - time.monotonic()))
            results += client.take_results()
        results += list(client.as_completed(timeout=60))
    gate.unlink()
    return {
        "pulses": args.pulses,
        "pulse_stop_ms": args.pulse_stop_ms,
        "pulse_every_ms": args.pulse_every_ms,
        "heartbeat_ms": args.heartbeat_ms,
        "liveness": args.liveness,
        "sent": len(results),
        "failed": sum(not r.ok for r in results),
        "attempts": dict(Counter(r.attempts for r in results)),
    }


if __name__ == "__main__":
    main()
