"""What tests/ha/test_partition_leader.py runs inside the clients' network namespace (`ip netns exec NS python
-m tests.ha.netns_agent ...`), writing one JSON line per observation (flushed) for the test to read:

    status OUT CONTROL [CONTROL...]
        ask each member its own status (follow_leader=False) every 50 ms until SIGTERM:
        {"control", "sent", "received", "role", "epoch", "leader", "in_sync", "servers_active"}
    client OUT FRONTENDS CLIENT_ID COUNT EVERY_S COST_MS TIMEOUT_S
        a Client on FRONTENDS (comma-separated) submitting COUNT requests, one every EVERY_S, then waiting
        for the rest until TIMEOUT_S: {"request_id", "t", "status", "server_id", "attempts", "epoch",
        "endpoint"} per result, then {"summary": ...} with its counters and what is still outstanding.

Times are time.monotonic(): CLOCK_MONOTONIC is one clock for every process on the host, in any namespace,
so the test compares them with its own.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any, TextIO

from client_node.client import Client, json_payload
from wire import control_client

SAMPLE_EVERY_S = 0.05


def _line(out: TextIO, row: dict[str, Any]) -> None:
    out.write(json.dumps(row) + "\n")
    out.flush()


def sample_status(out: TextIO, controls: list[str]) -> None:
    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    while not halt.is_set():
        for control in controls:
            sent = time.monotonic()
            try:
                status = control_client.call(control, "status", timeout_s=0.5, follow_leader=False)
            except (control_client.BalancerUnreachable, control_client.ControlError):
                status = None
            row: dict[str, Any] = {"control": control, "sent": sent, "received": time.monotonic(), "role": None}
            if status is not None:
                ha = status.get("ha") or {}
                row.update(
                    role=status.get("role"),
                    epoch=status.get("epoch"),
                    leader=ha.get("leader"),
                    in_sync=ha.get("in_sync"),
                    servers_active=status.get("servers_active"),
                )
            _line(out, row)
        halt.wait(SAMPLE_EVERY_S)  # wait-ok: the sampling period


def run_client(
    out: TextIO, frontends: str, client_id: int, count: int, every_s: float, cost_ms: float, timeout_s: float
) -> None:
    with Client(frontends, client_id, retry_s=1.0) as client:

        def take() -> None:
            now = time.monotonic()
            for r in client.take_results():
                _line(
                    out,
                    {
                        "request_id": r.request_id,
                        "t": now,
                        "status": r.status,
                        "server_id": r.server_id,
                        "attempts": r.attempts,
                        "epoch": client.following.epoch,
                        "endpoint": client.following.current,
                    },
                )

        next_at = time.monotonic()
        for rid in range(1, count + 1):
            client.submit(json_payload(cost_ms, rid), request_id=rid)
            next_at += every_s
            while (left := next_at - time.monotonic()) > 0:
                client.pump(left)
                take()
        deadline = time.monotonic() + timeout_s
        while client.outstanding and time.monotonic() < deadline:
            client.pump(0.2)
            take()
        take()
        summary = {
            "conflicting_answers": client.conflicting_answers,
            "repeated_answers": client.repeated_answers,
            "stale_epoch": client.stale_epoch,
            "moves": client.following.moves,
            "outstanding": list(client.outstanding),
        }
        _line(out, {"summary": summary})


def main(argv: list[str]) -> None:
    kind, path, *rest = argv
    with open(path, "a", encoding="utf-8") as out:
        if kind == "status":
            sample_status(out, rest)
        elif kind == "client":
            frontends, client_id, count, every_s, cost_ms, timeout_s = rest
            run_client(out, frontends, int(client_id), int(count), float(every_s), float(cost_ms), float(timeout_s))
        else:
            raise SystemExit(f"unknown agent {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
