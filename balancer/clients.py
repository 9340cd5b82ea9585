"""The frontend: client connections, submissions, and every result on its way out.

ClientSide owns what the balancer knows of its clients' connections and
nothing else; the loop (balancer/loop.py) owns the socket and hands it over,
the scheduler owns the requests. Back-pressure lives here too, since it is
about results leaving:

- **Unread results pause their client.** Results go out with ROUTER_MANDATORY
  and NOBLOCK; when a client's pipe is full (it does not read) the send says
  EAGAIN. A client is paused while the balancer holds results it could not
  hand to its pipe. Held results are charged to the memory budget and retried
  each loop iteration; meanwhile the client's waiting requests are set aside
  by dispatch (balancer/waiting.py) and everyone else's go on.
- **Big results count until libzmq lets them go** (balancer/leaving.py): a result
  over limits.LONE_PAYLOAD_BYTES stays charged to its client as unsent until a tracked
  send on its connection, it or a later one, says libzmq is done with it.
- **Credit keeps a Client below the budget.** Each connection that said
  CLIENT_HELLO is told its window (balancer/credit.py) in CLIENT_WELCOME, and in
  CREDIT when a result batch goes to it and the window moved enough since.
- **Routes are forgotten when quiet.** Each client's routing identity is
  interned so every request from it shares one bytes object; the table is
  kept in two generations swapped every ROUTE_GENERATION_S (or at
  ROUTE_GENERATION_MAX entries), so identities unheard for two generations
  are dropped and a stream of one-off identities cannot grow it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import zmq

from balancer.credit import Credit
from balancer.incidents import Incidents
from balancer.leaving import LeavingResults
from balancer.majordomo import Majordomo
from balancer.records import Request, Submitted, conflict_reason
from balancer.scheduler import Scheduler
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import batches, grouped
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received, send_routed

# At most this many result batches are held for one client; beyond, a batch is dropped
# (counted as client_dropped) and stays remembered for the client's retry to fetch.
MAX_HELD_PER_CLIENT = 1000
ROUTE_GENERATION_S = 60.0
ROUTE_GENERATION_MAX = 50_000

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_SUBMIT, _SUBMIT_BATCH, _RESULT_BATCH = MsgType.SUBMIT, MsgType.SUBMIT_BATCH, MsgType.RESULT_BATCH
_RESULT = MsgType.RESULT
_QUEUED, _DUPLICATE, _FINISHED = Submitted.QUEUED, Submitted.DUPLICATE, Submitted.FINISHED
_PROCESSED, _FAILED = p.PROCESSED, p.FAILED


def shape_error(shape: list[Any]) -> str:
    """Why a submission's service or deadline cannot be taken ('' when both are fine)."""
    service, deadline_ms = shape
    if service is not None and p.service_error(service):
        return p.service_error(service)
    if deadline_ms is not None and not 0 <= deadline_ms <= limits.MAX_DEADLINE_MS:
        return f"deadline of {deadline_ms} ms is out of range (0 to {limits.MAX_DEADLINE_MS})"
    return ""


def _route_of(req: Request) -> Any:
    return req.route


def _body_size(req: Request) -> int:
    body = req.body
    return 0 if body is None else len(body)


