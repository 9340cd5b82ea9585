"""What a server node runs for each request.

A handler is a plain function `handler(work: Work) -> bytes | str | object`.
Bytes go back as they are, a str as UTF-8, anything else as JSON. An exception
becomes a failed result carrying its text; the node keeps running.

Built-ins: `simulate` (the default: waits `cost_ms` from a JSON payload, then
echoes the payload with its server id, like the seed's simulated servers) and
`echo` (returns the payload untouched at once; it runs inline in the node's
loop, which is what benchmarks want). `module:function` loads your own.

Cancellation: `work.cancelled` is a threading.Event, set when the balancer
tells the node to stop this request (someone cancelled it, or its deadline
passed). A long handler should look at it between steps and return early; its
result is dropped either way, and the node takes new work at once in another
thread, so a handler that never looks only wastes its own thread until it ends.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple


class Work(NamedTuple):
    """One request as a handler sees it."""

    client_id: int
    request_id: int
    priority: int
    attempt: int
    server_id: int
    payload: bytes
    # Set when this request is cancelled or past its deadline: stop early, the result will be dropped.
    # Handlers run inline (echo) cannot be stopped while they run, and get one that is never set.
    cancelled: threading.Event = threading.Event()


Handler = Callable[[Work], Any]


def decode_payload(payload: bytes) -> Any:
    """The payload as JSON when it is JSON, else as text, else None."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return None


def simulate(work: Work) -> bytes:
    """Wait the request's `cost_ms`, then echo its payload with this server's id."""
    data = decode_payload(bytes(work.payload))
    cost_ms = data.get("cost_ms", 0) if isinstance(data, dict) else 0
    if isinstance(cost_ms, (int, float)) and cost_ms > 0 and work.cancelled.wait(cost_ms / 1000):
        return b"cancelled"  # dropped by the node; returned early so the thread is free again
    echo = data.get("payload") if isinstance(data, dict) else data
    return json.dumps({"server_id": work.server_id, "echo": echo}).encode()


def echo(work: Work) -> Any:
    """Return the payload unchanged, at once."""
    return work.payload


# Handlers cheap enough to run on the node's own loop thread.
INLINE = {echo}
BUILTIN: dict[str, Handler] = {"simulate": simulate, "echo": echo}


class HandlerError(ValueError):
    """A --handler spec that does not name a callable."""


def load(spec: str) -> Handler:
    """Resolve a built-in name or `module:function` to a callable."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor module:function")
    _with_working_directory()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"cannot import {module_name!r}: {exc}") from None
    except SyntaxError as exc:  # the module's own code does not parse: say where, in one line
        raise HandlerError(f"cannot import {module_name!r}: {exc.msg} ({exc.filename}, line {exc.lineno})") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise HandlerError(f"{module_name!r} has no callable {attr!r}")
    return func


def _with_working_directory() -> None:
    """Put the working directory first on the import path, as `python -m` does.

    The installed `zlb` script starts with only its own directory there, so `--handler mypkg.work:handle`
    run beside `mypkg/` failed with "No module named 'mypkg'" unless PYTHONPATH was set.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def to_bytes(value: Any) -> bytes:
    """A handler's return value as a result frame."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def run(handler: Handler, work: Work) -> tuple[bool, bytes]:
    """Run a handler and turn any exception into a failed result."""
    try:
        return True, to_bytes(handler(work))
    except Exception as exc:  # noqa: BLE001 - a user's handler may raise anything; report, never die
        return False, f"{exc.__class__.__name__}: {exc}".encode()
