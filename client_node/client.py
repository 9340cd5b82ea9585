"""The client library: submit requests to a balancer and collect results.

    with Client("tcp://127.0.0.1:5555", client_id=7) as client:
        pending = client.submit(b"work", priority=1)
        print(pending.result(timeout=5).body)

A Client owns one DEALER socket and is used from one thread (make one per
thread). Results are received whenever you wait on any of them, so waiting
on one request also collects the others that arrive meanwhile.

Lazy Pirate retries (client_node/retries.py): a request not answered within
`retry_s` is sent again with the same ids, then again after a doubling
delay (capped at RETRY_BACKOFF_FACTOR_MAX times retry_s). The balancer
recognises the ids, so a retry never runs a finished request twice; it
answers with the one result.
The socket reconnects by itself when a balancer restarts, and the retries
carry every unanswered request to the new one; the notice of a stopping
balancer (REJECTED without a request id) resets the back-off so they go out
soon after it returns.

Credit (client_node/window.py): the balancer grants each connection a window
(CLIENT_WELCOME, CREDIT) and the Client keeps at most that much outstanding;
the rest waits in a local queue, bounded (`queue_max`, `queue_max_bytes`), and
goes as answers free room. On a full queue submit() and submit_many() block,
receiving meanwhile, or raise QueueFull after `queue_timeout_s`. A REJECTED
whose reason starts with REASON_BUSY (rare now: the balancer's budget is full
after all) is back-pressure, not a verdict: the request waits again at the head
of the queue for credit, never for a timer, and `on_busy` (if set) is told the
reason so a command line can print it. Only requests sent and unanswered within
`retry_s` are re-sent (Lazy Pirate, above): time in the local queue is not counted.
The DEALER identity is stable for the life of a Client, so a balancer that
restarts from its journal can answer restored requests without a retry.

HA (wire/following.py): `frontend` may list several balancers, comma-separated.
The Client talks to one; a standby answers REDIRECT and the Client moves to
the leader it names, re-sending everything unanswered at once; with requests
outstanding it pings every FOLLOW_PING_S and, hearing nothing for
FOLLOW_SILENCE_S, moves to the next endpoint. Answers from an older epoch than
the newest seen are dropped (`stale_epoch`); the first message of a newer one,
or the first of a leader after a standby said none leads, re-sends everything
unanswered at once, as a move does.

A client id is a name: any number of processes may use one at once, and each
Client gets the results of what it submitted (its DEALER identity holds a random
64-bit incarnation). CLIENT_HELLO is answered with CLIENT_WELCOME; with requests
outstanding the client pings at a third of its `lease_s`; close() says
CLIENT_BYE. Request ids are idempotency keys within a client id, whoever sends
them: a
request id that was already finished is answered with the stored result,
`Result.replay` set, or, once the balancer no longer keeps that result
(`zlb balancer --keep-finished-s`), with status `not_kept` ("processed earlier;
the result is no longer kept", `Result.not_kept`); the same id with another
payload is rejected.

Work model (protocol version 5): `submit(..., service="resize")` runs the
request only on nodes that offer that service; `deadline=2.5` ends it
`expired` if it is not finished 2.5 s after the balancer took it (re-sends
carry what is left of it); `Pending.cancel()` asks the balancer to cancel it,
answered by its Result (status `cancelled`, or the result it already had).
A request that failed every attempt comes back with status `dead`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import xxhash
import zmq

from client_node.result import Pending, Result
from client_node.retries import RETRY_BACKOFF_FACTOR_MAX, Retries
from client_node.window import (
    CREDIT_ASK_S,
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_REQUESTS,
    QUEUED,
    SENT,
    Outstanding,
    QueueFull,
    Window,
)
from wire import endpoints, limits
from wire import protocol as p
from wire.batching import batches, payload_size
from wire.following import Following
from wire.protocol import MsgType, ProtocolError
from wire.security import secure_client_socket
from wire.sockets import DRAIN_BATCH, SLEPT_S, Waiter, received, send_frames

__all__ = ["BalancerUnreachable", "Client", "ClientIdInUse", "Pending", "QueueFull", "Result", "json_payload"]

DEFAULT_PRIORITY = 5
DEFAULT_RETRY_S = 5.0
REJECTED = "rejected"
# Answers remembered to tell a harmless repeat from a conflicting second result.
_ANSWERED_KEEP = 100_000
# Each remembered answer's body as a digest: XXH3, as the balancer's (balancer/kept.py). Python's hash() of a
# 256 KiB result took about 45 us, a tenth of what a Client spends per such request; XXH3 takes 5.
_digest = xxhash.xxh3_64_intdigest
# Until the balancer says how long a session's lease is, assume this.
DEFAULT_LEASE_S = 10.0
# How long close() lets CLIENT_BYE leave before dropping the socket.
BYE_LINGER_MS = 100
# With several balancers to follow: ping this often while requests are outstanding (each ping is
# answered), and move to the next endpoint after this long without a word from the one we talk to.
FOLLOW_PING_S = 0.5
FOLLOW_SILENCE_S = 2.0
# While requests wait in the local queue for room, a submit looks for arrived answers (that free room) every
# this many calls, and sends what fits: a receive that finds nothing costs microseconds, a look per call would
# add up, and a batch's worth of submissions goes as one message.
LOOK_EVERY = limits.BATCH_ITEMS
# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_SUBMIT, _SUBMIT_BATCH, _RESULT_BATCH = MsgType.SUBMIT, MsgType.SUBMIT_BATCH, MsgType.RESULT_BATCH


class ClientIdInUse(Exception):
    """The balancer refused this client id (REFUSED). Kept for compatibility: balancers before issue 22 refused
    a client id another live process held; since then a client id is a name and none is refused."""


class BalancerUnreachable(Exception):
    """No answer from the balancer within the connect timeout."""


class Client(Retries):
    """Submits requests over a DEALER socket and collects their results."""

    def __init__(
        self,
        frontend: str | None = None,
        client_id: int = 0,
        context: zmq.Context | None = None,
        retry_s: float | None = DEFAULT_RETRY_S,
        connect_timeout_s: float | None = None,
        queue_max: int = DEFAULT_QUEUE_REQUESTS,
        queue_max_bytes: int = DEFAULT_QUEUE_BYTES,
        queue_timeout_s: float | None = None,
    ) -> None:
        self.following = Following(frontend or endpoints.endpoint("frontend"))
        self.frontend = self.following.current
        if not 0 <= client_id < 2**64:
            raise ValueError(f"client id {client_id} is out of the wire's range (0 to 2**64 - 1)")
        self.client_id = client_id
        self.incarnation = secrets.randbits(64)
        self.retry_s = retry_s
        # Raise BalancerUnreachable when nothing at all is heard within this long (None: wait on).
        self.connect_timeout_s = connect_timeout_s
        self.heard = False
        self.lease_s = DEFAULT_LEASE_S
        self.max_payload = limits.DEFAULT_MAX_MESSAGE_BYTES  # the balancer's limit, from CLIENT_WELCOME
        self.refused: str | None = None
        self.retry_max_s = None if retry_s is None else retry_s * RETRY_BACKOFF_FACTOR_MAX
        self.resent = 0
        self.bad_messages = 0
        self.repeated_answers = 0  # a second, identical answer (a retry crossed the result): harmless
        self.conflicting_answers = 0  # a second answer that differs: would break exactly-once; should stay 0
        self.shutdown_notices = 0
        self.busy_notices = 0  # submits the balancer answered busy; each waits again for credit
        self.on_busy: Callable[[int, str], None] | None = None  # told (request_id, reason) of each
        self.credit_updates = 0  # windows the balancer granted (CLIENT_WELCOME, CREDIT)
        # What may be out, what is, and the local queue of the rest (client_node/window.py).
        self._window = Window(queue_max, queue_max_bytes)
        # How long a submit may wait for room in a full local queue (None: as long as it takes).
        self.queue_timeout_s = queue_timeout_s
        self._asked_at = 0.0  # the last CLIENT_PING asking for credit
        self._asked_for = -1  # the request it asked room for (Window.blocked_id)
        self._since_look = 0
        self._answered: dict[int, tuple[str, int | None, int]] = {}
        self._next_id = 1
        self._next_resend_scan = 0.0
        self._outstanding: dict[int, Outstanding] = {}
        self._unsent: list[tuple[int, int, bytes]] = []  # checked submissions not yet handed to ZeroMQ
        # Those with a service or a deadline, by (service, deadline as monotonic time): one batch tail each.
        self._unsent_shaped: dict[tuple[str | None, float | None], list[tuple[int, int, bytes]]] = {}
        self._results: dict[int, Result] = {}
        self._reused: set[int] = set()  # ids submitted again after this client had their answer
        self._started = self._last_sent = self._last_heard = time.monotonic()
        self._moved_at = 0.0
        self._leaderless = False  # a standby said no member leads; the next word of a leader re-sends all
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.setsockopt(zmq.IDENTITY, f"client-{client_id}-{os.getpid()}-{self.incarnation:016x}".encode())
        secure_client_socket(self.sock)
        self.sock.connect(self.frontend)
        self._waiter = Waiter(self.sock)  # a blocking receive, not a poll (wire/sockets.py)
        self._send_session(MsgType.CLIENT_HELLO, os.getpid(), socket.gethostname())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket: requests sent and unanswered stay with the balancer; those still in the local
        queue (beyond the window, never sent) are dropped."""
        if self.heard and self.refused is None:
            self._send_session(MsgType.CLIENT_BYE)
            self.sock.close(linger=BYE_LINGER_MS)
        else:
            self.sock.close(linger=0)

    @property
    def stale_epoch(self) -> int:
        """Answers dropped because they came from an older leadership than one already heard."""
        return self.following.stale

    def _move(self, endpoint: str, now: float) -> None:
        """Talk to `endpoint` from now on: reconnect, say hello, and re-send everything unanswered at once."""
        self.sock.disconnect(self.frontend)
        self.frontend = endpoint
        self.sock.connect(endpoint)
        self._last_heard = self._moved_at = now
        self._send_session(MsgType.CLIENT_HELLO, os.getpid(), socket.gethostname())
        self._resend_unanswered(now)

    def _resend_unanswered(self, now: float) -> None:
        """Everything sent and unanswered goes again now (a new leader may not have it)."""
        for sent in self._outstanding.values():
            if sent.state == SENT:  # those in the local queue go when the window lets them
                sent.due_at = now
        self._next_resend_scan = now

    def _send_session(self, msg_type: MsgType, *extra: Any) -> None:
        try:
            self.sock.send(p.encode(msg_type, self.client_id, self.incarnation, *extra), zmq.NOBLOCK)
            self._last_sent = time.monotonic()
        except zmq.Again:
            pass  # no room to queue it: the next submit or ping names the session anyway

    @property
    def unanswered(self) -> int:
        """How many requests were submitted and not yet answered, queued here or sent (cheap, unlike `outstanding`)."""
        return len(self._outstanding)

    @property
    def outstanding(self) -> list[int]:
        """Ids of requests submitted and not yet answered (queued here or sent), in submission order."""
        return list(self._outstanding)

    @property
    def queued(self) -> int:
        """How many submitted requests wait in the local queue for room in the window."""
        return self._window.queued

    @property
    def window(self) -> tuple[int, int | None]:
        """The window granted by the balancer: (requests, bytes or None) this connection may have out."""
        w = self._window
        return w.requests, (None if w.bytes == sys.maxsize else w.bytes)

    def submit(
        self,
        payload: bytes | str = b"",
        priority: int = DEFAULT_PRIORITY,
        request_id: int | None = None,
        service: str | None = None,
        deadline: float | None = None,
    ) -> Pending:
        """Send a request; lower priority numbers are served first.

        `service`: only nodes that offer it run the request (None: `default`); `deadline`: seconds
        after which the balancer ends it `expired` if it has not finished.
        ValueError for a request id still outstanding here, or one (or a priority, a service name,
        a deadline) the wire cannot carry (ids 0 to 2**64 - 1); nothing changes then. RuntimeError after close().
        Beyond the window it waits in the local queue; on a full queue this blocks (see the module's docstring).
        """
        shape = _shape(service, deadline)
        request_id = self._queue(request_id, priority, payload, shape)
        self._flush()
        return Pending(self, request_id)

    def submit_many(
        self,
        payloads: Iterable[bytes | str],
        priority: int = DEFAULT_PRIORITY,
        service: str | None = None,
        deadline: float | None = None,
    ) -> list[Pending]:
        """Submit many requests in as few messages as the batch limits allow; same rules as submit().

        The fast way to send a burst: one SUBMIT_BATCH carries up to limits.BATCH_ITEMS requests, so the
        balancer and this process each handle one message where submit() in a loop costs one per request.
        """
        shape = _shape(service, deadline)
        pending = []
        try:
            for payload in payloads:
                pending.append(Pending(self, self._queue(self._next_id, priority, payload, shape)))
        finally:
            self._flush()  # whatever was queued before an error still goes
        return pending

    def cancel(self, request_id: int) -> None:
        """Ask the balancer to cancel an outstanding request; its Result says how it ended (cancelled,
        or the result it already had). One still in the local queue never leaves. KeyError if it is not
        outstanding here."""
        sent = self._outstanding.get(request_id)
        if sent is None:
            raise KeyError(f"request {request_id} is not outstanding")
        if sent.state == QUEUED:
            self._take(request_id, p.CANCELLED, None, 0, False, b"cancelled before it was sent")
            return
        self._send_session(MsgType.CLIENT_CANCEL, request_id)

    def _queue_shaped(
        self, request_id: int, priority: int, payload: bytes, shape: tuple[str | None, float | None]
    ) -> None:
        group = self._unsent_shaped.get(shape)
        if group is None:
            group = self._unsent_shaped[shape] = []
        group.append((request_id, priority, payload))

    def _queue(
        self,
        request_id: int | None,
        priority: int,
        payload: bytes | str,
        shape: tuple[str | None, float | None] | None = None,
    ) -> int:
        """Check a submission and queue it for the next flush; its id."""
        if self.sock.closed:
            raise RuntimeError("this Client is closed")
        if type(payload) is not bytes:
            # a str as UTF-8, any buffer (bytearray, memoryview) as its bytes; TypeError for anything else
            payload = payload.encode("utf-8") if isinstance(payload, str) else bytes(memoryview(payload))
        if request_id is None:
            request_id = self._next_id
        if request_id in self._outstanding:
            raise ValueError(f"request {request_id} is still outstanding; wait for it or use another id")
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes is over the balancer's limit of {self.max_payload}")
        if not 0 <= request_id < 2**64 or not -(2**63) <= priority < 2**63:
            raise ValueError(f"request id {request_id} or priority {priority} is out of the wire's 64-bit range")
        window = self._window
        if window.waiting:
            self._since_look += 1
            if self._since_look >= LOOK_EVERY or window.full():
                self._make_room()  # QueueFull leaves nothing changed
        if request_id >= self._next_id:
            self._next_id = request_id + 1
        if request_id in self._answered:
            self._reused.add(request_id)
        sent = self._outstanding[request_id] = Outstanding(priority, payload, math.inf, self.retry_s or 0.0, shape)
        window.wait(request_id, sent)
        return request_id

    def _make_room(self) -> None:
        """With requests waiting for the window: take the answers that arrived (each frees room) and send what
        fits; on a full local queue, wait for answers (QueueFull after queue_timeout_s)."""
        window = self._window
        self._since_look = 0
        self._receive(DRAIN_BATCH)
        self._flush()
        deadline = None if self.queue_timeout_s is None else time.monotonic() + self.queue_timeout_s
        while window.full():
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueFull(
                    f"the local queue stayed full ({window.queued} requests) for {self.queue_timeout_s:g} s"
                )
            self.pump(1.0 if deadline is None else min(1.0, deadline - time.monotonic()))

    def _flush(self) -> None:
        """Hand ZeroMQ what fits the window and the re-sends queued, in SUBMIT_BATCH messages of at most the
        batch limits."""
        window = self._window
        if window.waiting or window.again:
            for request_id, sent in window.take(time.monotonic()):
                if sent.shape is None:
                    self._unsent.append((request_id, sent.priority, sent.payload))
                else:
                    self._queue_shaped(request_id, sent.priority, sent.payload, sent.shape)
        unsent, self._unsent = self._unsent, []
        self._last_sent = time.monotonic()
        if unsent:
            self._send_batches(unsent, ())
        if self._unsent_shaped:
            shaped, self._unsent_shaped = self._unsent_shaped, {}
            for (service, deadline_at), group in shaped.items():
                left_ms = None if deadline_at is None else max(0, int((deadline_at - self._last_sent) * 1000))
                self._send_batches(group, (service, left_ms))

    def _send_batches(self, unsent: list[tuple[int, int, bytes]], tail: tuple[Any, ...]) -> None:
        """`unsent` in SUBMIT_BATCH messages (a big payload as a SUBMIT), each ending in `tail`."""
        for batch in [unsent] if len(unsent) == 1 else batches(unsent, payload_size):
            if len(batch) == 1 and len(batch[0][2]) > limits.LONE_PAYLOAD_BYTES:  # a big payload in its own frame
                request_id, priority, payload = batch[0]
                frames = [p.encode(_SUBMIT, self.client_id, request_id, priority, self.incarnation, *tail), payload]
            else:
                frames = [p.encode(_SUBMIT_BATCH, self.client_id, self.incarnation, batch, *tail)]
            if self.retry_s is None:
                self.sock.send_multipart(frames)
            else:
                # Never block: with no connection (balancer down, or curve refused us) the retries send it later.
                send_frames(self.sock, frames)

    def wait(self, request_id: int, timeout: float | None = None) -> Result:
        """Wait for one request's result and hand it over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while request_id not in self._results:
            if request_id not in self._outstanding:
                raise KeyError(f"request {request_id} was never submitted or was already collected")
            self.pump(self._time_left(deadline))
        return self._results.pop(request_id)

    def has_result(self, request_id: int) -> bool:
        """True once the result of `request_id` has arrived and was not yet taken (without waiting)."""
        self.pump(0)
        return request_id in self._results

    def take_results(self) -> list[Result]:
        """Every result that has arrived and was not yet taken (without waiting)."""
        results = list(self._results.values())
        self._results.clear()
        return results

    def as_completed(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as they arrive until nothing is outstanding."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results = self._results
        while self._outstanding or results:
            # By a snapshot of the ids: next(iter()) of a dict popped from the front walks every slot freed
            # before it, O(n) per result once many wait (4.8 s for 100,000). One taken by wait() meanwhile is skipped.
            for request_id in list(results):
                result = results.pop(request_id, None)
                if result is not None:
                    yield result
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
        """Receive results for up to `timeout` seconds (0 or less: only what has arrived); how many arrived.

        Raises ClientIdInUse once the balancer refused this client id, and
        BalancerUnreachable when nothing was heard within the connect timeout.
        """
        self._keep_up(time.monotonic())  # before waiting: off the path of an answer on its way
        before = time.monotonic()
        got = 0
        message = self._waiter.message(max(0, int(timeout * 1000)))  # no time left: a look, no wait
        if message is not None:
            self.heard = True
            self._last_heard = time.monotonic()
            got = self._on_reply(message)
            # Woken for an answer, it is handed over before looking for more (wire/sockets.SLEPT_S).
            if time.monotonic() - before < SLEPT_S:
                got += self._receive(DRAIN_BATCH)
            self._send_freed()
        if self.refused is not None:
            raise ClientIdInUse(self.refused)
        if not got:
            now = time.monotonic()
            self._check_connected(now)
            self._keep_up(now)
        return got

    def _receive(self, limit: int) -> int:
        got = 0
        for frames in received(self.sock, limit):
            self.heard = True
            self._last_heard = time.monotonic()
            got += self._on_reply(frames)
        return got

    def _send_freed(self) -> None:
        """Answers freed room, or credit came: what waits in the local queue goes. Only then: a flush also
        marks the session as just heard from, which would put off its ping."""
        window = self._window
        if window.waiting or window.again:
            self._flush()
            if window.blocked_id != self._asked_for and window.want():
                self._ask_room(time.monotonic())  # a new request too big for the window: ask now, not later

    def _keep_up(self, now: float) -> None:
        """Re-send what is overdue, and ping within the session's lease (often, with balancers to follow)."""
        following = self.following
        if following.several and self._outstanding and now - self._last_heard >= FOLLOW_SILENCE_S:
            self._move(following.next(), now)  # a leader gone silent: try the next member
        if self.retry_s is not None and now >= self._next_resend_scan:
            # Answers already in the socket are not overdue: a caller back from a long pause would otherwise
            # re-send its whole window before reading the results waiting for it.
            while self._receive(DRAIN_BATCH):
                pass
            self._send_freed()
            self._resend_overdue(time.monotonic())
        ping_s = FOLLOW_PING_S if following.several else self.lease_s / 3
        if self._outstanding and now - self._last_sent >= ping_s:
            self._send_session(MsgType.CLIENT_PING, self._window.want())
        elif self._window.starved() and now - self._asked_at >= CREDIT_ASK_S:
            self._ask_room(now)

    def _ask_room(self, now: float) -> None:
        """CLIENT_PING asking for credit: answered CLIENT_WELCOME, with the window and any room reserved for the
        request asked for (its bytes, want())."""
        self._asked_at, self._asked_for = now, self._window.blocked_id
        self._send_session(MsgType.CLIENT_PING, self._window.want())

    def _new_epoch(self, epoch: int) -> bool:
        """A message of another epoch than the newest seen: whether to act on it (not from an older leadership).
        A newer leadership on the endpoint we talk to (the member that stepped down led again, or won after
        etcd came back) may lack what we sent meanwhile: everything unanswered goes again now, not on the
        back-off, which had grown to 20 s when an outsider stopped etcd."""
        before = self.following.epoch
        if not self.following.fresh(epoch):
            return False
        if before and epoch > before:
            self._resend_unanswered(time.monotonic())
        return True

    def _check_connected(self, now: float) -> None:
        if self.heard or self.connect_timeout_s is None or now - self._started < self.connect_timeout_s:
            return
        raise BalancerUnreachable(
            f"no answer from the balancer at {self.frontend} within {self.connect_timeout_s:g} s"
            " (is it running? set --frontend or ZLB_FRONTEND)"
        )

    def _on_reply(self, frames: list[bytes]) -> int:
        try:
            msg_type, epoch, fields = p.decode_with_epoch(frames[0])
            if epoch != self.following.epoch and not self._new_epoch(epoch):
                return 0  # from a leadership already replaced (counted)
            if self._leaderless and msg_type is not MsgType.REDIRECT:
                # A leader again, on this endpoint: what it was sent while none led goes now. It may lead with
                # the epoch it had (its etcd key outlived an etcd restart), so a newer epoch alone would miss it.
                self._leaderless = False
                self._resend_unanswered(time.monotonic())
            if msg_type is _RESULT_BATCH and len(frames) == 1:  # nearly every reply
                take, got = self._take, 0
                for item in fields[0]:
                    got += take(*item)
                return got
            body = p.split_body(msg_type, frames)
        except ProtocolError:
            self.bad_messages += 1
            return 0
        if msg_type is MsgType.RESULT:
            request_id, status, server_id, attempts, replay = fields
        elif msg_type is MsgType.CLIENT_WELCOME:
            self.lease_s = max(fields[0] / 1000, 0.1)
            self.max_payload = fields[1]
            self._granted(fields[2], fields[3], fields[4])
            return 0
        elif msg_type is MsgType.CREDIT:
            self._granted(*fields)
            return 0
        elif msg_type is MsgType.REFUSED:
            self.refused = fields[0]
            return 0
        elif msg_type is MsgType.REDIRECT:
            now = time.monotonic()
            self._leaderless = fields[0] is None
            if self.following.redirected(fields[0]):
                self._move(self.following.current, now)
            elif fields[0] is None and self.following.several and now - self._moved_at >= FOLLOW_SILENCE_S / 2:
                # A standby that knows no leader (it may be cut off from etcd itself): try the next member,
                # at most twice per silence period so two leaderless members do not bounce us to and fro.
                self._move(self.following.next(), now)
            return 0
        elif msg_type is MsgType.REJECTED and fields[0] is None:
            # Not about one request: a stopping balancer (or a message it could not read).
            self._on_shutdown()
            return 0
        elif msg_type is MsgType.REJECTED and fields[1].startswith(p.REASON_BUSY) and self.retry_s is not None:
            self._on_busy(fields[0], fields[1])
            return 0
        elif msg_type is MsgType.REJECTED:
            request_id, status, server_id, attempts, replay, body = fields[0], REJECTED, None, 0, False, fields[1]
            body = body.encode()
        else:
            self.bad_messages += 1
            return 0
        return self._take(request_id, status, server_id, attempts, replay, bytes(body))

    def _take(
        self, request_id: int, status: str, server_id: int | None, attempts: int, replay: bool, body: bytes
    ) -> int:
        """Keep the answer to an outstanding request as its Result; 1 if it was one, else 0."""
        sent = self._outstanding.pop(request_id, None)
        if sent is None:
            self._repeated(request_id, status, server_id, body)
            return 0
        self._window.answered(sent)
        answered = self._answered
        if len(answered) >= _ANSWERED_KEEP:
            answered.clear()  # a bounded memory: the check is best effort for very long runs
        answered[request_id] = (status, server_id, _digest(body))
        if request_id in self._reused:
            self._reused.discard(request_id)
            replay = status != REJECTED
        self._results[request_id] = Result(
            self.client_id, request_id, sent.priority, status, server_id, attempts, body, replay
        )
        return 1

    def _granted(self, requests: int, size: int | None, reserved: int) -> None:
        self.credit_updates += 1
        self._window.grant(requests, size, reserved)

    def _repeated(self, request_id: int, status: str, server_id: int | None, body: bytes) -> None:
        """A second answer for a request: fine if it is the same result, a conflict otherwise."""
        first = self._answered.get(request_id)
        if first is None:
            return  # not ours, or too old to check
        if first == (status, server_id, _digest(body)):
            self.repeated_answers += 1
        else:
            self.conflicting_answers += 1


def _shape(service: str | None, deadline: float | None) -> tuple[str | None, float | None] | None:
    """(service, deadline as monotonic time) for a submission that names either, else None; ValueError
    for a service name or a deadline the wire cannot carry."""
    if service is None and deadline is None:
        return None
    if service is not None and p.service_error(service):
        raise ValueError(p.service_error(service))
    if deadline is not None and not 0 <= deadline * 1000 <= limits.MAX_DEADLINE_MS:
        raise ValueError(f"deadline of {deadline} s is out of range (0 to {limits.MAX_DEADLINE_MS // 1000} s)")
    return service, None if deadline is None else time.monotonic() + deadline


def json_payload(cost_ms: float = 0, payload: Any = None) -> bytes:
    """The payload the built-in `simulate` handler understands."""
    return json.dumps({"cost_ms": cost_ms, "payload": payload}).encode()
