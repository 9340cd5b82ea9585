"""The Starlette application: routes, auth, body limits, JSON errors, the dashboard and its event stream.

Handlers that talk to the balancer block on a zmq socket, so they run on
Starlette's worker threads (`run_in_threadpool`); each control call opens
its own socket, submissions go through the `Submitter`'s one thread, and the
event subscription lives on the event loop (`EventHub`). No zmq socket is
shared between threads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from http_gateway import control, metrics
from http_gateway.api import LOG_FILE_NAME, Gateway
from http_gateway.auth import Policy
from http_gateway.console import ConsoleQueries
from http_gateway.hub import EventHub
from http_gateway.openapi import spec
from http_gateway.validation import MAX_BODY_BYTES, HttpError

# A body that has not fully arrived within this long is answered 408.
BODY_TIMEOUT_S = 10.0
# An oversized body up to this size is read and discarded before the 413 goes out. Closing a
# connection with unread bytes in its receive queue makes the kernel send RST, which can destroy
# the 413 before the client reads it (urllib sends Connection: close, so uvicorn closes right after
# the response). Larger bodies are not worth reading: those clients may see a reset.
MAX_DRAIN_BYTES = 16 * 1024 * 1024
STATIC = Path(__file__).parent / "static"

Handler = Callable[[Request], Awaitable[Response]]
# Refusal for a Host that names something else: "misdirected", this is not the server it asked for.
MISDIRECTED = 421


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: `{"error": message}`."""
    return JSONResponse({"error": message}, status, headers=headers)


async def read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY_BYTES, within BODY_TIMEOUT_S; else 413 or 408.

    An oversized body is drained (up to MAX_DRAIN_BYTES, within the same deadline) so that the
    413 reaches the client instead of a connection reset.
    """
    too_large = HttpError(413, f"request body must be at most {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    declared_size = int(declared) if declared.isascii() and declared.isdigit() else 0
    if declared_size > MAX_DRAIN_BYTES:
        raise too_large

    async def collect() -> tuple[bytes, int]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
            elif size > MAX_DRAIN_BYTES:
                break  # not worth draining further; refuse now
        return b"".join(chunks), size

    try:
        body, size = await asyncio.wait_for(collect(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        if declared_size > MAX_BODY_BYTES:
            raise too_large from None
        raise HttpError(408, f"request body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    if size > MAX_BODY_BYTES:
        raise too_large
    return body


def json_content(headers: Any) -> str:
    """Why a body's declared type is not JSON ('' if it is, or if there is no body)."""
    declared = headers.get("content-type")
    if declared is None or declared.split(";", 1)[0].strip().lower() == "application/json":
        return ""
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return ""  # an empty POST (/server_down/1) carries no body to type
    return f"the body must be application/json, not {declared}"