class ClientSide:
    """Frontend handlers, held results and client routes."""

    def __init__(
        self,
        sock: zmq.Socket,
        sched: Scheduler,
        incidents: Incidents,
        max_message_bytes: int,
        now: float,
        mdp: Majordomo,
    ) -> None:
        self.sock = sock
        # Majordomo clients (balancer/majordomo.py), by route: their results leave as MDP FINALs.
        self.mdp = mdp
        self._mdp_clients = mdp.clients
        self.sched = sched
        self.incidents = incidents
        self.max_message_bytes = max_message_bytes
        # client_id -> result batches (route, frames, payload bytes) its full pipe could not take, oldest
        # first; the loop reads whether any are held, to know if flush() has work
        self.held: dict[int, deque[tuple[bytes, list[Any], int]]] = {}
        self._routes: dict[bytes, bytes] = {}
        self._routes_old: dict[bytes, bytes] = {}
        self._routes_swapped_at = now
        self.credit = Credit(sched, now)
        # Big results handed to libzmq, charged as unsent until it is done with them; the loop reads
        # `leaving.any` to know if flush() has work.
        self.leaving = LeavingResults(sock, sched.budget, self.credit)
        self._handlers = {
            MsgType.CLIENT_HELLO: self._on_hello,
            MsgType.CLIENT_PING: self._on_ping,
            MsgType.CLIENT_BYE: self._on_bye,
            MsgType.CLIENT_CANCEL: self._on_cancel,
        }

    # ---- in: the frontend ------------------------------------------------

    def drain(self, now: float, limit: int) -> None:
        """Take up to `limit` messages (and limits.DRAIN_ITEMS requests, DRAIN_BYTES of payloads)."""
        decode = p.decode_routed
        submit, submit_batch, handlers = _SUBMIT, _SUBMIT_BATCH, self._handlers
        budget = limits.DRAIN_ITEMS
        # A payload over LONE_PAYLOAD_BYTES stays the frame it came in (no copy); WORK sends that frame on.
        frames_over = limits.LONE_PAYLOAD_BYTES
        for frames in received(self.sock, limit, routed=True, max_bytes=limits.DRAIN_BYTES, frames_over=frames_over):
            try:
                msg_type, fields, body = decode(frames)
                if msg_type is not submit_batch and msg_type is not submit and msg_type not in handlers:
                    raise ProtocolError("unknown_type", f"{msg_type.name} is not a client message")
            except ProtocolError as exc:
                if not self.mdp.client_message(frames, now):  # not zlb's: maybe a Majordomo client's
                    self.incidents.bad("frontend", exc, now)
                    self._send(frames[0], p.encode(MsgType.REJECTED, None, f"bad message: {exc}"))
                continue
            route = self._routes.get(frames[0]) or self._route(frames[0])
            if msg_type is submit_batch:
                client_id, incarnation, items, *shape = fields  # shape: [service, deadline_ms] or none
                budget -= len(items)
                for request_id, priority, payload in items:
                    self._submit(route, client_id, request_id, priority, incarnation, payload, now, shape)
            elif msg_type is submit:
                budget -= 1
                client_id, request_id, priority, incarnation, *shape = fields
                self._submit(route, client_id, request_id, priority, incarnation, body, now, shape)
            else:
                try:
                    handlers[msg_type](route, fields, now)
                except ProtocolError as exc:
                    self.incidents.bad("frontend", exc, now)
                    self._send(frames[0], p.encode(MsgType.REJECTED, None, f"bad message: {exc}"))
            if budget <= 0:
                return  # the rest waits for the next iteration: nodes and admins are served in between

    def _submit(
        self,
        route: bytes,
        client_id: int,
        request_id: int,
        priority: int,
        incarnation: int,
        body: Any,
        now: float,
        shape: list[Any],
    ) -> None:
        """Hand one submission to the scheduler and answer what it refused.
        `shape`: [service, deadline_ms] (either None), or empty."""
        refusal = self._refuse_outright(client_id, request_id, len(body)) or (shape and shape_error(shape))
        if refusal:
            self._send(route, p.encode(MsgType.REJECTED, request_id, refusal))
            return
        if shape:
            service, deadline_ms = shape
            outcome = self.sched.submit(
                client_id, request_id, priority, route, body, incarnation, now, service or p.DEFAULT_SERVICE,
                None if deadline_ms is None else deadline_ms / 1000,
            )  # fmt: skip
        else:
            outcome = self.sched.submit(client_id, request_id, priority, route, body, incarnation, now)
        if outcome is _QUEUED or outcome is _DUPLICATE or outcome is _FINISHED:
            return
        if outcome is Submitted.BUSY:
            reason = self.sched.last_refusal
            self.incidents.refusal(ev.SYSTEM_BUSY, client_id, reason, now)
        elif outcome is Submitted.TOO_LARGE:
            self.incidents.count("payloads_too_large")
            reason = (
                f"payload of {len(body)} bytes needs {limits.request_cost(len(body))} of the balancer's memory"
                f" budget (with room for its result as big, over {limits.LONE_PAYLOAD_BYTES} bytes), more than"
                " its whole --max-memory-mb"
            )
        elif outcome is Submitted.CONFLICT:
            reason = conflict_reason(client_id, request_id)
        else:
            reason = self.sched.last_refusal
        self._send(route, p.encode(MsgType.REJECTED, request_id, reason))

    def _refuse_outright(self, client_id: int, request_id: int, size: int) -> str:
        """Why no wait could ever let this submission in, or ''."""
        if client_id < 0 or request_id < 0:  # the Client and the CLI cannot name one: garbage, or another tool
            return f"client id {client_id} or request id {request_id} is out of range (0 to 2**64 - 1)"
        if size > self.max_message_bytes:
            self.incidents.count("payloads_too_large")
            return limits.too_large("payload", size, self.max_message_bytes).decode()
        return ""

    def _welcome(self, route: bytes, client_id: int, reserved: int = 0) -> None:
        """CLIENT_WELCOME: how often to ping, the largest payload, the connection's window and the room reserved
        for its next request. A client id is a name, held by no process (balancer/sessions.py): any number of
        processes may speak for one at once."""
        lease_ms = int(self.sched.client_lease_s * 1000)
        window = self.credit.welcome(route, client_id)
        self._send(route, p.encode(MsgType.CLIENT_WELCOME, lease_ms, self.max_message_bytes, *window, reserved))

    def _on_hello(self, route: bytes, fields: list[Any], now: float) -> None:
        if limits.bad_host(fields[3]) or not 0 <= fields[2] <= limits.MAX_PID:
            raise ProtocolError("bad_fields", f"CLIENT_HELLO with pid {fields[2]} and host {fields[3]!r:.80}")
        shrunk = self.credit.arrived(route, fields[0], now)  # first: its own window counts it among the arriving
        self._welcome(route, fields[0])
        for other, window in shrunk:
            self._send(other, p.encode(MsgType.CREDIT, *window, 0))

    def _on_ping(self, route: bytes, fields: list[Any], now: float) -> None:
        # Answered (a WELCOME again, with the window): a client following an HA group judges its balancer by the
        # answers, and a Client whose window is spent with nothing outstanding asks for credit this way, naming
        # the bytes of a request bigger than its window (room for it is reserved now or when it is free).
        client_id, _incarnation, want = fields
        if want < 0:
            raise ProtocolError("bad_fields", f"CLIENT_PING asking for {want} bytes")
        self._welcome(route, client_id, self.credit.want(route, client_id, want, now) if want else 0)

    def _grant_wanted(self) -> None:
        """Tell the connections that asked for room and now have it (balancer/credit.py)."""
        for route, window, reserved in self.credit.grants(time.monotonic()):
            self._send(route, p.encode(MsgType.CREDIT, *window, reserved))

    def _on_bye(self, route: bytes, fields: list[Any], now: float) -> None:
        # The connection is done: its route is forgotten (its requests and their results stay).
        self._routes.pop(route, None)
        self._routes_old.pop(route, None)
        self.credit.forget(route, fields[0])

    def _on_cancel(self, route: bytes, fields: list[Any], now: float) -> None:
        """A client cancels one of its requests: it is answered by the request's RESULT (cancelled, or the
        result it already had); an unknown id by REJECTED."""
        client_id, incarnation, request_id = fields
        if self.sched.sessions.held_by(client_id, incarnation, now) is None:
            return  # not this process's client id: its own session's holder may cancel
        was, req = self.sched.cancel(client_id, request_id)
        if req is None:
            self._send(route, p.encode(MsgType.REJECTED, request_id, "cancel: no such request"))
        elif was == "finished" and req.body is not None:
            req.route = route
            self.sched.outbox.replies.append(req)

    # ---- out: results ------------------------------------------------------

    def flush(self) -> None:
        """Send what the scheduler finished: results held for full pipes first, in order."""
        if self.leaving.any:
            self.leaving.release()
        if self.held:
            self._retry_held()
        out = self.sched.outbox
        if out.replies:
            self._send_results(out.take_replies(), False)
        if out.replays:
            self._send_results(out.take_replays(), True)
        if self.credit.wanting:
            self._grant_wanted()

    def answer(self, req: Request | None, ok: bool, result: bytes) -> bool:
        """Send a node's result for `req` before the scheduler completes it; False if `req` is None.

        The RESULT says what complete() will record: processed or failed, on the node it ran on.
        """
        if req is None:
            return False
        if req.route is not None:  # else no route is known: the client's retry fetches it
            if self._mdp_clients and req.route in self._mdp_clients:
                self.mdp.answer(req.route, req, ok, result)
                return True
            items = [(req.request_id, _PROCESSED if ok else _FAILED, req.server_id, req.attempts, False, result)]
            self._deliver(req.client_id, req.route, p.batch_frames(_RESULT_BATCH, _RESULT, items), len(result))
        return True

    def tell_stopping(self) -> None:
        """Every client heard from lately is told to re-send to the next balancer."""
        shutdown = p.encode(MsgType.REJECTED, None, p.REASON_STOPPING)
        for route in [*self._routes, *self._routes_old]:
            self._send(route, shutdown)

    def _send(self, route: bytes, header: bytes) -> None:
        """One message to a client; counted when it is gone or its queue is full (a result stays remembered)."""
        failed = send_routed(self.sock, route, [header])
        if failed:
            self.incidents.count(f"client_{failed}")

    def _send_results(self, replies: list[Request], replay: bool) -> None:
        """One RESULT_BATCH per client (more only past the batch limits); a full pipe holds it."""
        if len(replies) == 1:  # a lone result, the latency path: no grouping to do
            if replies[0].route is not None:
                self._deliver_batch(replies[0].route, replies, replay)
            return
        by_route = grouped(replies, _route_of)
        by_route.pop(None, None)  # no route known for these: their client's retry fetches them
        for route, reqs in by_route.items():
            for batch in batches(reqs, _body_size):
                self._deliver_batch(route, batch, replay)

    def _deliver_batch(self, route: bytes, batch: list[Request], replay: bool) -> None:
        """A RESULT_BATCH, or the RESULT of one big result (limits.LONE_PAYLOAD_BYTES)."""
        if self._mdp_clients and route in self._mdp_clients:  # an empty dict's test while none is known
            self.mdp.deliver(route, batch)
            return
        items = [(r.request_id, r.status, r.server_id, r.attempts, replay, r.body) for r in batch]
        size = sum(map(_body_size, batch))
        self._deliver(batch[0].client_id, route, p.batch_frames(_RESULT_BATCH, _RESULT, items), size)

    def _deliver(self, client_id: int, route: bytes, frames: list[Any], size: int) -> None:
        """Send a result batch, or hold it (and pause its client) when the client's pipe is full."""
        if len(frames) == 2:  # one big result in a frame of its own (batch_frames)
            frames[1] = self.leaving.frame(route, frames[1], size)
        held = self.held.get(client_id)
        if held is None:
            failed = send_routed(self.sock, route, frames)
            if not failed:
                if len(frames) == 2:
                    self.leaving.sent(route, client_id, size, frames[1])
                window = self.credit.answered(route, client_id)
                if window is not None:  # results went: the window is news only when it moved (balancer/credit.py)
                    self._send(route, p.encode(MsgType.CREDIT, *window, 0))
                return
            self.incidents.count(f"client_{failed}")
            if failed != "dropped":
                return  # no connection: the results stay remembered for the client's retry
            held = self.held[client_id] = deque()
            self._pause(client_id)
        if len(held) >= MAX_HELD_PER_CLIENT:
            self.incidents.count("client_dropped")
            return
        held.append((route, frames, size))
        self.sched.budget.charge(client_id, size, unsent=True)

    def _pause(self, client_id: int) -> None:
        self.sched.pause_client(client_id)
        self.incidents.count("clients_paused")
        reason = "its results pile up unread; its requests wait until it reads"
        self.incidents.refusal(ev.SYSTEM_CLIENT_PAUSED, client_id, reason, time.monotonic())

    def _retry_held(self) -> None:
        """Hand held results to pipes that drained; resume the clients left with none."""
        budget, sock = self.sched.budget, self.sock
        for client_id in list(self.held):
            held = self.held[client_id]
            while held:
                route, frames, size = held[0]
                failed = send_routed(sock, route, frames)
                if failed == "dropped":
                    break
                held.popleft()
                if failed:  # gone: its retries fetch the remembered results from the next connection
                    self.incidents.count(f"client_{failed}")
                if len(frames) == 2 and not failed:  # a big one: still charged until libzmq is done with it
                    self.leaving.track(route, client_id, size, frames[1])
                else:
                    budget.release(client_id, size, unsent=True)
            if not held:
                del self.held[client_id]
                self.sched.resume_client(client_id)

    # ---- routes ----------------------------------------------------------

    def _route(self, identity: bytes) -> bytes:
        """The one interned copy of a client's routing identity."""
        route = self._routes_old.pop(identity, None) or identity
        self._routes[identity] = route
        if len(self._routes) >= ROUTE_GENERATION_MAX:
            self._routes_old, self._routes = self._routes, {}
            self.credit.keep_only(self._routes, self._routes_old)
        return route

    def tick(self, now: float) -> None:
        """Once per heartbeat: re-size the windows from the rate and the live capacity; a new route generation
        when the current one is old enough."""
        sched = self.sched
        c = sched.counters
        finished = c["processed"] + c["failed"] + c["expired"] + c["cancelled"] + c["dead"]
        capacity = sum(node.capacity for node in sched.routes.values() if node.active)
        self.credit.tick(now, finished, capacity)
        self.credit.lapsed(self.sched.budget.expire_rooms(now), now)
        if self.credit.wanting:
            self._grant_wanted()
        if now - self._routes_swapped_at >= ROUTE_GENERATION_S:
            self._routes_old, self._routes = self._routes, {}
            self._routes_swapped_at = now
            self.credit.keep_only(self._routes, self._routes_old)
