"""The seed's REST API as plain functions: (method, path, query, body) in, a Response out.

No HTTP server here: `server.py` parses requests and writes responses;
this module validates input and translates each endpoint into control
commands, client submissions or supervised processes. Every failure is a
JSON `{"error": ...}` with a 4xx status (503 when the balancer is away).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client_node.client import DEFAULT_PRIORITY, json_payload
from http_gateway import metrics
from http_gateway.submitter import Submission, Submitter
from wire import control_client
from zlb.supervisor import Supervisor

# Bounds on what one /configure may ask for: a typo must not fork a thousand processes.
MAX_SERVERS = 64
MAX_CLIENTS = 64
MAX_REQUESTS_PER_CLIENT = 1_000_000
# Request ids of /configure's clients start here, clear of the small ids people
# type into /send_request (the seed's README uses 101 and 102).
FIRST_CONFIGURED_REQUEST_ID = 1001
# Largest id or priority accepted: the wire carries 64-bit integers.
MAX_WIRE_INT = 2**63 - 1
# /logs returns at most this many newest lines (a control reply's limit); /logs/download pages through all.
LOG_PAGE = 1000
# /requests without ?limit= lists this many (oldest first); ?limit=0 lists every remembered request.
DEFAULT_REQUEST_LIMIT = 1000
# How long /send_request waits for the balancer to have queued the request before answering.
ACK_TIMEOUT_S = 2.0
CONTROL_TIMEOUT_S = 3.0
LOG_FILE_NAME = "load_balancer_logs.txt"


@dataclass
class Response:
    """What the HTTP layer writes back."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """A request that cannot be served; becomes a JSON error with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps({"error": message}, ensure_ascii=False).encode("utf-8"), headers=headers or {})


@dataclass
class GatewayConfig:
    """Where the balancer is and how /configure's processes run."""

    control: str
    frontend: str
    events: str
    backend: str
    cost_ms: float = 500.0
    capacity: int = 1
    heartbeat_ms: int = 500
    liveness: int = 3
    control_timeout_s: float = CONTROL_TIMEOUT_S


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    if not body.strip():
        raise HttpError(400, "request body must be a JSON object")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "request body must be a JSON object")
    return value


def int_field(
    obj: dict[str, Any], name: str, minimum: int | None = 0, maximum: int = MAX_WIRE_INT, default: int | None = None
) -> int:
    """An integer field of a JSON body within bounds, or a 400 naming the field."""
    if name not in obj:
        if default is not None:
            return default
        raise HttpError(400, f"missing field '{name}'")
    value = obj[name]
    if type(value) is not int:
        raise HttpError(400, f"'{name}' must be an integer, got {json.dumps(value)}")
    if minimum is not None and value < minimum:
        raise HttpError(400, f"'{name}' must be at least {minimum}, got {value}")
    if value > maximum:
        raise HttpError(400, f"'{name}' must be at most {maximum}, got {value}")
    return value


def query_int(query: dict[str, list[str]], name: str) -> int | None:
    """An integer query parameter, or a 400."""
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[-1])
    except ValueError:
        raise HttpError(400, f"query parameter '{name}' must be an integer, got {values[-1]!r}") from None


