"""The balancer's client side: sessions, submissions and results on the frontend ROUTER.

A mixin of the Balancer (balancer/loop.py), which owns the socket and the
scheduler; these methods only decode, call the scheduler and send.
"""

from __future__ import annotations

from typing import Any

from balancer.records import Submitted, conflict_reason
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import batch_frames, batches, grouped
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received, send_routed

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_SUBMIT, _SUBMIT_BATCH, _RESULT_BATCH = MsgType.SUBMIT, MsgType.SUBMIT_BATCH, MsgType.RESULT_BATCH
_RESULT = MsgType.RESULT
_QUEUED, _DUPLICATE, _FINISHED = Submitted.QUEUED, Submitted.DUPLICATE, Submitted.FINISHED
_PROCESSED, _FAILED = p.PROCESSED, p.FAILED


def _route_of(req: Any) -> Any:
    return req.route


def _body_size(req: Any) -> int:
    body = req.body
    return 0 if body is None else len(body)


class ClientSide:
    """Frontend handlers of the Balancer."""

    def _send_client(self, route: bytes, header: bytes, body: Any = None) -> bool:
        """One message to a client; False (counted) when it is gone or its queue is full.

        A result that cannot leave stays remembered: the client's retry fetches it.
        """
        failed = send_routed(self.frontend, route, [header] if body is None else [header, body])
        if failed:
            self._count(f"client_{failed}")
        return not failed

    def _send_results(self, replies: list[Any], replay: bool) -> None:
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

    def _deliver_batch(self, route: bytes, batch: list[Any], replay: bool) -> None:
        """A RESULT_BATCH, or the RESULT of one big result (limits.LONE_PAYLOAD_BYTES); a full pipe holds it
        and pauses its client (balancer/pressure.py)."""
        items = [(r.request_id, r.status, r.server_id, r.attempts, replay, r.body) for r in batch]
        self._deliver(
            batch[0].client_id, route, batch_frames(_RESULT_BATCH, _RESULT, items), sum(map(_body_size, batch))
        )

    def _answer(self, req: Any, ok: bool, result: bytes) -> bool:
        """Send a node's result for `req` before the scheduler completes it; False if `req` is None.

        The RESULT says what complete() will record: processed or failed, on the node it ran on.
        """
        if req is None:
            return False
        if req.route is not None:  # else no route is known: the client's retry fetches it
            items = [(req.request_id, _PROCESSED if ok else _FAILED, req.server_id, req.attempts, False, result)]
            self._deliver(req.client_id, req.route, batch_frames(_RESULT_BATCH, _RESULT, items), len(result))
        return True

    # ---- frontend: clients ----------------------------------------------

    def _drain_frontend(self, now: float, limit: int) -> None:
        decode = p.decode_routed
        submit, submit_batch = _SUBMIT, _SUBMIT_BATCH
        budget = limits.DRAIN_ITEMS
        for frames in received(self.frontend, limit, routed=True, max_bytes=limits.DRAIN_BYTES):
            try:
                msg_type, fields, body = decode(frames)
                if msg_type is not submit_batch and msg_type is not submit and msg_type not in self._client_handlers:
                    raise ProtocolError("unknown_type", f"{msg_type.name} is not a client message")
            except ProtocolError as exc:
                self._bad_input("frontend", exc, now)
                self._send_client(frames[0], p.encode(MsgType.REJECTED, None, f"bad message: {exc}"))
                continue
            route = self._routes.get(frames[0]) or self._route(frames[0])
            if msg_type is submit_batch:
                client_id, incarnation, items = fields
                budget -= len(items)
                for request_id, priority, payload in items:
                    if not self._on_submit(route, client_id, request_id, priority, incarnation, payload, now):
                        break  # the id is another process's: so is the rest of the batch
            elif msg_type is submit:
                budget -= 1
                client_id, request_id, priority, incarnation = fields
                self._on_submit(route, client_id, request_id, priority, incarnation, body, now)
            else:
                try:
                    self._client_handlers[msg_type](self, route, fields, now)
                except ProtocolError as exc:
                    self._bad_input("frontend", exc, now)
            if budget <= 0:
                return  # the rest waits for the next iteration: nodes and admins are served in between

    def _on_submit(
        self, route: bytes, client_id: int, request_id: int, priority: int, incarnation: int, body: Any, now: float
    ) -> bool:
        """Hand one submission to the scheduler and answer what it refused; False if the id is in use."""
        if client_id < 0 or request_id < 0:  # the Client and the CLI cannot name one: garbage, or another tool
            reason = f"client id {client_id} or request id {request_id} is out of range (0 to 2**64 - 1)"
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, reason))
            return True
        if len(body) > self.config.max_message_bytes:
            self._count("payloads_too_large")
            reason = limits.too_large("payload", len(body), self.config.max_message_bytes).decode()
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, reason))
            return True
        if not self.sched.budget.could_hold(len(body)):  # never, however long the client waits: not busy
            self._count("payloads_too_large")
            reason = f"payload of {len(body)} bytes is over the balancer's whole --max-memory-mb"
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, reason))
            return True
        outcome = self.sched.submit(client_id, request_id, priority, route, body, incarnation, now)
        if outcome is _QUEUED or outcome is _DUPLICATE or outcome is _FINISHED:
            return True
        if outcome is Submitted.ID_IN_USE:
            self._claim_session(route, (client_id, incarnation, None, None), now, welcome=False)
            return False
        if outcome is Submitted.BUSY:
            reason = self.sched.last_refusal
            self._refusal(ev.SYSTEM_BUSY, client_id, reason, now)
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, reason))
        elif outcome is Submitted.CONFLICT:
            reason = conflict_reason(client_id, request_id)
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, reason))
        else:
            self._send_client(route, p.encode(MsgType.REJECTED, request_id, self.sched.queue_full_reason()))
        return True

    def _claim_session(self, route: bytes, claim: tuple[Any, ...], now: float, welcome: bool) -> None:
        """Open or renew the session (client_id, incarnation, pid, host); answer REFUSED, or WELCOME if asked."""
        reason = self.sched.sessions.hello(*claim, now)
        if reason:
            self._refusal(ev.SYSTEM_CLIENT_REFUSED, claim[0], reason, now)
            self._send_client(route, p.encode(MsgType.REFUSED, reason, None, None))
        elif welcome:
            lease_ms = int(self.sched.client_lease_s * 1000)
            self._send_client(route, p.encode(MsgType.CLIENT_WELCOME, lease_ms, self.config.max_message_bytes))

    def _on_client_hello(self, route: bytes, fields: list[Any], now: float) -> None:
        if limits.bad_host(fields[3]) or not 0 <= fields[2] <= limits.MAX_PID:
            raise ProtocolError("bad_fields", f"CLIENT_HELLO with pid {fields[2]} and host {fields[3]!r:.80}")
        self._claim_session(route, tuple(fields), now, welcome=True)

    def _on_client_ping(self, route: bytes, fields: list[Any], now: float) -> None:
        self._claim_session(route, (fields[0], fields[1], None, None), now, welcome=False)

    def _on_client_bye(self, route: bytes, fields: list[Any], now: float) -> None:
        self.sched.sessions.bye(fields[0], fields[1])
        self._routes.pop(route, None)
        self._routes_old.pop(route, None)

    _client_handlers = {
        MsgType.CLIENT_HELLO: _on_client_hello,
        MsgType.CLIENT_PING: _on_client_ping,
        MsgType.CLIENT_BYE: _on_client_bye,
    }
