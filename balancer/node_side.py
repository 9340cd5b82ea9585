"""The balancer's node side: sessions, work and results on the backend ROUTER.

A mixin of the Balancer (balancer/loop.py), which owns the socket and the
scheduler; these methods only decode, call the scheduler and send.
"""

from __future__ import annotations

from typing import Any

from balancer.records import NodeState
from balancer.scheduler import Refused
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import batch_frames, batches, grouped
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received, send_routed

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_WORK, _WORK_BATCH, _DONE_BATCH = MsgType.WORK, MsgType.WORK_BATCH, MsgType.DONE_BATCH


def _node_of(assignment: tuple[Any, int, Any]) -> Any:
    return assignment[0]


def _payload_size(assignment: tuple[Any, int, Any]) -> int:
    return len(assignment[2].body)


class NodeSide:
    """Backend handlers of the Balancer."""

    _answer_first = False  # set per drain (_drain_backend)

    def _send_work(self, assignments: list[Any]) -> bool:
        """One WORK_BATCH per node; a node with no connection gets its work back in the queue. True if all left."""
        if len(assignments) == 1:  # a lone request, the latency path: no grouping to do
            return self._send_batch(assignments[0][0], assignments)
        all_sent = True
        for node, assigned in grouped(assignments, _node_of).items():
            for batch in batches(assigned, _payload_size):
                all_sent = self._send_batch(node, batch) and all_sent
        return all_sent

    def _send_batch(self, node: Any, batch: list[Any]) -> bool:
        """A WORK_BATCH, or the WORK of one big payload (limits.LONE_PAYLOAD_BYTES); what cannot leave is re-queued."""
        items = [(t, r.client_id, r.request_id, r.priority, r.attempts, r.body) for _n, t, r in batch]
        if self._send_node(node.route, batch_frames(_WORK_BATCH, _WORK, items)):
            return True
        for _node, ticket, _req in batch:
            self.sched.undeliverable(node, ticket)
        return False

    def _send_node(self, route: bytes, frames: list[Any]) -> bool:
        """One message to a node; False (counted) when it has no connection or a full queue."""
        failed = send_routed(self.backend, route, frames)
        if failed:
            self._count(f"node_{failed}")
        return not failed

    # ---- backend: server nodes ------------------------------------------

    def _drain_backend(self, now: float, limit: int) -> None:
        decode = p.decode_routed
        budget = limits.DRAIN_ITEMS
        # Woken from idle for one message: a lone result goes to its client before the books are kept.
        # Not with a journal: a result may only leave once its record is written (balancer/journal.py).
        self._answer_first = limit == 1 and self.journal is None
        for frames in received(self.backend, limit, routed=True, max_bytes=limits.DRAIN_BYTES):
            try:
                msg_type, fields, body = decode(frames)
                handler = self._node_handlers.get(msg_type)
                if handler is None:
                    raise ProtocolError("unknown_type", f"{msg_type.name} is not a node message")
            except ProtocolError as exc:
                self._bad_input("backend", exc, now)
                continue
            budget -= len(fields[0]) if msg_type is _DONE_BATCH else 1
            try:
                handler(self, frames[0], fields, body, now)
            except ProtocolError as exc:
                self._bad_input("backend", exc, now)
            except Exception as exc:  # noqa: BLE001 - a message we failed to foresee must not end the balancer
                self._bad_input("backend", ProtocolError("internal_error", f"{exc.__class__.__name__}: {exc}"), now)
            if budget <= 0:
                return  # the rest waits for the next iteration (limits.DRAIN_ITEMS; received() stops at DRAIN_BYTES)

    def _unknown_node(self, route: bytes) -> None:
        """A message from a route with no session: a fenced incarnation exits, anyone else says HELLO."""
        reason = self.sched.table.fenced.get(route)
        if reason is not None:
            self._count("fenced_messages")
            self._send_node(route, [p.encode(MsgType.FENCED, reason)])
        else:
            self._send_node(route, [p.encode(MsgType.RECONNECT, "unknown node; say HELLO")])

    def _on_done(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        self._on_done_batch(route, [[[fields[0], fields[1], body]]], None, now)

    def _on_done_batch(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        complete, limit = self.sched.complete, self.config.max_message_bytes
        unknown = False
        answer_first = self._answer_first and len(fields[0]) == 1
        for ticket, ok, result in fields[0]:
            if len(result) > limit:  # a node that was not told the limit (the node checks it first)
                ok, result = False, limits.too_large("result", len(result), limit)
            answered = answer_first and self._answer(self.sched.finishing(route, ticket), ok, result)
            if complete(route, ticket, ok, result, now, answered) is None:
                unknown = True
        if unknown and route not in self.sched.routes:
            self._unknown_node(route)

    def _on_hello(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        node_id, capacity, pid, host, incarnation, max_seen = fields
        if (
            capacity < 1
            or (node_id is not None and node_id < 0)
            or limits.bad_host(host)
            or not 0 <= pid <= limits.MAX_PID
        ):
            detail = f"HELLO with capacity {capacity}, id {node_id}, pid {pid}, host {host!r:.80}"
            raise ProtocolError("bad_fields", detail)
        held = p.decode_tickets(body)
        try:
            node = self.sched.hello(route, node_id, capacity, pid, host, now, incarnation, held, max_seen)
        except Refused as refusal:
            if not refusal.fenced:
                self._refusal(ev.NODE_REFUSED, node_id, refusal.reason, now)
            if refusal.fenced:
                self._count("fenced_messages")
            if refusal.fenced:
                self._send_node(route, [p.encode(MsgType.FENCED, refusal.reason)])
            else:
                self._send_node(route, [p.encode(MsgType.REFUSED, refusal.reason, *refusal.holder)])
            return
        cfg = self.config
        welcome = p.encode(MsgType.WELCOME, node.node_id, cfg.heartbeat_ms, cfg.liveness, cfg.max_message_bytes)
        self._send_node(route, [welcome])

    def _on_heartbeat(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        held = p.decode_tickets(body)
        if self.sched.heartbeat(route, fields[0], fields[1], now, fields[2], held, fields[3]) is None:
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
        MsgType.DONE_BATCH: _on_done_batch,
        MsgType.HELLO: _on_hello,
        MsgType.HEARTBEAT: _on_heartbeat,
        MsgType.LEAVING: _on_leaving,
        MsgType.BYE: _on_bye,
    }