class Gateway:
    """Serves the seed's endpoints from a real balancer."""

    def __init__(
        self,
        config: GatewayConfig,
        submitter: Submitter,
        supervisor: Supervisor,
        latency: Callable[[], metrics.Histogram | None] = lambda: None,
    ) -> None:
        self.config = config
        self.submitter = submitter
        self.sup = supervisor
        self.latency = latency
        # /configure starts and stops processes and numbers their requests; handler threads take turns.
        self._configure_lock = threading.Lock()
        self._configure_runs = 0
        self._next_request_id: dict[int, int] = {}
        self._routes: list[tuple[re.Pattern[str], str, Callable[..., Response]]] = [
            (re.compile(r"/configure"), "POST", self.configure),
            (re.compile(r"/send_request"), "POST", self.send_request),
            (re.compile(r"/requests"), "GET", self.requests),
            (re.compile(r"/servers"), "GET", self.servers),
            (re.compile(r"/server_down/(?P<server_id>[^/]*)"), "POST", self.server_down),
            (re.compile(r"/server_up/(?P<server_id>[^/]*)"), "POST", self.server_up),
            (re.compile(r"/logs"), "GET", self.logs),
            (re.compile(r"/logs/download"), "GET", self.logs_download),
            (re.compile(r"/metrics"), "GET", self.metrics),
        ]

    # ---- dispatch -------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        """Serve one request; never raises."""
        try:
            handler, params = self._route(method, path.rstrip("/") or "/")
            return handler(query=query, body=body, **params)
        except HttpError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except control_client.BalancerUnreachable as exc:
            return error_response(503, str(exc))
        except Exception as exc:  # noqa: BLE001 - the client gets JSON, the operator the traceback
            traceback.print_exc(file=sys.stderr)
            return error_response(500, f"internal error ({exc.__class__.__name__}); see the gateway's log")

    def _route(self, method: str, path: str) -> tuple[Callable[..., Response], dict[str, str]]:
        allowed = []
        for pattern, route_method, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method == method:
                return handler, match.groupdict()
            allowed.append(route_method)
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}", {"Allow": allowed[0]})
        raise HttpError(404, f"no endpoint {path}")

    def _call(self, cmd: str, **args: Any) -> Any:
        """A control command; its error becomes a 400 unless a caller maps it."""
        try:
            return control_client.call(self.config.control, cmd, timeout_s=self.config.control_timeout_s, **args)
        except control_client.ControlError as exc:
            raise HttpError(400, str(exc)) from None

    # ---- endpoints ------------------------------------------------------

    def configure(self, query: dict[str, list[str]], body: bytes) -> Response:
        """Reach `num_servers` supervised nodes and start `num_clients` clients sending requests."""
        spec = parse_json_object(body)
        servers = int_field(spec, "num_servers", maximum=MAX_SERVERS)
        clients = int_field(spec, "num_clients", maximum=MAX_CLIENTS)
        per_client = int_field(spec, "requests_per_client", maximum=MAX_REQUESTS_PER_CLIENT)
        with self._configure_lock:
            self._call("configure", servers=servers, clients=clients)
            self._scale_servers(servers)
            self._configure_runs += 1
            for client_id in range(clients):
                self._start_client(client_id, per_client)
        return json_response({"servers": servers, "clients": clients, "requests_per_client": per_client})

    def _scale_servers(self, count: int) -> None:
        cfg = self.config
        for name in self.sup.running("server-"):
            if int(name.split("-", 1)[1]) >= count:
                self.sup.stop(name)
        running = set(self.sup.running("server-"))
        for node_id in range(count):
            if f"server-{node_id}" not in running:
                self.sup.start_server(node_id, cfg.capacity, cfg.heartbeat_ms, cfg.liveness)

    def _start_client(self, client_id: int, count: int) -> None:
        """Send a configured client's requests through the gateway's own session for that client id.

        A client id belongs to one live process (see docs/PROTOCOL.md, Sessions), and
        /send_request speaks for client ids too, so the gateway is that one process.
        """
        first = self._next_request_id.get(client_id, FIRST_CONFIGURED_REQUEST_ID)
        self._next_request_id[client_id] = first + count
        for n in range(count):
            payload = json_payload(self.config.cost_ms, {"n": n})
            self.submitter.submit(Submission(client_id, first + n, DEFAULT_PRIORITY, payload))

    def send_request(self, query: dict[str, list[str]], body: bytes) -> Response:
        """Queue one request and answer at once; it then shows in /requests."""
        spec = parse_json_object(body)
        client_id = int_field(spec, "client_id")
        request_id = int_field(spec, "request_id")
        priority = int_field(spec, "priority", minimum=-MAX_WIRE_INT, default=DEFAULT_PRIORITY)
        cost = spec.get("cost_ms", self.config.cost_ms)
        if type(cost) not in (int, float) or cost < 0:
            raise HttpError(400, f"'cost_ms' must be a non-negative number, got {json.dumps(cost)}")
        known = self._find_request(client_id, request_id)
        if known is not None:
            raise HttpError(409, f"Request {request_id} from Client {client_id} already exists ({known['status']})")
        self.submitter.submit(Submission(client_id, request_id, priority, json_payload(cost, spec.get("payload"))))
        if not self._await_queued(client_id, request_id):
            message = f"Request {request_id} was not queued within {ACK_TIMEOUT_S:g} s (queue full? see /logs)"
            raise HttpError(503, message)
        return json_response({"message": f"Request {request_id} added successfully!"})

    def _find_request(self, client_id: int, request_id: int) -> dict[str, Any] | None:
        try:
            return control_client.call(
                self.config.control,
                "request",
                self.config.control_timeout_s,
                client_id=client_id,
                request_id=request_id,
            )
        except control_client.ControlError:
            return None

    def _await_queued(self, client_id: int, request_id: int) -> bool:
        """Wait briefly until the balancer knows the request, so a following GET /requests shows it."""
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while self._find_request(client_id, request_id) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)  # wait-ok: a deadline-bounded poll of the balancer
        return True

    def requests(self, query: dict[str, list[str]], body: bytes) -> Response:
        """Requests known to the balancer, oldest first (?status=, ?client=, ?offset=, ?limit= with 0 for all)."""
        client, limit, offset = (query_int(query, name) for name in ("client", "limit", "offset"))
        status = query.get("status")
        args = {"status": status[-1] if status else None, "client": client}
        if limit is not None and limit < 0:
            raise HttpError(400, f"query parameter 'limit' must be at least 0, got {limit}")
        limit = DEFAULT_REQUEST_LIMIT if limit is None else limit
        rows: list[Any] = []
        offset = offset or 0
        while True:  # a control reply holds at most one page
            want = LOG_PAGE if not limit else min(LOG_PAGE, limit - len(rows))
            page = self._call("requests", offset=offset + len(rows), limit=want, **args)
            rows.extend(page)
            if len(page) < want or (limit and len(rows) >= limit):
                return json_response(rows)

    def servers(self, query: dict[str, list[str]], body: bytes) -> Response:
        return json_response(self._call("servers"))

    def server_down(self, query: dict[str, list[str]], body: bytes, server_id: str) -> Response:
        return self._admin("down", server_id, "down")

    def server_up(self, query: dict[str, list[str]], body: bytes, server_id: str) -> Response:
        return self._admin("up", server_id, "up")

    def _admin(self, cmd: str, raw_id: str, verb: str) -> Response:
        if not raw_id.isdigit():
            raise HttpError(400, f"server id must be a non-negative integer, got {raw_id!r}")
        server_id = int(raw_id)
        try:
            control_client.call(self.config.control, cmd, self.config.control_timeout_s, server_id=server_id)
        except control_client.ControlError as exc:
            raise HttpError(404 if "not found" in str(exc) else 409, str(exc)) from None
        return json_response({"message": f"Server {server_id} marked as {verb}"})

    def logs(self, query: dict[str, list[str]], body: bytes) -> Response:
        """The newest log lines in the seed's wording (?limit=, at most 1000)."""
        limit = query_int(query, "limit")
        return json_response({"logs": self._call("logs", limit=LOG_PAGE if limit is None else limit)})

    def logs_download(self, query: dict[str, list[str]], body: bytes) -> Response:
        """Every kept log line in the seed's wording, as a file attachment."""
        lines: list[str] = []
        while True:
            page = self._call("logs", offset=len(lines), limit=LOG_PAGE)
            lines.extend(page)
            if len(page) < LOG_PAGE:
                break
        text = "\n".join(lines) + ("\n" if lines else "")
        disposition = {"Content-Disposition": f'attachment; filename="{LOG_FILE_NAME}"'}
        return Response(200, text.encode("utf-8"), "text/plain; charset=utf-8", disposition)

    def metrics(self, query: dict[str, list[str]], body: bytes) -> Response:
        """Prometheus text format; with the balancer away, `zlb_up 0` (a scrape succeeds, the target is down)."""
        try:
            text = metrics.render(self._call("status"), self._call("servers"), self.latency())
        except control_client.BalancerUnreachable:
            text = metrics.render_unreachable(self.latency())
        return Response(200, text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
