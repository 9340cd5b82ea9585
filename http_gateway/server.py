"""The HTTP side of `zlb http`: the standard library's threading server.

Why the standard library: the API is nine small endpoints for scripts and
people, not a high-traffic service, so a framework would add a dependency
and buy nothing. `ThreadingHTTPServer` serves each connection on its own
thread; no handler thread ever shares a zmq socket: control calls open a
fresh socket per call, submissions go through the `Submitter`'s queue and
the event subscription lives on its own thread (`LatencyFollower`).
"""

from __future__ import annotations

import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from http_gateway import metrics
from http_gateway.app import Gateway, GatewayConfig, Response, error_response
from http_gateway.submitter import Submitter
from monitor.stream import EventStream
from wire.protocol import TOPIC_REQUEST
from zlb.supervisor import Supervisor

# Request bodies are tiny JSON objects; anything larger is refused unread.
MAX_BODY_BYTES = 1024 * 1024


class LatencyFollower:
    """A thread that owns the event subscription and keeps the dispatch-latency histogram.

    HTTP threads read `latest`, an immutable snapshot swapped in after each
    batch, so nothing is shared mutably between threads.
    """

    def __init__(self, events: str) -> None:
        self.latest: metrics.Histogram | None = None
        self._events = events
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zlb-http-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        latency = metrics.DispatchLatency()
        self.latest = latency.snapshot()
        stream = EventStream(self._events, (TOPIC_REQUEST,))
        try:
            while not self._stopping.is_set():
                batch = stream.poll(0.2)
                if batch:
                    latency.feed(batch)
                    self.latest = latency.snapshot()
        finally:
            stream.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)


class GatewayHandler(BaseHTTPRequestHandler):
    """Turns HTTP requests into `Gateway.handle` calls."""

    gateway: Gateway  # set on the subclass made by `make_server`
    quiet = False
    server_version = "zlb-http"
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length")
        try:
            size = int(length) if length else 0
        except ValueError:
            size = -1
        if size < 0 or size > MAX_BODY_BYTES:
            response = error_response(413 if size > 0 else 400, f"request body must be 0 to {MAX_BODY_BYTES} bytes")
            self.close_connection = True
        else:
            body = self.rfile.read(size) if size else b""
            method = "GET" if self.command == "HEAD" else self.command  # HEAD: GET's headers, no body
            response = self.gateway.handle(method, url.path, parse_qs(url.query), body)
        self._write(response)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the standard library raises itself (bad request line, huge headers) as JSON too."""
        self.close_connection = True
        # An unparseable request line leaves the version at HTTP/0.9, which has no status line; answer 1.0-style.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        self._write(error_response(code, message or explain or "bad request"))

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(host: str, port: int, gateway: Gateway, quiet: bool = False) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for `gateway`."""
    handler = type("BoundGatewayHandler", (GatewayHandler,), {"gateway": gateway, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def run_gateway(config: GatewayConfig, host: str, port: int, quiet: bool = False) -> None:
    """Serve the REST API until SIGINT/SIGTERM, then stop every process /configure started."""
    supervisor = Supervisor()
    supervisor.env.update({"ZLB_FRONTEND": config.frontend, "ZLB_CONTROL": config.control})
    supervisor.env.update({"ZLB_EVENTS": config.events, "ZLB_BACKEND": config.backend})
    server = None
    submitter = Submitter(config.frontend)
    follower = LatencyFollower(config.events)
    stop = threading.Event()
    try:
        server = make_server(host, port, Gateway(config, submitter, supervisor, lambda: follower.latest), quiet)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        serving = threading.Thread(target=server.serve_forever, args=(0.2,), name="zlb-http", daemon=True)
        serving.start()
        print(f"zlb http serving on http://{host}:{port} (balancer control {config.control})", file=sys.stderr)
        sys.stderr.flush()
        # Wake up now and then: a signal handler only runs between bytecodes of the main thread.
        while not stop.wait(0.5):
            pass
        server.shutdown()
    finally:
        if server is not None:
            server.server_close()
        submitter.close()
        follower.close()
        # Well inside the 5 s a supervising `zlb cluster` grants us, so no node outlives the gateway.
        supervisor.stop_all(timeout_s=3.0)
