"""The balancer's node side: sessions, work and results on the backend ROUTER.

A mixin of the Balancer (balancer/loop.py), which owns the socket and the
scheduler; these methods only decode, call the scheduler and send.
"""

from __future__ import annotations

from typing import Any

import zmq

from balancer.clients import _MORE_NOWAIT, _NOWAIT, DRAIN_BATCH
from balancer.records import NodeState
from balancer.scheduler import Refused
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError


class NodeSide:
    """Backend handlers of the Balancer."""

    def _send_work(self, assignments: list[Any]) -> bool:
        """Send WORK; a node with no connection gets its work back in the queue. True if all left."""
        encode = p.encode
        work = MsgType.WORK
        all_sent = True
        for node, ticket, req in assignments:
            header = encode(work, ticket, req.client_id, req.request_id, req.priority, req.attempts)
            if not self._send_node(node.route, [header, req.body]):
                self.sched.undeliverable(node, ticket)
                all_sent = False
        return all_sent

    def _send_node(self, route: bytes, frames: list[Any]) -> bool:
        """One message to a node; False (counted) when it has no connection or a full queue."""
        send = self.backend.send
        try:
            # EAGAIN and EHOSTUNREACH can only come on the first frame, before anything is queued.
            send(route, _MORE_NOWAIT)
            for frame in frames[:-1]:
                send(frame, _MORE_NOWAIT)
            send(frames[-1], _NOWAIT, copy=False)
        except zmq.Again:
            self._count("node_send_dropped")
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._count("node_unroutable")
            return False
        return True

    # ---- backend: server nodes ------------------------------------------

    def _drain_backend(self, now: float) -> None:
        recv = self.backend.recv_multipart
        decode = p.decode
        for _ in range(DRAIN_BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if len(frames) < 2:
                    raise ProtocolError("bad_frames", "empty message")
                msg_type, fields = decode(frames[1])
                body = p.split_body(msg_type, frames[1:])
                handler = self._node_handlers.get(msg_type)
                if handler is None:
                    raise ProtocolError("unknown_type", f"{msg_type.name} is not a node message")
            except ProtocolError as exc:
                self._bad_input("backend", exc, now)
                continue
            try:
                handler(self, frames[0], fields, body, now)
            except ProtocolError as exc:
                self._bad_input("backend", exc, now)
            except Exception as exc:  # noqa: BLE001 - a message we failed to foresee must not end the balancer
                self._bad_input("backend", ProtocolError("internal_error", f"{exc.__class__.__name__}: {exc}"), now)

    def _unknown_node(self, route: bytes) -> None:
        """A message from a route with no session: a fenced incarnation exits, anyone else says HELLO."""
        reason = self.sched.table.fenced.get(route)
        if reason is not None:
            self._count("fenced_messages")
            self._send_node(route, [p.encode(MsgType.FENCED, reason)])
        else:
            self._send_node(route, [p.encode(MsgType.RECONNECT, "unknown node; say HELLO")])

    def _on_done(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        if self.sched.complete(route, fields[0], fields[1], body, now) is None and route not in self.sched.routes:
            self._unknown_node(route)

    def _on_hello(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        node_id, capacity, pid, host, incarnation = fields
        if capacity < 1:
            raise ProtocolError("bad_fields", f"capacity {capacity} < 1")
        held = p.decode_tickets(body)
        try:
            node = self.sched.hello(route, node_id, capacity, pid, host, now, incarnation, held)
        except Refused as refusal:
            if refusal.fenced:
                self._count("fenced_messages")
            if refusal.fenced:
                self._send_node(route, [p.encode(MsgType.FENCED, refusal.reason)])
            else:
                self._send_node(route, [p.encode(MsgType.REFUSED, refusal.reason, *refusal.holder)])
            return
        welcome = p.encode(MsgType.WELCOME, node.node_id, self.config.heartbeat_ms, self.config.liveness)
        self._send_node(route, [welcome])

    def _on_heartbeat(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        held = p.decode_tickets(body)
        if self.sched.heartbeat(route, fields[0], fields[1], now, fields[2], held) is None:
            self._unknown_node(route)

    def _on_leaving(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        node = self.sched.seen(route, now)
        if node is None:
            self._unknown_node(route)
        elif node.state is NodeState.ACTIVE:
            self.sched.drain(node.node_id)

    def _on_bye(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        self.sched.bye(route)

    _node_handlers = {
        MsgType.DONE: _on_done,
        MsgType.HELLO: _on_hello,
        MsgType.HEARTBEAT: _on_heartbeat,
        MsgType.LEAVING: _on_leaving,
        MsgType.BYE: _on_bye,
    }
