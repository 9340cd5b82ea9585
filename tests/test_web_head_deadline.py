"""The request-head deadline (http_gateway/serve.py) against the uvicorn it subclasses.

DeadlineH11Protocol leans on uvicorn internals (H11Protocol, its `cycle`, `loop`, `transport`,
`on_response_complete`, `send_400_response`); pyproject pins uvicorn below its next minor release
for them. These tests are the ones that fail when an upgrade changes them: the names first, then
the behaviour, on a real uvicorn.Server in this process with the gateway's own configuration and
real sockets. tests/test_web_limits.py checks the same deadline against a real `zlb http`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from http_gateway.serve import KEEP_ALIVE_S, DeadlineH11Protocol, gateway_config, listen

DEADLINE_S = 0.3
SLOW_HANDLER_S = 3 * DEADLINE_S  # longer than the deadline: a request whose head came in time is never cut
WAIT_S = 10.0  # a reply that takes this long is not coming
CUT_WITHIN_S = KEEP_ALIVE_S - 1  # well past the deadline, and before uvicorn's own keep-alive timer could close
REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


def test_the_uvicorn_internals_the_deadline_uses_are_still_there():
    """H11Protocol, the hooks DeadlineH11Protocol overrides, and the state it reads, as uvicorn 0.55 has them."""
    assert issubclass(DeadlineH11Protocol, H11Protocol)
    for hook in ("connection_made", "connection_lost", "on_response_complete", "send_400_response"):
        assert callable(getattr(H11Protocol, hook, None)), f"uvicorn's H11Protocol has no {hook}()"
    assert list(inspect.signature(H11Protocol.send_400_response).parameters) == ["self", "msg"]
    init = inspect.getsource(H11Protocol.__init__)
    for state in ("self.cycle", "self.loop", "self.transport"):
        assert state in init, f"uvicorn's H11Protocol.__init__ no longer sets {state}"
    assert "self.send_400_response(" in inspect.getsource(H11Protocol.handle_events)
    assert "self.cycle = " in inspect.getsource(H11Protocol.handle_events)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: /slow answers after SLOW_HANDLER_S, anything else at once."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_HANDLER_S)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _with_gateway(check: Any) -> None:
    """Run `check(port)` against a uvicorn serving `_app` with the gateway's configuration and a short deadline."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(gateway_config(_app, quiet=True, header_timeout_s=DEADLINE_S))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        await check(port)
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the peer closes the connection within `seconds` (after whatever it sends first)."""
    try:
        await asyncio.wait_for(reader.read(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One response with a 2-byte body (the app's `ok`)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    return head + await asyncio.wait_for(reader.readexactly(2), WAIT_S)


def test_a_head_that_never_completes_is_cut_at_the_deadline_and_others_are_served():
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        prompt_reader, prompt_writer = await asyncio.open_connection("127.0.0.1", port)
        prompt_writer.write(REQUEST % b"")
        assert (await _answer(prompt_reader)).startswith(b"HTTP/1.1 200")
        assert await _closed_within(reader, CUT_WITHIN_S)
        writer.close()
        prompt_writer.close()

    asyncio.run(_with_gateway(check))


def test_a_keep_alive_connection_gets_the_deadline_again_for_its_next_head():
    """on_response_complete re-arms it: after one answered request, a slow second head is cut too."""

    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"")
        assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
        writer.write(b"GET / HTTP/1.1\r\n")
        assert await _closed_within(reader, CUT_WITHIN_S)
        writer.close()

    asyncio.run(_with_gateway(check))


def test_a_request_whose_head_came_in_time_is_answered_however_long_it_takes():
    """The deadline watches the cycle it was armed for: a new request head replaces it and disarms it."""

    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST % b"slow")
        assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
        writer.close()

    asyncio.run(_with_gateway(check))


def test_an_unparseable_request_gets_a_json_400_and_the_connection_closes():
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), WAIT_S)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
        assert json.loads(body)["error"].startswith("bad request: ")
        writer.close()

    asyncio.run(_with_gateway(check))
