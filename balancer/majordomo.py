"""Majordomo (MDP/0.2) workers on the backend and MDP clients on the frontend, as zlb nodes and requests.

Workers and clients written for ZeroMQ's Majordomo protocol (RFC 18; the `majortomo` package on PyPI,
and implementations in C, Go and Java) join zlb without a line of zlb code. The drains call this part
only for a message zlb's own decoding refused (NodeSide.drain, ClientSide.drain), so zlb's peers pay
nothing for it; the sends ask whether a route is an MDP peer only while some are known. The frames
are read and built by wire/majordomo.py; docs/PROTOCOL.md ("Majordomo") has the mapping.

- **A worker** (READY with a service name) is a node of that service with capacity 1, an id the
  balancer gives it, pid 0 and host `mdp`. Its REQUEST carries the WORK ticket as the client address,
  so its FINAL names the request; PARTIAL replies are collected and the FINAL completes the request
  with all of them. Its liveness: the balancer sends it HEARTBEAT every --heartbeat-ms (for a zlb
  node, PING); a send that finds its connection gone (ROUTER_MANDATORY) is its death, and so is an
  idle worker's silence past --liveness x --mdp-heartbeat-ms. While it runs a request it is alive as
  long as its connection stands: MDP workers (majortomo's among them) send no heartbeat while they
  work. Its death re-queues its request as any dead node's; DISCONNECT from it, as a node's BYE.
- **A client**'s REQUEST is a zlb request of that service: default priority, a client id the balancer
  gives the connection (from 2**63 up), request ids counting from 1, and --mdp-deadline-ms if set. Its
  answer is a FINAL with the result; MDP has no error reply, so a request that ends otherwise (failed,
  expired, cancelled, dead, refused) is not answered and the client's own timeout and retry decide:
  at least once, since the retry is a new request. `mmi.service` (RFC 8) is answered 200 or 404:
  whether any live node offers the service.

A body of one frame is the payload or result byte for byte; any other number of frames travels as one
(wire.protocol.pack_frames) and is split again for an MDP peer.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from balancer.config import BalancerConfig
from balancer.incidents import Incidents
from balancer.records import Node, Request, Submitted
from balancer.scheduler import Refused, Scheduler
from wire import events as ev
from wire import limits
from wire import majordomo as mdp
from wire import protocol as p
from wire.protocol import ProtocolError
from wire.sockets import send_routed

# An MDP client's requests are queued at the zlb Client's default priority (lower is more urgent).
PRIORITY = 5
# MDP clients carry no ids: each connection gets a client id from here up, past the ids people pick,
# counting from the balancer's start in microseconds so that a restarted balancer never reuses one.
CLIENT_IDS = 1 << 63
# MDP clients known at once (a connection each); a request from one more is dropped and counted.
MAX_CLIENTS = 100_000
# An MDP client with no request outstanding is forgotten after this long without a word.
CLIENT_QUIET_S = 60.0
# What `zlb servers` shows as an MDP worker's host (it tells none) and pid.
HOST = "mdp"


@dataclass(slots=True, eq=False)
class Worker:
    """An MDP worker: its node, its framing, and what it is in the middle of."""

    node: Node
    delimited: bool
    heard: float
    parts: list[Any] = field(default_factory=list)  # PARTIAL bodies of the running request, in order
    parts_bytes: int = 0
    # The ticket of a request taken from it (cancelled, past its deadline) that it still runs: MDP cannot
    # tell a worker to stop, so it gets no other work until that reply comes (and is dropped as late).
    stopped: int | None = None


@dataclass(slots=True, eq=False)
class Client:
    """An MDP client connection, as the zlb client id the balancer gave it."""

    client_id: int
    incarnation: int
    dialect: mdp.Dialect
    service: bytes  # of its latest REQUEST (MDP clients have one at a time): RFC 18's FINAL names it
    heard: float
    next_request: int = 1
    outstanding: set[int] = field(default_factory=set)  # its request ids not answered yet


def _service_name(frame: Any) -> str:
    """A service frame as a zlb service name; ProtocolError if it cannot be one."""
    try:
        name = bytes(frame).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("mdp_bad_service", f"service {bytes(frame)!r:.80} is not ASCII") from None
    error = p.service_error(name)
    if error:
        raise ProtocolError("mdp_bad_service", error)
    return p.DEFAULT_SERVICE if name == p.DEFAULT_SERVICE else name  # interned, as the scheduler compares it


class Majordomo:
    """MDP workers and clients: their sessions, their frames in and out."""

    def __init__(
        self,
        frontend: zmq.Socket,
        backend: zmq.Socket,
        sched: Scheduler,
        incidents: Incidents,
        config: BalancerConfig,
    ) -> None:
        self.frontend = frontend
        self.backend = backend
        self.sched = sched
        self.incidents = incidents
        self.max_bytes = config.max_message_bytes
        self.silence_s = config.mdp_heartbeat_ms / 1000 * config.liveness
        self.deadline_s = None if config.mdp_deadline_ms is None else config.mdp_deadline_ms / 1000
        # Route -> MDP peer. NodeSide and ClientSide read these: while one is empty, their sends ask nothing.
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[bytes, Client] = {}
        self._last_client_id = CLIENT_IDS + time.time_ns() // 1000
        # (client id, request id) of bodies of other than one frame, packed as one: a payload from an MDP
        # client (split again for an MDP worker), a result for an MDP client (split again for it).
        self._packed_in: set[tuple[int, int]] = set()
        self._packed_out: set[tuple[int, int]] = set()
        self._swept_at = 0.0

    # ---- workers: the backend ---------------------------------------------------

    def worker_message(self, frames: list[Any], now: float) -> bool:
        """A backend message zlb could not decode: handled here (True) if it is an MDP worker's."""
        if not mdp.looks_like_mdp(frames):
            return False
        msg = None
        try:
            msg = mdp.parse(frames)
            if msg.header != mdp.WORKER:
                raise ProtocolError("mdp_bad_header", "an MDP client's command on the backend")
            self._from_worker(msg, now)
        except ProtocolError as exc:
            # RFC 18: an invalid or unexpected command ends the worker's registration; it is told so.
            self.incidents.bad("backend", exc, now)
            self._disconnect(bytes(frames[0]), msg.delimited if msg is not None else frames[1] == b"", now)
        return True

    def _from_worker(self, msg: mdp.Message, now: float) -> None:
        route, command = msg.route, msg.command
        worker = self.workers.get(route)
        if command == mdp.READY:
            if worker is not None:
                raise ProtocolError("mdp_unexpected", "a second READY")
            self._ready(msg, now)
            return
        if worker is None or self.sched.routes.get(route) is not worker.node:
            # Not registered, or declared dead since: RFC 18 tells it to register again on a fresh socket.
            self.workers.pop(route, None)
            if command != mdp.DISCONNECT:
                self.incidents.count("mdp_unknown_worker")
                self._send_worker(route, msg.delimited, mdp.DISCONNECT)
            return
        worker.heard = now
        if command == mdp.HEARTBEAT:
            if worker.stopped is None:  # heard: reachable again if a send found its queue full
                self.sched.table.touch(worker.node, now)
            else:  # still running what was taken from it: kept out of dispatch
                self.sched.table.alive(worker.node, now)
        elif command == mdp.FINAL:
            self._final(worker, msg.frames, now)
        elif command == mdp.PARTIAL:
            self._partial(worker, msg.frames)
        elif command == mdp.DISCONNECT:
            del self.workers[route]
            self.sched.bye(route)  # as a node's BYE: what it ran goes back to the queue at once
        else:
            raise ProtocolError("mdp_unexpected", f"command {command!r} from a worker")

    def _ready(self, msg: mdp.Message, now: float) -> None:
        if len(msg.frames) != 1:
            raise ProtocolError("mdp_bad_frames", f"READY with {len(msg.frames)} frames after its command, not 1")
        name = _service_name(msg.frames[0])
        if name.startswith(mdp.MMI_PREFIX.decode()):
            raise ProtocolError("mdp_bad_service", f"READY for {name}: the mmi. services are the broker's (RFC 8)")
        try:
            node = self.sched.hello(msg.route, None, 1, 0, HOST, now, secrets.randbits(64), services=(name,))
        except Refused as refusal:
            raise ProtocolError("mdp_refused", refusal.reason) from None
        self.workers[msg.route] = Worker(node, msg.delimited, now)

    def _partial(self, worker: Worker, frames: list[Any]) -> None:
        _ticket, body = mdp.reply_parts(frames)
        worker.parts_bytes += sum(map(len, body))
        if worker.parts_bytes <= self.max_bytes:  # beyond, the FINAL fails the request as too large
            worker.parts.extend(body)

    def _final(self, worker: Worker, frames: list[Any], now: float) -> None:
        ticket, body = mdp.reply_parts(frames)
        size = worker.parts_bytes + sum(map(len, body))
        if worker.parts:
            body = [*worker.parts, *body]
        worker.parts, worker.parts_bytes = [], 0
        node = worker.node
        if ticket == worker.stopped:  # the reply to a request taken from it: late; it may take work again
            worker.stopped = None
            self.sched.complete(node.route, ticket, True, b"", now)  # counted and logged as a late result
            self.sched.table.touch(node, now)
            return
        if size > self.max_bytes:
            ok, result = False, limits.too_large("result", size, self.max_bytes)
        else:
            ok, result = True, body[0] if len(body) == 1 else p.pack_frames(body)
        req = self.sched.complete(node.route, ticket, ok, result, now)
        if req is not None and ok and len(body) != 1 and req.route in self.clients:
            self._packed_out.add((req.client_id, req.request_id))

    def send_work(self, node: Node, batch: list[tuple[Node, int, Request]]) -> bool:
        """REQUEST for an MDP worker (NodeSide._send_batch); False when it could not leave (re-queued)."""
        worker = self.workers[node.route]
        sent = True
        for _node, ticket, req in batch:  # one: an MDP worker has capacity 1
            key = (req.client_id, req.request_id)
            body = p.unpack_frames(req.body) if key in self._packed_in else [req.body]
            failed = send_routed(self.backend, node.route, mdp.request_to_worker(worker.delimited, ticket, body))
            if failed:
                self.incidents.count(f"node_{failed}")
                self.sched.undeliverable(node, ticket)
                if failed == "unroutable":  # its connection is gone, and an MDP worker never comes back on it
                    self._gone(node.route, time.monotonic())
                sent = False
        return sent

    def stop(self, route: bytes, ticket: int) -> None:
        """The scheduler took a running request from this worker (NodeSide.send_cancels): MDP has no command to
        stop it, so the worker gets no other work until its reply to that one comes."""
        worker = self.workers.get(route)
        if worker is not None:
            worker.stopped = ticket
            self.sched.table.unreachable(worker.node)

    def tick(self, now: float) -> None:
        """Once per heartbeat: HEARTBEAT every worker (a connection found gone is its death), judge the idle
        ones' silence, vouch for the rest; forget clients long quiet."""
        routes, table = self.sched.routes, self.sched.table
        for route, worker in list(self.workers.items()):
            if routes.get(route) is not worker.node:  # declared dead (or replaced) meanwhile: it registers again
                del self.workers[route]
                self._send_worker(route, worker.delimited, mdp.DISCONNECT)
                continue
            failed = send_routed(self.backend, route, mdp.to_worker(worker.delimited, mdp.HEARTBEAT))
            if failed == "unroutable":
                self._gone(route, now)
            elif worker.node.in_flight or worker.stopped is not None or now - worker.heard < self.silence_s:
                table.alive(worker.node, now)
            else:
                self._disconnect(route, worker.delimited, now, dead=True)
        if self.clients and now - self._swept_at >= CLIENT_QUIET_S:
            self._swept_at = now
            quiet = [r for r, c in self.clients.items() if not c.outstanding and now - c.heard >= CLIENT_QUIET_S]
            for route in quiet:
                del self.clients[route]

    def probe(self, now: float) -> None:
        """A backend connection dropped (balancer/drops.py): a HEARTBEAT to every worker, and one whose connection
        is gone is dead now rather than at the next heartbeat."""
        routes = self.sched.routes
        for route, worker in list(self.workers.items()):
            if routes.get(route) is worker.node:
                if send_routed(self.backend, route, mdp.to_worker(worker.delimited, mdp.HEARTBEAT)) == "unroutable":
                    self._gone(route, now)

    def _gone(self, route: bytes, now: float) -> None:
        """A worker whose connection is gone: dead now, its request re-queued as a dead node's."""
        self.workers.pop(route, None)
        self.incidents.count("mdp_workers_gone")
        self.sched.gone(route, now, ev.NODE_DISCONNECTED)

    def _disconnect(self, route: bytes, delimited: bool, now: float, dead: bool = False) -> None:
        """End a worker's registration and tell it (it registers again on a fresh socket): its request goes
        back to the queue, at once (`dead`: after a back-off, as a silent node's)."""
        if self.workers.pop(route, None) is not None:
            if dead:
                self.sched.gone(route, now)
            else:
                self.sched.bye(route)
        self._send_worker(route, delimited, mdp.DISCONNECT)

    def _send_worker(self, route: bytes, delimited: bool, command: bytes) -> None:
        failed = send_routed(self.backend, route, mdp.to_worker(delimited, command))
        if failed:
            self.incidents.count(f"node_{failed}")

    # ---- clients: the frontend -------------------------------------------------

    def client_message(self, frames: list[Any], now: float) -> bool:
        """A frontend message zlb could not decode: handled here (True) if it is an MDP client's."""
        if not mdp.looks_like_mdp(frames):
            return False
        try:
            msg = mdp.parse(frames)
            if msg.header != mdp.CLIENT:
                raise ProtocolError("mdp_bad_header", "an MDP worker's command on the frontend")
            if msg.command not in (mdp.REQUEST, mdp.RFC_REQUEST) or not msg.frames:
                raise ProtocolError(
                    "mdp_unexpected", f"client command {msg.command!r:.20} with {len(msg.frames)} frames"
                )
            self._request(msg, now)
        except ProtocolError as exc:  # dropped: MDP has nothing to answer it with
            self.incidents.bad("frontend", exc, now)
        return True

    def _request(self, msg: mdp.Message, now: float) -> None:
        service, body = bytes(msg.frames[0]), msg.frames[1:]
        dialect = mdp.Dialect(msg.delimited, msg.command == mdp.RFC_REQUEST)
        if service.startswith(mdp.MMI_PREFIX):
            self._send_client(msg.route, dialect, service, [self._mmi(service, body)])
            return
        name = _service_name(service)
        size = sum(map(len, body))
        if size > self.max_bytes:
            raise ProtocolError("too_large", limits.too_large("payload", size, self.max_bytes).decode())
        client = self._client(msg.route, dialect, service, now)
        request_id = client.next_request
        client.next_request += 1
        payload = body[0] if len(body) == 1 else p.pack_frames(body)
        outcome = self.sched.submit(
            client.client_id, request_id, PRIORITY, msg.route, payload, client.incarnation, now, name, self.deadline_s
        )
        if outcome is Submitted.QUEUED:
            client.outstanding.add(request_id)
            if len(body) != 1:
                self._packed_in.add((client.client_id, request_id))
        else:  # refused (busy, queue full): no MDP answer says so; the client's retry is its next try
            self.incidents.count("mdp_refused")

    def _client(self, route: bytes, dialect: mdp.Dialect, service: bytes, now: float) -> Client:
        client = self.clients.get(route)
        if client is None:
            if len(self.clients) >= MAX_CLIENTS:
                raise ProtocolError("mdp_too_many_clients", f"{MAX_CLIENTS} MDP clients known at once")
            self._last_client_id += 1
            client = self.clients[route] = Client(self._last_client_id, secrets.randbits(63), dialect, service, now)
        client.dialect, client.service, client.heard = dialect, service, now
        return client

    def _mmi(self, service: bytes, body: list[Any]) -> bytes:
        """RFC 8: mmi.service answers whether any live node (zlb's or MDP's) offers the service named."""
        if service != mdp.MMI_SERVICE:
            return mdp.MMI_NOT_IMPLEMENTED
        try:
            name = _service_name(body[0]) if body else ""
        except ProtocolError:
            return mdp.MMI_NOT_FOUND
        return mdp.MMI_FOUND if name and self.sched.table.offering(name) else mdp.MMI_NOT_FOUND

    def deliver(self, route: bytes, batch: list[Request]) -> None:
        """Results for an MDP client (ClientSide, for a route of self.clients)."""
        for req in batch:
            self.answer(route, req, req.status == p.PROCESSED, req.body)

    def answer(self, route: bytes, req: Request, ok: bool, result: Any) -> None:
        """One result for an MDP client: a FINAL if it was processed; else nothing (MDP/0.2 has no error
        reply, and any frame would read as the result), and the client's timeout and retry decide."""
        key = (req.client_id, req.request_id)
        packed = key in self._packed_out
        if packed:
            self._packed_out.discard(key)
        self._packed_in.discard(key)
        client = self.clients.get(route)
        if client is None:
            return
        client.outstanding.discard(req.request_id)
        if not ok:
            self.incidents.count("mdp_unanswered")
            return
        self._send_client(route, client.dialect, client.service, p.unpack_frames(result) if packed else [result])

    def _send_client(self, route: bytes, dialect: mdp.Dialect, service: bytes, body: list[Any]) -> None:
        failed = send_routed(self.frontend, route, mdp.final_to_client(dialect, service, body))
        if failed:  # gone or not reading: its retry is a new request
            self.incidents.count(f"client_{failed}")