class HostCheck:
    """ASGI middleware: every request (page, static file, read, change, event stream) must name this gateway.

    It wraps the whole app, routing and error pages included, so no path answers a foreign Host.
    """

    def __init__(self, app: Any, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
            one = hosts[0] if len(hosts) == 1 else None
            refusal = "more than one Host header" if len(hosts) > 1 else self.policy.host_refusal(one)
            if refusal:
                if scope["type"] == "websocket":  # closed before it is accepted: the client sees a 403
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await error(MISDIRECTED, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class App:
    """Builds the Starlette app around a `Gateway`, an auth `Policy` and an `EventHub`."""

    def __init__(self, gateway: Gateway, policy: Policy, hub: EventHub, registry: Any, cost_ms: float) -> None:
        self.gateway = gateway
        self.policy = policy
        self.hub = hub
        self.registry = registry
        self.cost_ms = cost_ms
        self.console = ConsoleQueries(gateway.link)

    def guarded(
        self, run: Callable[[Request, bytes], Any], changes: bool, finish: Callable[[Any], Any] | None = None
    ) -> Handler:
        """An endpoint: auth, body, the blocking call on a worker thread, errors as JSON.

        `finish`, when given, turns the call's result into the answer on the event loop, where the hub's
        memory may be read (a worker thread never touches it).
        """

        async def endpoint(request: Request) -> Response:
            if (changes or self.policy.protect_reads) and not self.policy.allows(request.headers.get("authorization")):
                return error(
                    401, "missing or wrong token: send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
                )
            if changes:
                for status, refusal in (
                    (403, self.policy.cross_site(request.headers)),
                    (415, json_content(request.headers)),
                ):
                    if refusal:
                        return error(status, refusal)
            try:
                body = await read_body(request) if changes else b""
                result = await run_in_threadpool(run, request, body)
                if finish is not None:
                    result = finish(result)
            except HttpError as exc:
                return error(exc.status, exc.message, exc.headers)
            except control.BalancerUnreachable as exc:
                return error(503, str(exc))
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def requests(self, request: Request, body: bytes) -> Response:
        """The seed's list; when more follow, a Link header names the next page (paging by key)."""
        page = self.gateway.requests(request.query_params)
        headers = {"Link": f'</requests?{page.next_query}>; rel="next"'} if page.next_query else None
        return JSONResponse(page.rows, headers=headers)

    def download(self, request: Request, body: bytes) -> Response:
        disposition = {"Content-Disposition": f'attachment; filename="{LOG_FILE_NAME}"'}
        return Response(self.gateway.logs_text(), media_type="text/plain; charset=utf-8", headers=disposition)

    def scrape(self, request: Request, body: bytes) -> Response:
        return Response(metrics.render(self.registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def events(self, request: Request) -> Response:
        """The dashboard's pushed updates: one shared subscription, this page's queue."""
        if self.policy.protect_reads and not self.policy.allows(
            request.headers.get("authorization"), request.query_params.get("token")
        ):
            return error(401, "missing or wrong token")
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(self.hub.stream(), media_type="text/event-stream", headers=headers)

    # ---- the console's own reads -------------------------------------------------------------------

    def console_info(self, request: Request) -> Response:
        """What the page needs to know before it asks anything: whether to show the token box, and which
        actions and windows exist. Open like the page itself: it says whether a token is needed, not which."""
        return JSONResponse(
            {
                "token_required": self.policy.token is not None,
                "reads_need_token": self.policy.protect_reads,
                # Retry and drop of a failed request come with the work-model issue; the page offers
                # each only when this says it exists.
                "actions": {"retry": False, "drop": False},
                "history": {"window_s": self.hub.history.window_s, "step_s": self.hub.history.step_s},
                "watching_since": self.hub.server_trails.started,
            }
        )

    def request_detail(self, request: Request, body: bytes) -> dict[str, Any]:
        return self.console.request_detail(request.query_params)

    def with_trail(self, detail: dict[str, Any]) -> dict[str, Any]:
        """A request's detail from the balancer, with the events and attempts this gateway saw."""
        trail = self.hub.trails.of(detail["client_id"], detail["request_id"])
        return {**detail, **trail, "watching_since": self.hub.server_trails.started}

    def history_csv(self, _points: Any) -> Response:
        headers = {"Content-Disposition": 'attachment; filename="zlb_history.csv"'}
        return Response(self.hub.history.csv_text(), media_type="text/csv; charset=utf-8", headers=headers)

    def history_json(self, _points: Any) -> dict[str, Any]:
        history = self.hub.history
        return {"window_s": history.window_s, "step_s": history.step_s, "points": history.points()}

    def routes(self) -> list[Route]:
        g = self.gateway
        read, change = (lambda f: self.guarded(f, False)), (lambda f: self.guarded(f, True))
        return [
            Route("/", lambda r: FileResponse(STATIC / "index.html")),
            Route("/openapi.json", lambda r: JSONResponse(spec())),
            Route("/healthz", lambda r: JSONResponse({"service": "zlb-http", "pid": os.getpid()})),
            Route("/events", self.events),
            Route("/configure", change(lambda r, b: g.configure(b)), methods=["POST"]),
            Route("/send_request", change(lambda r, b: g.send_request(b, self.cost_ms)), methods=["POST"]),
            Route("/requests", read(self.requests)),
            Route("/servers", read(lambda r, b: g.servers())),
            Route(
                "/server_down/{server_id}",
                change(lambda r, b: g.admin("down", r.path_params["server_id"])),
                methods=["POST"],
            ),
            Route(
                "/server_up/{server_id}",
                change(lambda r, b: g.admin("up", r.path_params["server_id"])),
                methods=["POST"],
            ),
            Route(
                "/server_drain/{server_id}",
                change(lambda r, b: g.admin("drain", r.path_params["server_id"])),
                methods=["POST"],
            ),
            Route("/cancel", change(lambda r, b: g.cancel(b)), methods=["POST"]),
            Route("/dead", read(lambda r, b: g.dead(r.query_params))),
            Route("/retry", change(lambda r, b: g.retry(b)), methods=["POST"]),
            Route("/logs", read(lambda r, b: g.logs(r.query_params))),
            Route("/logs/download", read(self.download)),
            Route("/metrics", read(self.scrape)),
            Route("/api/console", self.console_info),
            Route("/api/requests", read(lambda r, b: self.console.requests(r.query_params))),
            Route("/api/request", self.guarded(self.request_detail, False, self.with_trail)),
            # The history lives on the event loop: the worker thread does nothing, `finish` reads it there.
            Route("/api/history", self.guarded(lambda r, b: None, False, self.history_json)),
            Route("/api/history.csv", self.guarded(lambda r, b: None, False, self.history_csv)),
        ]

    def build(self) -> Starlette:
        """The ASGI application, with the hub running for its lifetime."""

        @asynccontextmanager
        async def lifespan(app: Starlette) -> Any:
            self.hub.start()
            yield
            await self.hub.stop()

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)  # registered for HTTPException only
            if exc.status_code == 405:
                allow = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",")))
                message = f"{request.method} is not allowed on {request.url.path}; use {allow}"
                return error(405, message, {"Allow": allow})
            if exc.status_code == 404:
                return error(404, f"no endpoint {request.url.path}")
            return error(exc.status_code, str(exc.detail))

        async def crash(request: Request, exc: Exception) -> Response:
            # A bug, not bad input: the client gets JSON, the operator the traceback on stderr.
            return error(500, f"internal error ({exc.__class__.__name__}); see the gateway's log")

        handlers = {HTTPException: http_error, Exception: crash}
        host_check = Middleware(HostCheck, policy=self.policy)
        app = Starlette(routes=self.routes(), exception_handlers=handlers, lifespan=lifespan, middleware=[host_check])
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        return app
