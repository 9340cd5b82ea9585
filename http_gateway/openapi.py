"""The OpenAPI 3.1 description served at /openapi.json: every seed endpoint and the gateway's own."""

from __future__ import annotations

from typing import Any

from http_gateway.api import LOG_PAGE, MAX_COST_MS, MAX_REQUEST_OFFSET
from http_gateway.console import FAILURES, MAX_PAGE_ROWS, PAGE_ROWS
from http_gateway.history import WINDOW_S
from http_gateway.processes import JOIN_TIMEOUT_S, MAX_CLIENTS, MAX_REQUESTS_PER_CLIENT, MAX_SERVERS
from http_gateway.validation import MAX_BODY_BYTES, MAX_WIRE_INT
from wire.limits import MAX_DEADLINE_MS
from wire.protocol import DEFAULT_SERVICE, STATUSES
from wire.statuses import FILTER_STATUSES

ERROR = {"$ref": "#/components/schemas/Error"}
MESSAGE = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
WIRE_ID = {"type": "integer", "minimum": 0, "maximum": MAX_WIRE_INT}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], errors: tuple[int, ...] = (400, 503), **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **ok}}
    for code in errors:
        responses[str(code)] = {"description": "error", **_json(ERROR)}
    return {"summary": summary, "responses": responses, **extra}


def _post(summary: str, ok: dict[str, Any], errors: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    """A changing call: needs the bearer token when one is set."""
    op = _op(summary, ok, (*errors, 401), **extra)
    op["security"] = [{"bearer": []}]
    return op


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, **_json(schema)}


def _server_id_path(verb: str) -> dict[str, Any]:
    param = {"name": "server_id", "in": "path", "required": True, "schema": WIRE_ID}
    return {"post": _post(f"Mark a server {verb}", _json(MESSAGE), (400, 404, 409, 503), parameters=[param])}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def console_paths() -> dict[str, Any]:
    """The console's own reads (http_gateway/console.py, web.py)."""
    page = {"type": "object", "properties": {"requests": {"type": "array", "items": REQUEST_ROW},
            "next": {"type": ["string", "null"]}, "limit": COUNT}}  # fmt: skip
    filters = [
        _query("status", {"type": "string", "enum": [*FILTER_STATUSES, FAILURES]}, "one status, or `failures`"),
        _query("client", WIRE_ID, "one client's requests"),
        _query("priority", {"type": "integer"}, "one priority"),
        _query("id", WIRE_ID, "the request with this id (under every client, or under ?client=)"),
        _query("limit", {**COUNT, "minimum": 1, "maximum": MAX_PAGE_ROWS}, f"rows per page (default {PAGE_ROWS})"),
        _query("after", {"type": "string"}, "the `next` of the previous page"),
    ]
    ids = [_query("client", WIRE_ID, "the client id"), _query("id", WIRE_ID, "the request id")]
    return {
        "/api/console": {
            "get": _op(
                "What the page needs first: whether a token is needed, actions, windows", _json({"type": "object"}), ()
            )
        },
        "/api/requests": {
            "get": _op("One page of requests, filtered and paged by the balancer", _json(page), parameters=filters)
        },
        "/api/request": {
            "get": _op(
                "One request: payload or result preview, attempts with nodes and times, events",
                _json({"type": "object"}),
                (400, 404, 503),
                parameters=ids,
            )
        },
        "/api/history": {
            "get": _op(
                f"The last {WINDOW_S / 60:g} minutes: rate, queue, latency, nodes", _json({"type": "object"}), ()
            )
        },
        "/api/history.csv": {"get": _op("The same points as CSV", {"content": {"text/csv": {}}}, ())},
    }


COUNT = {"type": "integer", "minimum": 0}
STATUS = {"type": "string", "enum": list(STATUSES)}
SERVICE = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$", "default": DEFAULT_SERVICE}
REQUEST_ROW = {
    "type": "object",
    "properties": dict(
        client_id=WIRE_ID, request_id=WIRE_ID, priority={"type": "integer"}, status=STATUS,
        server_id={"type": ["integer", "null"]}, attempts=COUNT, service=SERVICE,
    ),
}  # fmt: skip
SERVER_ROW = {
    "type": "object",
    "properties": {
        "server_id": COUNT,
        "handled_requests": COUNT,
        "active": {"type": "boolean"},
        "state": {"type": "string"},
        "in_flight": COUNT,
        "capacity": COUNT,
        "last_heartbeat_ms_ago": COUNT,
        "pid": {"type": ["integer", "null"]},
        "host": {"type": ["string", "null"]},
    },
}


