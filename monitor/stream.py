"""Subscribing to the balancer's events.

The balancer publishes `[topic, [ts, [event, ...]]]` batches; `EventStream`
turns them back into stamped events `[ts, kind, *args]` one by one.

The endpoint may list the members of an HA group, comma-separated: the SUB
connects to each and so hears whichever member leads (a standby publishes
nothing; a leader that steps down stops publishing before another can lead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import zmq

from wire import protocol as p
from wire.following import endpoint_list
from wire.protocol import ProtocolError
from wire.security import secure_client_socket


class EventStream:
    """A SUB socket on the balancer's events endpoint (or on each of an HA group's)."""

    def __init__(self, endpoint: str, topics: tuple[bytes, ...] = (b"zlb.",), context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.bad_messages = 0
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        secure_client_socket(self.sock)  # curve keys from ZLB_CURVE_SECRET / ZLB_SERVER_KEY when set
        for one in endpoint_list(endpoint):
            self.sock.connect(one)

    def close(self) -> None:
        """Close the subscription."""
        self.sock.close(linger=0)

    def poll(self, timeout_s: float) -> list[list[Any]]:
        """Stamped events that arrive within `timeout_s` (all that are ready)."""
        out: list[list[Any]] = []
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return out
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out.extend(self._unpack(frames))

    def _unpack(self, frames: list[bytes]) -> Iterator[list[Any]]:
        try:
            if len(frames) != 2:
                raise ProtocolError("bad_frames", "expected topic and body")
            ts, events = p.decode_events(frames[1])
            for event in events:
                yield [ts, *event]
        except (ProtocolError, ValueError, TypeError):
            self.bad_messages += 1
