"""The client library: submit requests to a balancer and collect results.

    with Client("tcp://127.0.0.1:5555", client_id=7) as client:
        pending = client.submit(b"work", priority=1)
        print(pending.result(timeout=5).body)

A Client owns one DEALER socket and is used from one thread (make one per
thread). Results are received whenever you wait on any of them, so waiting
on one request also collects the others that arrive meanwhile.

Lazy Pirate retries: a request not answered within `retry_s` is sent again
with the same ids, then again after a doubling delay (capped at
RETRY_BACKOFF_FACTOR_MAX times retry_s). The balancer recognises the ids, so a
retry never runs a finished request twice; it answers with the one result.
The socket reconnects by itself when a balancer restarts, and the retries
carry every unanswered request to the new one; the notice of a stopping
balancer (REJECTED without a request id) resets the back-off so they go out
soon after it returns.
The DEALER identity is stable for the life of a Client, so a balancer that
restarts from its journal can answer restored requests without a retry.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from wire import protocol as p
from wire.protocol import MsgType, ProtocolError
from wire.security import secure_client_socket

DEFAULT_PRIORITY = 5
DEFAULT_RETRY_S = 5.0
# Retries back off by doubling up to this multiple of retry_s.
RETRY_BACKOFF_FACTOR_MAX = 4
REJECTED = "rejected"
# Answers remembered to tell a harmless repeat from a conflicting second result.
_ANSWERED_KEEP = 100_000


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
    due_at: float  # when to re-send if still unanswered
    delay_s: float  # the current back-off


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
        self.retry_max_s = None if retry_s is None else retry_s * RETRY_BACKOFF_FACTOR_MAX
        self.resent = 0
        self.bad_messages = 0
        self.repeated_answers = 0  # a second, identical answer (a retry crossed the result): harmless
        self.conflicting_answers = 0  # a second answer that differs: would break exactly-once; should stay 0
        self.shutdown_notices = 0
        self.unsent = 0  # sends that found no connection; the retries carry them
        self._answered: dict[int, tuple[str, int | None, int]] = {}
        self._next_id = 1
        self._next_resend_scan = 0.0
        self._outstanding: dict[int, _Outstanding] = {}
        self._results: dict[int, Result] = {}
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.setsockopt(zmq.IDENTITY, f"client-{client_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode())
        secure_client_socket(self.sock)
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
        retry = self.retry_s or 0.0
        self._outstanding[request_id] = _Outstanding(priority, payload, time.monotonic() + retry, retry)
        self._send(request_id, priority, payload)
        return Pending(self, request_id)

    def _send(self, request_id: int, priority: int, payload: bytes) -> None:
        header = p.encode(MsgType.SUBMIT, self.client_id, request_id, priority)
        if self.retry_s is None:
            self.sock.send_multipart([header, payload], copy=False)
            return
        try:
            # Never block: with no connection (balancer down, or curve refused us) the retries send it later.
            self.sock.send_multipart([header, payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.unsent += 1

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
        elif msg_type is MsgType.REJECTED and fields[0] is None:
            # Not about one request: a stopping balancer (or a message it could not read).
            self._on_shutdown()
            return 0
        elif msg_type is MsgType.REJECTED:
            request_id, status, server_id, attempts, body = fields[0], REJECTED, None, 0, fields[1].encode()
        else:
            self.bad_messages += 1
            return 0
        body = bytes(body)
        sent = self._outstanding.pop(request_id, None)
        if sent is None:
            self._repeated(request_id, status, server_id, body)
            return 0
        answered = self._answered
        if len(answered) >= _ANSWERED_KEEP:
            answered.clear()  # a bounded memory: the check is best effort for very long runs
        answered[request_id] = (status, server_id, hash(body))
        self._results[request_id] = Result(self.client_id, request_id, sent.priority, status, server_id, attempts, body)
        return 1

    def _repeated(self, request_id: int, status: str, server_id: int | None, body: bytes) -> None:
        """A second answer for a request: fine if it is the same result, a conflict otherwise."""
        first = self._answered.get(request_id)
        if first is None:
            return  # not ours, or too old to check
        if first == (status, server_id, hash(body)):
            self.repeated_answers += 1
        else:
            self.conflicting_answers += 1

    def _on_shutdown(self) -> None:
        """The balancer is stopping (or refused a message): re-send soon, from the first back-off step."""
        self.shutdown_notices += 1
        if self.retry_s is None:
            return
        due = time.monotonic() + self.retry_s
        for sent in self._outstanding.values():
            sent.due_at = due
            sent.delay_s = self.retry_s

    def _resend_overdue(self, now: float) -> None:
        # Scanning every outstanding request is O(n): do it a few times per retry period only.
        if self.retry_s is None or now < self._next_resend_scan:
            return
        self._next_resend_scan = now + self.retry_s / 4
        cap = self.retry_max_s
        for request_id, sent in self._outstanding.items():
            if now >= sent.due_at:
                sent.delay_s = min(cap, sent.delay_s * 2)
                sent.due_at = now + sent.delay_s
                self.resent += 1
                self._send(request_id, sent.priority, sent.payload)


def json_payload(cost_ms: float = 0, payload: Any = None) -> bytes:
    """The payload the built-in `simulate` handler understands."""
    return json.dumps({"cost_ms": cost_ms, "payload": payload}).encode()
