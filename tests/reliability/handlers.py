"""Handlers that tests plug into real server nodes with --handler (PYTHONPATH set to the repository)."""

from __future__ import annotations

import json
import os
import time

from server_node import handlers


def counting(work: handlers.Work) -> bytes:
    """Like `simulate`, and append "client_id request_id" to $ZLB_TEST_EXEC_LOG for counting executions."""
    result = handlers.simulate(work)
    _record_run(work)
    return result


def gated_counting(work: handlers.Work) -> bytes:
    """Record the run in $ZLB_TEST_EXEC_LOG as it starts (like `counting`), then run like `gated`: work
    that is held on its node for as long as the test needs, each execution counted."""
    _record_run(work)
    return gated(work)


def _record_run(work: handlers.Work) -> None:
    path = os.environ["ZLB_TEST_EXEC_LOG"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{work.client_id} {work.request_id}\n".encode())
    finally:
        os.close(fd)


def stamped(work: handlers.Work) -> bytes:
    """Like `simulate`, after appending "client_id request_id server_id attempt started" to $ZLB_TEST_RUN_LOG as it
    starts (`started`: time.monotonic(), one clock for every process on the host)."""
    line = f"{work.client_id} {work.request_id} {work.server_id} {work.attempt} {time.monotonic()}\n"
    fd = os.open(os.environ["ZLB_TEST_RUN_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return handlers.simulate(work)


def runs(path: str) -> list[tuple[int, int, int, int, float]]:
    """The runs a `stamped` log recorded, in the order they started: (client, request, server, attempt, started)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        rows = [line.split() for line in fh if line.endswith("\n")]
    return [(int(c), int(r), int(s), int(a), float(t)) for c, r, s, a, t in rows]


def boom(work: handlers.Work) -> bytes:
    """Always raise: the request must fail with this text, once, and the node must live on."""
    raise ValueError(f"boom on request {work.request_id}")


def poison(work: handlers.Work) -> bytes:
    """Kill the whole node process on a payload of b"poison", as a crashing native library would."""
    if bytes(work.payload) == b"poison":
        os._exit(3)
    return handlers.simulate(work)


def executions(path: str) -> dict[tuple[int, int], int]:
    """How often each (client_id, request_id) ran, from a counting log."""
    counts: dict[tuple[int, int], int] = {}
    if not os.path.exists(path):
        return counts
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            cid, rid = map(int, line.split())
            counts[(cid, rid)] = counts.get((cid, rid), 0) + 1
    return counts


def attempt_echo(work: handlers.Work) -> bytes:
    """Wait the payload's cost_ms (and for the file $ZLB_TEST_GATE, when set), then return this server's id
    and the attempt number it ran."""
    _wait_for_gate(os.environ.get("ZLB_TEST_GATE"))
    data = handlers.decode_payload(bytes(work.payload))
    cost_ms = data.get("cost_ms", 0) if isinstance(data, dict) else 0
    if isinstance(cost_ms, (int, float)) and cost_ms > 0:
        time.sleep(cost_ms / 1000)  # wait-ok: the simulated work itself, not synchronisation
    return json.dumps({"server_id": work.server_id, "attempt": work.attempt}).encode()


def stuck(work: handlers.Work) -> bytes:
    """Hang for a minute, as a handler waiting on a dead dependency would."""
    time.sleep(60)  # wait-ok: the point of this handler is to not return in time
    return b"too late"


def gate_payload(gate: str, payload: object = None) -> bytes:
    """A payload `gated` holds until the file `gate` exists."""
    return json.dumps({"gate": gate, "payload": payload}).encode()


def gated(work: handlers.Work) -> bytes:
    """Hold the request until the test creates the file named by the payload's "gate" (then answer like
    `simulate`), or else by $ZLB_TEST_GATE (then answer the payload), at most 60 s: work that lasts
    exactly as long as the test needs, however busy the machine."""
    data = handlers.decode_payload(bytes(work.payload))
    gate = data.get("gate") if isinstance(data, dict) else None
    if gate is None:  # gated by $ZLB_TEST_GATE: the payload itself is the answer
        _wait_for_gate(os.environ.get("ZLB_TEST_GATE"))
        return bytes(work.payload)
    _wait_for_gate(gate)
    return handlers.simulate(work)


def _wait_for_gate(gate: str | None) -> None:
    """Return once the file `gate` exists (at once without one), or after 60 s."""
    if gate:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)  # wait-ok: polls the gate, bounded by the deadline


def always_dies(work: handlers.Work) -> bytes:
    """Kill the node on every request, as a crash in native code would: the request fails every attempt."""
    os._exit(3)
