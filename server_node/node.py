"""The server-node process: a DEALER to the balancer's backend that runs work.

One thread owns the socket. Handlers run in a pool of `capacity` daemon
threads (server_node/pool.py; inline for the instant `echo` handler).

Sessions: the process draws an incarnation (random 64 bits) at start and
names it in every HELLO; HELLO and each HEARTBEAT list the tickets it holds
(received, DONE not yet sent), so the balancer re-queues what a dropped
connection took. A HELLO the balancer REFUSED (the id is held by another live
process) or an answer of FENCED (another process took the id over) ends the
node with a non-zero exit and the reason on stderr.

HA (wire/following.py): `backend` may list several balancers, comma-separated.
A standby answers REDIRECT naming the leader and the node reconnects there at
once, its HELLO listing the work it holds; a balancer silent past liveness
sends the node to the next endpoint. Messages from an older epoch than the
newest seen are dropped and counted (`stale_epoch`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from server_node import handlers
from server_node.alive import ALIVE_EVERY_S, AliveFile
from server_node.liveness import PeerLiveness
from server_node.pool import HandlerPool
from server_node.unconfirmed import SentResults
from wire import endpoints, limits
from wire import protocol as p
from wire.batching import batches, payload_size
from wire.following import Following
from wire.protocol import MsgType, ProtocolError
from wire.security import KeyRefusals, secure_client_socket
from wire.sockets import DRAIN_BATCH, SLEPT_S, Waiter, received, send_frames

DEFAULT_GRACE_S = 10.0
# Exit codes of run_node besides 0: the balancer refused our id, or fenced us off it.
EXIT_REFUSED = 3
EXIT_FENCED = 4
# How long a node restarted on the same host keeps asking for the id of its dead predecessor:
# past any balancer's deadline for it (liveness x heartbeat, 1.5 s by default).
REFUSED_RETRY_S = 30.0
# A dropped connection (reset, the balancer's host rebooted) is redialled by the DEALER itself after this
# interval plus up to as much again at random, doubling per failed try up to RECONNECT_IVL_MAX_MS (libzmq's
# own 100 ms, constant, before). The balancer waits --reconnect-grace-ms (50) after a drop before it takes
# a node with no connection for dead (balancer/drops.py): a reset node is back well within that.
RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 100
# The longest heartbeat interval a node follows: an hour (beyond, a WELCOME is garbage).
MAX_HEARTBEAT_MS = 3_600_000
KEY_REFUSED = (
    "the balancer refused this node's curve key (ZLB_CURVE_SECRET): a node's public key must be in"
    " the balancer's --node-allow directory (in --allow when it has none)"
)
# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_WORK_BATCH, _DONE, _DONE_BATCH = MsgType.WORK_BATCH, MsgType.DONE, MsgType.DONE_BATCH


@dataclass
class NodeConfig:
    """Everything `zlb server` can set."""

    backend: str = endpoints.DEFAULT_BACKEND
    node_id: int | None = None
    capacity: int = 1
    handler: str = "simulate"
    heartbeat_ms: int = p.HEARTBEAT_INTERVAL_MS
    liveness: int = p.LIVENESS
    grace_s: float = DEFAULT_GRACE_S
    alive_file: str | None = None  # rewritten every second by the loop: a container probe's sign of life
    services: tuple[str, ...] = ()  # what it offers; none given: the default service


class ServerNode:
    """A worker that connects, says hello, heartbeats and runs requests."""

    def __init__(self, config: NodeConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.handler = handlers.load(config.handler)
        self.inline = self.handler in handlers.INLINE
        self.node_id = config.node_id
        self.handled = 0
        self.bad_messages = 0
        self.dropped = 0  # messages this node could not send (no connection, or a full queue)
        self.welcomed = False
        self.exit_code: int | None = None  # set when the balancer refuses or fences this node
        self.exit_reason = ""
        self._refused_since: float | None = None
        self._told_key_refused = False
        self._last_hello = 0.0
        # Tickets received whose DONE has not been sent, in arrival order.
        self.held: dict[int, None] = {}
        self._done: list[tuple[int, bool, bytes]] = []  # finished this iteration, DONE not yet sent
        self._sent = SentResults()  # DONEs the balancer may not have read, sent again on a fresh connection
        self._cancel_events: dict[int, threading.Event] = {}  # ticket -> its Work.cancelled, for pooled work
        self.cancelled = 0  # work the balancer told this node to stop
        self.max_payload = limits.DEFAULT_MAX_MESSAGE_BYTES  # the balancer's limit, from WELCOME
        self.max_seen = 0  # the highest ticket received: WORK arrives in ticket order
        self._ctx = context or zmq.Context.instance()
        self.incarnation = int.from_bytes(os.urandom(8), "big")  # as secrets.randbits, without its 3.7 MB of hmac
        # A stable identity across reconnects lets the balancer recognise us.
        self.identity = f"node-{socket.gethostname()}-{os.getpid()}-{self.incarnation:016x}".encode()
        self._pool = None if self.inline else HandlerPool(config.capacity, self._run_handler)
        self._stopping = False
        self._leaving_since: float | None = None
        self.sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._redial_at = 0.0
        self.live = PeerLiveness.start(config.heartbeat_ms / 1000, config.liveness, time.monotonic())
        self.following = Following(config.backend)
        self.alive = AliveFile(config.alive_file) if config.alive_file else None

    # ---- connection -----------------------------------------------------

    def _connect(self) -> None:
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        # Room for every DONE a full node can owe, so none is dropped for want of queue.
        self.sock.setsockopt(zmq.SNDHWM, max(1000, 4 * self.config.capacity + 100))
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        secure_client_socket(self.sock)
        self._key_refusals = KeyRefusals(self.sock)
        self.sock.connect(self.following.current)
        self._poller.register(self.sock, zmq.POLLIN)
        self._waiter = Waiter(self.sock)
        self.welcomed = False
        self._hello()

    def _disconnect(self) -> None:
        self._key_refusals.close()
        self._poller.unregister(self.sock)
        self.sock.close(linger=0)
        self.sock = None

    def _hello(self) -> None:
        header = p.encode(
            MsgType.HELLO,
            self.node_id,
            self.config.capacity,
            os.getpid(),
            socket.gethostname()[: limits.MAX_HOST_CHARS],
            self.incarnation,
            self.max_seen,
            *([list(self.config.services)] if self.config.services else []),
        )
        self._last_hello = time.monotonic()
        self._send(header, p.encode_tickets(self.held))

    @property
    def stale_epoch(self) -> int:
        """Messages dropped because they came from an older leadership than one already heard."""
        return self.following.stale

    @property
    def in_flight(self) -> int:
        return len(self.held)

    def _send(self, *frames: Any) -> bool:
        """Send without blocking; a message that cannot leave is counted (the balancer finds the gap)."""
        if self.sock is not None and send_frames(self.sock, frames):
            return True
        self.dropped += 1  # the next HELLO or HEARTBEAT lists what we hold, and the balancer re-queues the rest
        return False

    # ---- loop -----------------------------------------------------------

    def stop(self, *_args: Any) -> None:
        """Finish in-flight work (up to the grace period), say goodbye, leave."""
        self._stopping = True

    def run(self) -> None:
        """Serve until stopped."""
        if self._pool is not None:
            self._poller.register(self._pool.wake_fd, zmq.POLLIN)
        self._connect()
        while self.exit_code is None:
            now = time.monotonic()
            if self.sock is None and now >= self._redial_at:
                self._connect()
            deadline = self._redial_at if self.sock is None else self.live.next_deadline()
            timeout_ms = max(0, int((deadline - now) * 1000) + 1)
            timeout_ms = min(timeout_ms, 100) if self._stopping else timeout_ms
            if self.alive is not None:  # keep the file fresh whatever the balancer's timing
                self.alive.tick(now, self.welcomed and self.sock is not None, self.node_id)
                timeout_ms = min(timeout_ms, int(ALIVE_EVERY_S * 1000))
            if self._pool is None and self.sock is not None:  # one socket to wait on: a blocking receive
                message, ready = self._waiter.message(timeout_ms), ()
            else:
                message, ready = None, self._poller.poll(timeout_ms)
            woke = time.monotonic()
            # Woken from idle: answer what woke us first (wire/sockets.SLEPT_S).
            limit = 1 if woke - now >= SLEPT_S else DRAIN_BATCH
            now = woke
            if message is not None and self._on_message(now, message) and limit > 1:
                self._drain_socket(now, limit)
            for source, _ in ready:
                if source is self.sock:
                    self._drain_socket(now, limit)
                elif self._pool is not None:  # the pool's wake-up pipe
                    for ticket, ok, result in self._pool.finished():
                        self._finished(ticket, ok, result)
            if self._done:
                self._send_done()
            if self._stopping and self._leave(now):
                return
            if self.sock is not None:
                self._keep_alive(now)

    def _keep_alive(self, now: float) -> None:
        if self.live.lost(now):
            # The balancer is gone or restarted (or refuses our key): a fresh socket after a back-off.
            if self._key_refusals.seen() and not self._told_key_refused:
                self._told_key_refused = True
                print(f"zlb server: {KEY_REFUSED}; retrying", file=sys.stderr, flush=True)
            for ticket, ok, result in self._sent.recall():  # listed as held in the next HELLO, then sent again
                self.held[ticket] = None
                self._done.append((ticket, ok, result))
            self._disconnect()
            self._redial_at = now + self.live.reconnected(now)
            if self.following.several:  # a leader gone silent: the next member at once
                self.following.next()
                self._redial_at = now
        elif self.live.heartbeat_due(now) and self.welcomed:
            # Not before WELCOME: heartbeats sent while a HELLO waits (for a balancer that is restarting,
            # or slow on a busy machine) queue behind it and reach the balancer in a burst just after it
            # sent its first WORK; each lists no ticket, so the WORK counted as missing from that many
            # heartbeats, was re-queued and ran twice.
            header = p.encode(MsgType.HEARTBEAT, len(self.held), self.handled, self.dropped, self.max_seen)
            self._send(header, p.encode_tickets(self.held))
            if self._sent:
                self._sent.forget(self.live.heard_at, self.live.interval_s)

    def _leave(self, now: float) -> bool:
        """Drive a graceful stop; True once it is time to exit."""
        if self._leaving_since is None:
            self._leaving_since = now
            self._send(p.encode(MsgType.LEAVING))
        if self.held and now - self._leaving_since < self.config.grace_s:
            return False
        # BYE hands back whatever still runs: the balancer re-queues it, and the
        # handler threads are daemons, so nothing they do can keep this process alive.
        self._send(p.encode(MsgType.BYE))
        return True

    def close(self) -> None:
        """Release the socket and the pool (abandoning handlers that still run)."""
        if self._pool is not None:
            self._pool.close()
        if self.sock is not None:
            self._key_refusals.close()
            self.sock.close(linger=200)  # let BYE and the last results leave

    # ---- messages from the balancer -------------------------------------

    def _drain_socket(self, now: float, limit: int) -> None:
        on_message = self._on_message
        for frames in received(self.sock, limit):
            if not on_message(now, frames):
                return

    def _on_message(self, now: float, frames: list[bytes]) -> bool:
        """Handle one message from the balancer; False when what follows it must wait (or never come)."""
        self.live.heard(now)
        try:
            msg_type, epoch, fields = p.decode_with_epoch(frames[0])
            body = None if msg_type is _WORK_BATCH and len(frames) == 1 else p.split_body(msg_type, frames)
        except ProtocolError:
            self.bad_messages += 1
            return True
        if epoch != self.following.epoch and not self.following.fresh(epoch):
            return True  # from a leadership already replaced (counted)
        if msg_type is _WORK_BATCH:
            for item in fields[0]:
                self._on_work(item, item[5])
            if self._done:
                self._send_done()  # inline results leave before the next message is even looked at
        elif msg_type is MsgType.WORK:
            self._on_work(fields, body)
        elif msg_type is MsgType.CANCEL:
            self._on_cancel(fields[0])
        elif msg_type is MsgType.WELCOME:
            if _sane_welcome(*fields):
                self._on_welcome(now, *fields)
            else:
                self.bad_messages += 1  # not a balancer we can follow: wait for a sane one
        elif msg_type is MsgType.RECONNECT:
            if fields[0] == p.REASON_STOPPING:
                self._on_shutdown(now)
                return False
            if now - self._last_hello >= self.live.interval_s:
                self._hello()  # one HELLO per interval however many late DONEs were answered RECONNECT
        elif msg_type is MsgType.REFUSED:
            self._on_refused(now, *fields)
            return False
        elif msg_type is MsgType.REDIRECT:
            self._redirected(now, fields[0])
            return False
        elif msg_type is MsgType.FENCED:
            self._end(EXIT_FENCED, f"replaced: {fields[0]}; this process stops")
            return False
        return True

    def _redirected(self, now: float, leader: str | None) -> None:
        """A standby answered: reconnect to the leader it names, or (none known yet) to the next member soon."""
        if not self.following.redirected(leader):
            self.following.next()
        self._disconnect()
        self._redial_at = now if leader is not None else now + self.live.interval_s
        self.live.reconnected(now)

    def _on_welcome(self, now: float, node_id: int, heartbeat_ms: int, liveness: int, max_payload: int) -> None:
        """Joined: take the id, the balancer's timing (one heartbeat model on both sides) and its size limit."""
        self.node_id = node_id
        self.max_payload = max_payload
        self.welcomed = True
        self._refused_since = None
        self.live.adopt(heartbeat_ms / 1000, liveness, now)

    def _on_refused(self, now: float, reason: str, holder_pid: int | None, holder_host: str | None) -> None:
        """Another process holds our id. If it is a dead process on this host (we were restarted
        faster than the balancer noticed), ask again until its deadline surely passed; else give up."""
        if self._refused_since is None:
            self._refused_since = now
        if (
            holder_host == socket.gethostname()[: limits.MAX_HOST_CHARS]
            and holder_pid is not None
            and not _alive(holder_pid)
        ):
            if now - self._refused_since < REFUSED_RETRY_S:
                self._disconnect()
                self._redial_at = now + self.live.interval_s
                return
        self._end(EXIT_REFUSED, f"refused by the balancer: {reason}")

    def _end(self, code: int, reason: str) -> None:
        """The balancer will not have this process: stop at once (its work is already elsewhere)."""
        self.exit_code = code
        self.exit_reason = reason

    def _on_shutdown(self, now: float) -> None:
        """The balancer is stopping: drop this connection and dial again after one interval.

        Work still running keeps running; its results go to whichever balancer
        answers next, which drops them as late if it re-dispatched that work.
        """
        self._disconnect()
        self.live.backoff_s = 0.0
        self._redial_at = now + self.live.reconnected(now)

    def _on_work(self, fields: list[Any], payload: bytes) -> None:
        ticket, client_id, request_id, priority, attempt = fields[:5]
        if ticket > self.max_seen:
            self.max_seen = ticket
        if ticket in self.held:
            return  # tickets are unique: the same WORK twice runs once
        self.held[ticket] = None
        if self._pool is None:
            work = handlers.Work(client_id, request_id, priority, attempt, self.node_id, payload)
            self._finished(ticket, *self._run_handler(work))
        else:
            cancelled = self._cancel_events[ticket] = threading.Event()
            work = handlers.Work(client_id, request_id, priority, attempt, self.node_id, payload, cancelled)
            self._pool.submit(ticket, work)

    def _on_cancel(self, ticket: int) -> None:
        """The balancer took this work back (cancelled, or past its deadline): tell the handler, drop its
        result, and free its slot at once (the pool starts a thread in its place)."""
        if self.held.pop(ticket, 0) is None:  # held: its DONE was not sent yet
            self.cancelled += 1
            self._done = [done for done in self._done if done[0] != ticket]
            event = self._cancel_events.pop(ticket, None)
            if event is not None and self._pool is not None:
                event.set()
                self._pool.abandon(ticket)

    def _run_handler(self, work: handlers.Work) -> tuple[bool, bytes]:
        return handlers.run(self.handler, work)

    def _finished(self, ticket: int, ok: bool, result: bytes) -> None:
        """Queue a DONE; the loop sends what this iteration finished as one DONE_BATCH."""
        if self._cancel_events:
            self._cancel_events.pop(ticket, None)
        if ticket in self.held:
            result = bytes(result)
            if len(result) > self.max_payload:  # the balancer would refuse it: say why instead
                ok, result = False, limits.too_large("result", len(result), self.max_payload)
            self._done.append((ticket, ok, result))

    def _send_done(self) -> None:
        """Send the iteration's results as DONE_BATCH. A ticket stops being held either way: one
        whose DONE could not leave is missing from the next heartbeat, and the balancer re-queues it.

        With no connection at all (sitting out a back-off after the balancer went silent: stopped,
        stalled, restarting) the results wait, their tickets still held, and leave right after the
        next HELLO, which lists them: dropped, each would run again elsewhere."""
        if self.sock is None:
            return
        done, self._done = self._done, []
        now, live, sent = time.monotonic(), self.live, self._sent
        for batch in [done] if len(done) == 1 else batches(done, payload_size):  # one: batch_frames sees if big
            if self._send(*p.batch_frames(_DONE_BATCH, _DONE, batch)):
                for ticket, ok, result in batch:
                    sent.add(now, ticket, ok, result, live.heard_at, live.interval_s)
        held = self.held  # after the sends: the books wait, the balancer does not
        for ticket, _ok, _result in done:
            del held[ticket]
        self.handled += len(done)


def _sane_welcome(node_id: int, heartbeat_ms: int, liveness: int, max_payload: int) -> bool:
    """A WELCOME whose timing and limit a node can follow (the balancer's CLI allows no others)."""
    return 0 <= node_id and 1 <= heartbeat_ms <= MAX_HEARTBEAT_MS and 1 <= liveness <= 1000 and max_payload >= 0


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (no real pid is out of MAX_PID's range)."""
    if not 0 < pid <= limits.MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_node(config: NodeConfig) -> int:
    """Run a server node in this process until SIGINT or SIGTERM; return the exit code."""
    node = ServerNode(config)
    signal.signal(signal.SIGTERM, node.stop)
    signal.signal(signal.SIGINT, node.stop)
    try:
        node.run()
    finally:
        node.close()
    if node.exit_code is not None:
        print(f"zlb server: {node.exit_reason}", file=sys.stderr, flush=True)
        return node.exit_code
    return 0
