"""Running the app: our own listening socket, uvicorn with limits, and a header deadline.

The socket is bound before uvicorn starts, so a taken port is one line on
stderr and exit status EXIT_PORT_IN_USE within a second, never a half-started
gateway. uvicorn brings keep-alive timeouts, a real backlog and a bound on
header size; what it lacks is a deadline for a client that opens a connection
and sends its request head slowly (slowloris), which `DeadlineH11Protocol` adds.

That subclass uses uvicorn's internals, because no public way gives the same
protection: uvicorn's only timeout is keep-alive (its docs, "Server Behavior:
Timeouts"; the request-start timeout of uvicorn issue #157 never landed) and
the first byte received cancels it, so one client trickling a head holds a
connection for ever, and MAX_CONNECTIONS of them make the gateway answer 503
to everyone. ASGI middleware runs only once a head is complete, and a wrapper
around the protocol would have to parse HTTP itself to know where a head ends.
What it relies on: `H11Protocol` in uvicorn.protocols.http.h11_impl, its
`cycle` (replaced when a request head completes), `loop` and `transport`,
`on_response_complete` (a keep-alive connection starts waiting for its next
head) and `send_400_response(msg)`. So pyproject pins uvicorn below the next
minor release (>=0.55,<0.56) and tests/test_web_head_deadline.py fails if any
of these change.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol  # internal: pinned, see above

# A request head (line and headers) must arrive within this long of the connection opening or going idle.
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
# Connections the kernel queues before the gateway accepts them.
BACKLOG = 1024
# Open connections at once; beyond it uvicorn answers 503 at once instead of queueing without bound.
MAX_CONNECTIONS = 1000
# Largest request head: the seed's requests have a handful of short headers.
MAX_HEAD_BYTES = 16 * 1024
EXIT_PORT_IN_USE = 3


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head, and JSON for unparseable requests."""

    _head_deadline: asyncio.TimerHandle | None = None
    header_timeout_s = HEADER_TIMEOUT_S  # `serve` makes a subclass with the configured value

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        waiting_for = self.cycle  # the cycle in progress now; a new request replaces it
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_expired, waiting_for)

    def _head_expired(self, waiting_for: Any) -> None:
        # Still the same cycle: no new request head has completed since the deadline was armed.
        if self.cycle is waiting_for and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"bad request: {msg}"}).encode()
        head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
        self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; exits EXIT_PORT_IN_USE with one line if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = "port in use" if exc.errno in (98, 48) else (exc.strerror or str(exc))
        print(f"zlb http: cannot listen on {host}:{port}: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PORT_IN_USE if reason == "port in use" else 1) from None
    sock.set_inheritable(True)
    return sock


def gateway_config(app: Any, quiet: bool, header_timeout_s: float = HEADER_TIMEOUT_S) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: the head deadline, the limits above, the logs `quiet` asks for."""
    protocol = type("ConfiguredH11Protocol", (DeadlineH11Protocol,), {"header_timeout_s": header_timeout_s})
    return uvicorn.Config(
        app,
        http=protocol,
        loop="asyncio",
        lifespan="on",
        backlog=BACKLOG,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=3,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        access_log=not quiet,
        log_level="warning" if quiet else "info",
        server_header=False,
    )


def serve(app: Any, sock: socket.socket, quiet: bool, header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and finishes in-flight requests)."""
    uvicorn.Server(gateway_config(app, quiet, header_timeout_s)).run(sockets=[sock])