def spec() -> dict[str, Any]:
    """The whole document."""
    configure_body = _body(
        {
            "num_servers": {**COUNT, "maximum": MAX_SERVERS},
            "num_clients": {**COUNT, "maximum": MAX_CLIENTS},
            "requests_per_client": {**COUNT, "maximum": MAX_REQUESTS_PER_CLIENT},
        },
        ["num_servers", "num_clients", "requests_per_client"],
    )
    send_body = _body(
        {
            "client_id": WIRE_ID,
            "request_id": WIRE_ID,
            "priority": {"type": "integer", "minimum": -MAX_WIRE_INT, "maximum": MAX_WIRE_INT, "default": 5},
            "cost_ms": {"type": "number", "minimum": 0, "maximum": MAX_COST_MS},
            "payload": {"description": "any JSON, handed to the server's handler"},
            "service": SERVICE,
            "deadline_ms": {**COUNT, "maximum": MAX_DEADLINE_MS, "description": "end it expired if not done by then"},
        },
        ["client_id", "request_id"],
    )
    ids_body = _body({"client_id": WIRE_ID, "request_id": WIRE_ID}, ["client_id", "request_id"])
    retry_body = _body({"client_id": WIRE_ID, "request_id": WIRE_ID, "all": {"type": "boolean"}}, [])
    request_filters = [
        _query("status", REQUEST_ROW["properties"]["status"], "only requests in this status"),
        _query("client", WIRE_ID, "only this client's requests"),
        _query(
            "after",
            {"type": "string", "pattern": "^[0-9a-f]{1,20}-[0-9a-f]{1,20}$"},
            'go on where a page stopped: the key in its Link: rel="next" header',
        ),
        _query("offset", {**COUNT, "maximum": MAX_REQUEST_OFFSET}, "skip this many (page on with after)"),
        _query("limit", COUNT, "at most this many (default 1000; 0 for all)"),
    ]
    paths = {
        "/configure": {
            "post": _post(
                "Start servers and clients; answers once the servers have joined"
                f" (at most {JOIN_TIMEOUT_S:g} s + 0.5 s per server)",
                _json(
                    {"type": "object", "properties": {k: COUNT for k in ("servers", "clients", "requests_per_client")}}
                ),
                (400, 409, 413, 503, 504),
                requestBody=configure_body,
            )
        },
        "/send_request": {
            "post": _post("Queue one request", _json(MESSAGE), (400, 409, 413, 503), requestBody=send_body)
        },
        "/requests": {
            "get": _op(
                'All requests in arrival order; a Link: rel="next" header names the next page when more follow',
                _json({"type": "array", "items": REQUEST_ROW}),
                parameters=request_filters,
            )
        },
        "/servers": {"get": _op("Every server with its load", _json({"type": "array", "items": SERVER_ROW}))},
        "/server_down/{server_id}": _server_id_path("down"),
        "/server_up/{server_id}": _server_id_path("up"),
        "/server_drain/{server_id}": _server_id_path("draining (finish in-flight work, take no more)"),
        "/logs": {
            "get": _op(
                f"The newest log lines (at most {LOG_PAGE})",
                _json({"type": "object", "properties": {"logs": {"type": "array", "items": {"type": "string"}}}}),
                parameters=[_query("limit", {**COUNT, "maximum": LOG_PAGE}, "at most this many lines")],
            )
        },
        "/logs/download": {
            "get": _op("Every kept log line as load_balancer_logs.txt", {"content": {"text/plain": {}}})
        },
        "/cancel": {
            "post": _post(
                "Cancel a request: waiting, it never runs; running, its node is told to stop; finished, its result",
                _json({"type": "object"}),
                (400, 404, 413, 503),
                requestBody=ids_body,
            )
        },
        "/dead": {
            "get": _op(
                "The dead letters (requests that failed every attempt) and what their bounds dropped",
                _json({"type": "object"}),
                parameters=[_query("limit", {**COUNT, "maximum": LOG_PAGE}, "the newest this many")],
            )
        },
        "/retry": {
            "post": _post(
                "Queue a dead letter again (client_id and request_id), or every one (all: true)",
                _json({"type": "object"}),
                (400, 413, 503),
                requestBody=retry_body,
            )
        },
        "/metrics": {"get": _op("Prometheus text format", {"content": {"text/plain": {}}}, ())},
        "/events": {
            "get": _op(
                "Server-sent events: `state` snapshots and `log` lines", {"content": {"text/event-stream": {}}}, ()
            )
        },
        "/healthz": {"get": _op("This gateway is serving (its pid)", _json({"type": "object"}), ())},
        **console_paths(),
        "/": {"get": _op("The live dashboard page", {"content": {"text/html": {}}}, ())},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "zlb http",
            "version": "1",
            "description": f"The seed's REST API over a real zlb balancer. Bodies at most {MAX_BODY_BYTES} bytes.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
