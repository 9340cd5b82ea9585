"""The server-node process: a DEALER to the balancer's backend that runs work.

One thread owns the socket. Handlers run in a pool of `capacity` threads
(or inline for the instant `echo` handler); finished work comes back to the
loop through a queue plus a wake-up pipe that the poller watches, so no
socket is ever shared between threads.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from server_node import handlers
from server_node.liveness import PeerLiveness
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError
from wire.security import secure_client_socket

DEFAULT_GRACE_S = 10.0


@dataclass
class NodeConfig:
    """Everything `zlb server` can set."""

    backend: str = p.DEFAULT_BACKEND
    node_id: int | None = None
    capacity: int = 1
    handler: str = "simulate"
    heartbeat_ms: int = p.HEARTBEAT_INTERVAL_MS
    liveness: int = p.LIVENESS
    grace_s: float = DEFAULT_GRACE_S


class ServerNode:
    """A worker that connects, says hello, heartbeats and runs requests."""

    def __init__(self, config: NodeConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.handler = handlers.load(config.handler)
        self.inline = self.handler in handlers.INLINE
        self.node_id = config.node_id
        self.handled = 0
        self.in_flight = 0
        self.bad_messages = 0
        self.welcomed = False
        self._ctx = context or zmq.Context.instance()
        # A stable identity across reconnects lets the balancer recognise us.
        self.identity = f"node-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode()
        self._pool = None if self.inline else ThreadPoolExecutor(config.capacity, thread_name_prefix="zlb-handler")
        self._done: queue.SimpleQueue[tuple[int, bool, bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._leaving_since: float | None = None
        self.sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._redial_at = 0.0
        self.live = PeerLiveness.start(config.heartbeat_ms / 1000, config.liveness, time.monotonic())

    # ---- connection -----------------------------------------------------

    def _connect(self) -> None:
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        secure_client_socket(self.sock)
        self.sock.connect(self.config.backend)
        self._poller.register(self.sock, zmq.POLLIN)
        self.welcomed = False
        self._hello()

    def _disconnect(self) -> None:
        self._poller.unregister(self.sock)
        self.sock.close(linger=0)
        self.sock = None

    def _hello(self) -> None:
        self._send(p.encode(MsgType.HELLO, self.node_id, self.config.capacity, os.getpid(), socket.gethostname()))

    def _send(self, *frames: Any) -> None:
        if self.sock is None:
            return  # between connections: HELLO follows, and the balancer re-dispatches lost work
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # not connected yet: the same applies

    # ---- loop -----------------------------------------------------------

    def stop(self, *_args: Any) -> None:
        """Finish in-flight work (up to the grace period), say goodbye, leave."""
        self._stopping = True

    def run(self) -> None:
        """Serve until stopped."""
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._connect()
        while True:
            now = time.monotonic()
            if self.sock is None and now >= self._redial_at:
                self._connect()
            deadline = self._redial_at if self.sock is None else self.live.next_deadline()
            timeout_ms = max(0, int((deadline - now) * 1000) + 1)
            ready = dict(self._poller.poll(min(timeout_ms, 100) if self._stopping else timeout_ms))
            now = time.monotonic()
            if self.sock is not None and self.sock in ready:
                self._drain_socket(now)
            if self._wake_r in ready:
                self._drain_done()
            if self._stopping and self._leave(now):
                return
            if self.sock is not None:
                self._keep_alive(now)

    def _keep_alive(self, now: float) -> None:
        if self.live.lost(now):
            # The balancer is gone or restarted: a fresh socket after a back-off.
            self._disconnect()
            self._redial_at = now + self.live.reconnected(now)
        elif self.live.heartbeat_due(now):
            self._send(p.encode(MsgType.HEARTBEAT, self.in_flight, self.handled))

    def _leave(self, now: float) -> bool:
        """Drive a graceful stop; True once it is time to exit."""
        if self._leaving_since is None:
            self._leaving_since = now
            self._send(p.encode(MsgType.LEAVING))
        if self.in_flight and now - self._leaving_since < self.config.grace_s:
            return False
        self._send(p.encode(MsgType.BYE))
        return True

    def close(self) -> None:
        """Release the socket, the pool and the wake-up pipe."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.sock is not None:
            self.sock.close(linger=200)  # let BYE and the last results leave
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- messages from the balancer -------------------------------------

    def _drain_socket(self, now: float) -> None:
        sock = self.sock
        for _ in range(256):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.live.heard(now)
            try:
                msg_type, fields = p.decode(frames[0])
                body = p.split_body(msg_type, frames)
            except ProtocolError:
                self.bad_messages += 1
                continue
            if msg_type is MsgType.WORK:
                self._on_work(fields, body)
            elif msg_type is MsgType.WELCOME:
                self.node_id = fields[0]
                self.welcomed = True
            elif msg_type is MsgType.RECONNECT:
                if fields[0] == p.REASON_STOPPING:
                    self._on_shutdown(now)
                    return
                self._hello()

    def _on_shutdown(self, now: float) -> None:
        """The balancer is stopping: drop this connection and dial again after one interval.

        Work still running keeps running; its results go to whichever balancer
        answers next, which drops them as late if it re-dispatched that work.
        """
        self._disconnect()
        self.live.backoff_s = 0.0
        self._redial_at = now + self.live.reconnected(now)

    def _on_work(self, fields: list[Any], payload: bytes) -> None:
        ticket, client_id, request_id, priority, attempt = fields
        work = handlers.Work(client_id, request_id, priority, attempt, self.node_id, payload)
        self.in_flight += 1
        if self._pool is None:
            ok, result = handlers.run(self.handler, work)
            self._finished(ticket, ok, result)
        else:
            self._pool.submit(self._run_in_pool, ticket, work)

    def _run_in_pool(self, ticket: int, work: handlers.Work) -> None:
        ok, result = handlers.run(self.handler, work)
        self._done.put((ticket, ok, result))
        os.write(self._wake_w, b"x")

    def _drain_done(self) -> None:
        try:
            os.read(self._wake_r, 65536)
        except BlockingIOError:
            pass
        while True:
            try:
                ticket, ok, result = self._done.get_nowait()
            except queue.Empty:
                return
            self._finished(ticket, ok, result)

    def _finished(self, ticket: int, ok: bool, result: bytes) -> None:
        self.in_flight -= 1
        self.handled += 1
        self._send(p.encode(MsgType.DONE, ticket, ok), result)


def run_node(config: NodeConfig) -> None:
    """Run a server node in this process until SIGINT or SIGTERM."""
    node = ServerNode(config)
    signal.signal(signal.SIGTERM, node.stop)
    signal.signal(signal.SIGINT, node.stop)
    try:
        node.run()
    finally:
        node.close()
