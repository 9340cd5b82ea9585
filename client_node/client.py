"""The client library: submit requests to a balancer and collect results.

    with Client("tcp://127.0.0.1:5555", client_id=7) as client:
        pending = client.submit(b"work", priority=1)
        print(pending.result(timeout=5).body)

A Client owns one DEALER socket and is used from one thread (make one per
thread). Results are received whenever you wait on any of them, so waiting
on one request also collects the others that arrive meanwhile. Requests not
answered within `retry_s` are sent again with the same ids: the balancer
recognises them, so a request is never run twice because of a retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from balancer import protocol as p
from balancer.protocol import MsgType, ProtocolError

DEFAULT_PRIORITY = 5
DEFAULT_RETRY_S = 5.0
REJECTED = "rejected"


@dataclass(slots=True)
class Result:
    """What came back for one request."""

    client_id: int
    request_id: int
    priority: int
    status: str  # processed, failed or rejected
    server_id: int | None
    attempts: int
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status == p.PROCESSED

    def value(self) -> Any:
        """The body decoded as JSON when it is JSON, else as text."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return self.body.decode("utf-8", "replace")

    def as_dict(self) -> dict[str, Any]:
        """The JSON line `zlb client --json` prints."""
        return {
            "client_id": self.client_id,
            "request_id": self.request_id,
            "priority": self.priority,
            "status": self.status,
            "server_id": self.server_id,
            "attempts": self.attempts,
            "result": self.value(),
        }


@dataclass(slots=True)
class _Outstanding:
    priority: int
    payload: bytes
    sent_at: float


class Pending:
    """A submitted request; `result()` waits for it."""

    __slots__ = ("_client", "request_id")

    def __init__(self, client: Client, request_id: int) -> None:
        self._client = client
        self.request_id = request_id

    def done(self) -> bool:
        """True once the result has arrived (without waiting)."""
        self._client.pump(0)
        return self.request_id in self._client._results

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the result; raise TimeoutError after `timeout` seconds."""
        return self._client.wait(self.request_id, timeout)


class Client:
    """Submits requests over a DEALER socket and collects their results."""

    def __init__(
        self,
        frontend: str | None = None,
        client_id: int = 0,
        context: zmq.Context | None = None,
        retry_s: float | None = DEFAULT_RETRY_S,
    ) -> None:
        self.frontend = frontend or p.endpoint("frontend")
        self.client_id = client_id
        self.retry_s = retry_s
        self.resent = 0
        self.bad_messages = 0
        self._next_id = 1
        self._next_resend_scan = 0.0
        self._outstanding: dict[int, _Outstanding] = {}
        self._results: dict[int, Result] = {}
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.connect(self.frontend)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; unanswered requests stay with the balancer."""
        self.sock.close(linger=0)

    @property
    def outstanding(self) -> list[int]:
        """Ids of requests sent and not yet answered, in submission order."""
        return list(self._outstanding)

    def submit(
        self, payload: bytes | str = b"", priority: int = DEFAULT_PRIORITY, request_id: int | None = None
    ) -> Pending:
        """Send a request; lower priority numbers are served first."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if request_id is None:
            request_id = self._next_id
        self._next_id = max(self._next_id, request_id + 1)
        self._outstanding[request_id] = _Outstanding(priority, payload, time.monotonic())
        self._send(request_id, priority, payload)
        return Pending(self, request_id)

    def _send(self, request_id: int, priority: int, payload: bytes) -> None:
        header = p.encode(MsgType.SUBMIT, self.client_id, request_id, priority)
        self.sock.send_multipart([header, payload], copy=False)

    def wait(self, request_id: int, timeout: float | None = None) -> Result:
        """Wait for one request's result and hand it over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while request_id not in self._results:
            if request_id not in self._outstanding:
                raise KeyError(f"request {request_id} was never submitted or was already collected")
            self.pump(self._time_left(deadline))
        return self._results.pop(request_id)

    def as_completed(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as they arrive until nothing is outstanding."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._outstanding or self._results:
            while self._results:
                yield self._results.pop(next(iter(self._results)))
            if self._outstanding:
                self.pump(self._time_left(deadline))

    def _time_left(self, deadline: float | None) -> float:
        if deadline is None:
            return 1.0
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no result within the timeout for requests {self.outstanding[:20]}")
        return min(left, 1.0)

    def pump(self, timeout: float) -> int:
        """Receive results for up to `timeout` seconds; return how many arrived."""
        got = 0
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got += self._on_reply(frames)
        self._resend_overdue(time.monotonic())
        return got

    def _on_reply(self, frames: list[bytes]) -> int:
        try:
            msg_type, fields = p.decode(frames[0])
            body = p.split_body(msg_type, frames)
        except ProtocolError:
            self.bad_messages += 1
            return 0
        if msg_type is MsgType.RESULT:
            request_id, status, server_id, attempts = fields
        elif msg_type is MsgType.REJECTED:
            request_id, status, server_id, attempts, body = fields[0], REJECTED, None, 0, fields[1].encode()
        else:
            self.bad_messages += 1
            return 0
        sent = self._outstanding.pop(request_id, None)
        if sent is None:
            return 0  # a duplicate answer to a retry, or not ours
        self._results[request_id] = Result(
            self.client_id, request_id, sent.priority, status, server_id, attempts, bytes(body)
        )
        return 1

    def _resend_overdue(self, now: float) -> None:
        # Scanning every outstanding request is O(n): do it a few times per retry period only.
        if self.retry_s is None or now < self._next_resend_scan:
            return
        self._next_resend_scan = now + self.retry_s / 4
        for request_id, sent in self._outstanding.items():
            if now - sent.sent_at >= self.retry_s:
                sent.sent_at = now
                self.resent += 1
                self._send(request_id, sent.priority, sent.payload)


def json_payload(cost_ms: float = 0, payload: Any = None) -> bytes:
    """The payload the built-in `simulate` handler understands."""
    return json.dumps({"cost_ms": cost_ms, "payload": payload}).encode()
