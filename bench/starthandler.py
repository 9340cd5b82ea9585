"""A handler that notes when each request starts running: `zlb server --handler bench.starthandler:handle`.

The bench's killnode scenario kills a node while it runs a request and needs
the moment that request starts again elsewhere, as the node saw it. The
payload is JSON, {"cost_ms": 2000, "starts": "/path/to/file"}: each start
appends one line `request_id attempt server_id pid monotonic_ns` to that file
(O_APPEND, one write: lines from several nodes never mix), then the request
runs for cost_ms, or until it is cancelled. CLOCK_MONOTONIC is one clock for
every process of a Linux machine, so the bench subtracts its own time of the kill.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple


class Start(NamedTuple):
    """One line of the starts file."""

    request_id: int
    attempt: int
    server_id: int
    pid: int
    monotonic_ns: int


def handle(work: Any) -> bytes:
    """Note the start, then run for the payload's cost_ms."""
    data = json.loads(bytes(work.payload))
    # getattr: a node of an older commit (tools.by_commit --same-bench) may hand over a Work without it.
    line = f"{work.request_id} {getattr(work, 'attempt', 0)} {work.server_id} {os.getpid()} {time.monotonic_ns()}\n"
    fd = os.open(data["starts"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    cancelled = getattr(work, "cancelled", None)  # older nodes' Work has no cancellation either
    if cancelled is None:
        time.sleep(data["cost_ms"] / 1000)  # wait-ok: the request's running time
    else:
        cancelled.wait(data["cost_ms"] / 1000)
    return b"done"


def read_starts(path: str) -> list[Start]:
    """Every start noted so far (none if the file does not exist yet)."""
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    # Only whole lines: a start being written as we read is picked up by the next look.
    return [Start(*map(int, line.split())) for line in text.split("\n")[:-1]]
