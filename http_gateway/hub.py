"""One subscription to the balancer's events, fanned out to every browser.

A single task on the server's event loop owns the SUB socket. Each batch
feeds the latency histograms and the log tail; node and system events (at
once) and the periodic stats ticks (at most once per REFRESH_S) make it fetch
one `snapshot` from the balancer, which goes to every connected page as a
server-sent event. A hundred open dashboards cost one subscription and one
snapshot per second, not a hundred polling loops. A page too slow to take its
events is dropped (it reconnects by itself and gets a fresh state).
Given an HA group's members (`--events a,b`), the SUB connects to each and
hears whichever leads; the snapshot's control call follows the leader too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
import zmq
import zmq.asyncio

from http_gateway.control import admin_socket
from http_gateway.history import History
from http_gateway.metrics import LatencyTracker
from http_gateway.trails import RequestTrails, ServerTrails
from wire import events as ev
from wire import protocol as p
from wire.following import endpoint_list
from wire.protocol import ProtocolError

# Snapshots on stats ticks come at most this often; node and system events refresh at once.
REFRESH_S = 1.0
# With no event at all (the balancer away), the state is still refreshed this often.
IDLE_REFRESH_S = 2.0
# Events a page may fall behind by before it is dropped.
SUBSCRIBER_QUEUE = 256
LOG_TAIL = 100
KEEPALIVE_S = 15.0


def sse(event: str, data: Any) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class EventHub:
    """The shared subscription and the set of browser queues."""

    def __init__(
        self, endpoint: str, tracker: LatencyTracker, snapshot: Callable[[], dict[str, Any]], tick: Callable[[], Any]
    ) -> None:
        self.endpoint = endpoint
        self.tracker = tracker
        self._snapshot = snapshot
        self._tick = tick
        self.state: dict[str, Any] = {"up": False, "error": "starting"}
        self.log_tail: deque[dict[str, Any]] = deque(maxlen=LOG_TAIL)
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        # What the console shows beyond the balancer's own state (http_gateway/trails.py, history.py).
        self.trails = RequestTrails()
        self.server_trails = ServerTrails(time.time())
        self.history = History()

    def start(self) -> None:
        """Start the subscription task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the task and end every page's stream."""
        for queue in list(self.subscribers):
            queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        ctx = zmq.asyncio.Context.instance()
        sock = admin_socket(ctx, zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"zlb.")
        for endpoint in endpoint_list(self.endpoint):  # an HA group's members: whichever leads publishes
            sock.connect(endpoint)
        last_refresh = 0.0
        try:
            await self._refresh()
            while True:
                urgent, batch = await self._receive(sock)
                now = time.monotonic()
                if urgent or now - last_refresh >= (REFRESH_S if batch is not None else IDLE_REFRESH_S):
                    last_refresh = now
                    await self._refresh()
        finally:
            sock.close(linger=0)

    async def _receive(self, sock: zmq.asyncio.Socket) -> tuple[bool, list[list[Any]] | None]:
        """Wait for one event batch (None after a quiet second); True when it should refresh at once."""
        if not await sock.poll(1000, zmq.POLLIN):
            return False, None
        frames = await sock.recv_multipart()
        try:
            ts, events = p.decode_events(frames[-1])
        except (ProtocolError, ValueError, TypeError, IndexError):
            return False, []
        stamped = [[ts, *e] for e in events if isinstance(e, (list, tuple)) and e]
        self.tracker.feed(stamped)
        self.trails.feed(stamped)
        self.server_trails.feed(stamped)
        lines = [
            {"ts": e[0], "kind": e[1], "level": ev.level(e[1]), "message": ev.message(e)}
            for e in stamped
            if e[1] != ev.STATS
        ]
        if lines:
            self.log_tail.extend(lines)
            self.broadcast(sse("log", lines))
        urgent = any(not str(e[1]).startswith(("request.", "stats.")) for e in stamped)
        return urgent, stamped

    async def _refresh(self) -> None:
        snap = await anyio.to_thread.run_sync(self._snapshot)
        now = time.time()
        snap["latency"] = self.tracker.percentiles(now)
        if snap.get("up"):
            snap["servers"] = self.server_trails.annotate(snap["servers"], now)
        self.state = snap
        self._tick()
        self.broadcast(sse("state", snap))
        point = self.history.sample(now, snap)
        if point is not None:
            self.broadcast(sse("history", point))

    def broadcast(self, message: bytes) -> None:
        """Queue a message for every page; drop pages that fell too far behind."""
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[bytes]:
        """One page's events: the current state and log tail first, then whatever is pushed."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.subscribers.add(queue)
        try:
            yield b"retry: 2000\n\n" + sse("state", self.state) + sse("log", list(self.log_tail))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    message = b": keepalive\n\n"  # proxies close idle streams
                if message is None:
                    return
                yield message
        finally:
            self.subscribers.discard(queue)
