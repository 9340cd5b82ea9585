"""The backend: server nodes' sessions, work out, results in.

NodeSide decodes what nodes send, calls the scheduler and sends work; the
loop (balancer/loop.py) owns the socket and hands it over. Results go on to
their clients through the ClientSide (balancer/clients.py), the only part
that sends to clients.

A big payload (over limits.LONE_PAYLOAD_BYTES) goes out in the very frame it
came in (libzmq shares it, no copy; the payload stays charged to the memory
budget until its DONE), and room for its result is reserved in the budget
from its WORK until its DONE, or until the request leaves its node otherwise
(checked once per heartbeat): the result arrives while the payload is held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from balancer.clients import ClientSide
from balancer.config import BalancerConfig
from balancer.incidents import Incidents
from balancer.majordomo import Majordomo
from balancer.records import Node, NodeState, Request
from balancer.scheduler import Refused, Scheduler
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import batches, grouped
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received, send_routed

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_WORK, _WORK_BATCH, _DONE_BATCH = MsgType.WORK, MsgType.WORK_BATCH, MsgType.DONE_BATCH

Assignment = tuple[Node, int, Request]


def _services(offered: list[Any]) -> tuple[str, ...]:
    """The services a HELLO lists, checked (ProtocolError): 1 to MAX_NODE_SERVICES valid names."""
    if not 1 <= len(offered) <= p.MAX_NODE_SERVICES:
        raise ProtocolError("bad_fields", f"HELLO with {len(offered)} services (1 to {p.MAX_NODE_SERVICES})")
    for name in offered:
        if p.service_error(name):
            raise ProtocolError("bad_fields", f"HELLO: {p.service_error(name)}")
    # The default service's name interned: the scheduler compares it by identity on its hot path.
    return tuple(dict.fromkeys(p.DEFAULT_SERVICE if name == p.DEFAULT_SERVICE else name for name in offered))


def _node_of(assignment: Assignment) -> Node:
    return assignment[0]


def _payload_size(assignment: Assignment) -> int:
    return len(assignment[2].body)


class NodeSide:
    """Backend handlers and work dispatch."""

    def __init__(
        self,
        sock: zmq.Socket,
        sched: Scheduler,
        incidents: Incidents,
        clients: ClientSide,
        config: BalancerConfig,
        mdp: Majordomo,
    ) -> None:
        self.sock = sock
        self.sched = sched
        self.incidents = incidents
        self.clients = clients
        self.config = config
        # Majordomo workers (balancer/majordomo.py), by route: its own frames in and out.
        self.mdp = mdp
        self._mdp_workers = mdp.workers
        # A lone result may reach its client before the books are kept, but not with a journal:
        # a result may only leave once its record is written (balancer/journal.py).
        self._may_answer_first = config.journal is None
        self._answer_first = False  # set per drain
        # An HA leader's: journal and ship now what is decided (balancer/loop.py). A lone result's record goes to
        # the standby before its books are kept: its answer waits for the APPLIED, not for the bookkeeping too.
        self.ship_now: Callable[[], None] | None = None
        self._ship_first = False  # set per drain
        # Without a journal, a node that reports gets its next work before anything else is done (the
        # loop clears this as it stops: a stopping balancer starts no new work).
        self.work_first = config.journal is None
        self._handlers = {
            MsgType.DONE: self._on_done,
            MsgType.DONE_BATCH: self._on_done_batch,
            MsgType.HELLO: self._on_hello,
            MsgType.HEARTBEAT: self._on_heartbeat,
            MsgType.LEAVING: self._on_leaving,
            MsgType.BYE: self._on_bye,
        }

    # ---- out: work ----------------------------------------------------------

    def dispatch(self) -> None:
        """Pair waiting requests with free nodes and send the work; what cannot leave is dispatched again."""
        dispatch = self.sched.dispatch
        while not self._send_work(dispatch(time.monotonic())):
            pass

    def _send_work(self, assignments: list[Assignment]) -> bool:
        """One WORK_BATCH per node; a node with no connection gets its work back in the queue. True if all left."""
        if len(assignments) <= 1:  # nothing to send, or a lone request, the latency path: no grouping to do
            return not assignments or self._send_batch(assignments[0][0], assignments)
        all_sent = True
        for node, assigned in grouped(assignments, _node_of).items():
            for batch in batches(assigned, _payload_size):
                all_sent = self._send_batch(node, batch) and all_sent
        return all_sent

    def _send_batch(self, node: Node, batch: list[Assignment]) -> bool:
        """A WORK_BATCH, or the WORK of one big payload (limits.LONE_PAYLOAD_BYTES); what cannot leave is re-queued."""
        if self._mdp_workers and node.route in self._mdp_workers:  # an empty dict's test while none is known
            return self.mdp.send_work(node, batch)
        items = [(t, r.client_id, r.request_id, r.priority, r.attempts, r.body) for _n, t, r in batch]
        frames = p.batch_frames(_WORK_BATCH, _WORK, items)
        if self._send(node.route, frames):
            return True
        for _node, ticket, _req in batch:
            self.sched.undeliverable(node, ticket)
        return False

    def send_cancels(self) -> None:
        """Tell nodes to stop work taken back from them (cancelled, or past its deadline)."""
        for route, ticket, reason in self.sched.outbox.take_cancels():
            if route in self._mdp_workers:
                self.mdp.stop(route, ticket)
            else:
                self._send(route, [p.encode(MsgType.CANCEL, ticket, reason)])

    def tick(self) -> None:
        """Once per heartbeat: ping every node."""
        self._to_all(p.encode(MsgType.PING))

    def probe(self, now: float) -> None:
        """A PING to every zlb node (MDP workers: Majordomo.probe): one whose route has no connection now is
        dead, its connection dropped (balancer/drops.py)."""
        workers, sched, ping = self._mdp_workers, self.sched, [p.encode(MsgType.PING)]
        gone = [r for r in sched.routes if r not in workers and send_routed(self.sock, r, ping) == "unroutable"]
        for route in gone:
            sched.disconnected(route, now)
            self.incidents.count("nodes_disconnected")

    def tell_stopping(self) -> None:
        """Every node is told to reconnect later: this balancer is going."""
        self._to_all(p.encode(MsgType.RECONNECT, p.REASON_STOPPING))

    def _to_all(self, message: bytes) -> None:
        """To every zlb node (MDP workers have their own heartbeat, Majordomo.tick)."""
        workers = self._mdp_workers
        for route in self.sched.routes:
            if route not in workers:
                self._send(route, [message])

    def _send(self, route: bytes, frames: list[Any]) -> bool:
        """One message to a node; False (counted) when it has no connection or a full queue."""
        failed = send_routed(self.sock, route, frames)
        if failed:
            self.incidents.count(f"node_{failed}")
        return not failed

    # ---- in: the backend ----------------------------------------------------

    def drain(self, now: float, limit: int) -> None:
        """Take up to `limit` messages (and limits.DRAIN_ITEMS results, DRAIN_BYTES of them)."""
        decode, handlers = p.decode_routed, self._handlers
        budget = limits.DRAIN_ITEMS
        # Woken from idle for one message: a lone result goes to its client before the books are kept.
        self._answer_first = limit == 1 and self._may_answer_first
        self._ship_first = limit == 1 and self.ship_now is not None
        # A result over LONE_PAYLOAD_BYTES stays the frame it came in (no copy); its RESULT sends that frame on.
        frames_over = limits.LONE_PAYLOAD_BYTES
        for frames in received(self.sock, limit, routed=True, max_bytes=limits.DRAIN_BYTES, frames_over=frames_over):
            try:
                msg_type, fields, body = decode(frames)
                handler = handlers.get(msg_type)
                if handler is None:
                    raise ProtocolError("unknown_type", f"{msg_type.name} is not a node message")
            except ProtocolError as exc:
                if not self.mdp.worker_message(frames, now):  # not zlb's: maybe a Majordomo worker's
                    self.incidents.bad("backend", exc, now)
                continue
            budget -= len(fields[0]) if msg_type is _DONE_BATCH else 1
            try:
                handler(frames[0], fields, body, now)
            except ProtocolError as exc:
                self.incidents.bad("backend", exc, now)
            except Exception as exc:  # noqa: BLE001 - a message we failed to foresee must not end the balancer
                self.incidents.bad("backend", ProtocolError("internal_error", f"{exc.__class__.__name__}: {exc}"), now)
            if budget <= 0:
                return  # the rest waits for the next iteration (limits.DRAIN_ITEMS; received() stops at DRAIN_BYTES)

    def _unknown_node(self, route: bytes) -> None:
        """A message from a route with no session: a fenced incarnation exits, anyone else says HELLO."""
        reason = self.sched.table.fenced.get(route)
        if reason is not None:
            self.incidents.count("fenced_messages")
            self._send(route, [p.encode(MsgType.FENCED, reason)])
        else:
            self._send(route, [p.encode(MsgType.RECONNECT, "unknown node; say HELLO")])

    def _on_done(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        self._on_done_batch(route, [[[fields[0], fields[1], body]]], None, now)

    def _on_done_batch(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        sched, limit = self.sched, self.config.max_message_bytes
        unknown = False
        # Work waits: the node's next WORK leaves before its results are answered (they go with the flush).
        # A node at capacity 1 is idle from its DONE to its next WORK, which is most of what bounds it.
        work_first = self.work_first and sched.has_queued()
        lone = len(fields[0]) == 1 and not work_first
        answer_first = self._answer_first and lone
        # Shipped alone only with nothing queued: under load a pass's records go as one batch (one RECORDS and
        # one APPLIED per pass, not one more per lone result).
        ship_first = self._ship_first and lone and not sched.has_queued()
        for ticket, ok, result in fields[0]:
            if len(result) > limit:  # a node that was not told the limit (the node checks it first)
                ok, result = False, limits.too_large("result", len(result), limit)
            answered = answer_first and self.clients.answer(sched.finishing(route, ticket), ok, result)
            journaled = ship_first and self._ship_completion(sched.finishing(route, ticket), ok, result)
            if sched.complete(route, ticket, ok, result, now, answered, journaled) is None:
                unknown = True
        if unknown and route not in sched.routes:
            self._unknown_node(route)
        elif work_first:
            self.dispatch()

    def _ship_completion(self, req: Request | None, ok: bool, result: Any) -> bool:
        """Journal and ship the record of `req`'s result now; False if there is none (a late result)."""
        if req is None or self.ship_now is None:
            return False
        self.sched.journal_completion(req, ok, result)
        self.ship_now()
        return True

    def _on_hello(self, route: bytes, fields: list[Any], body: Any, now: float) -> None:
        node_id, capacity, pid, host, incarnation, max_seen, *offered = fields
        if (
            capacity < 1
            or (node_id is not None and node_id < 0)
            or limits.bad_host(host)
            or not 0 <= pid <= limits.MAX_PID
        ):
            detail = f"HELLO with capacity {capacity}, id {node_id}, pid {pid}, host {host!r:.80}"
            raise ProtocolError("bad_fields", detail)
        services = _services(offered[0]) if offered else None
        held = p.decode_tickets(body)
        try:
            node = self.sched.hello(
                route, node_id, capacity, pid, host, now, incarnation, held, max_seen, services=services
            )
        except Refused as refusal:
            self._refused(route, node_id, refusal, now)
            return
        cfg = self.config
        welcome = p.encode(MsgType.WELCOME, node.node_id, cfg.heartbeat_ms, cfg.liveness, cfg.max_message_bytes)
        self._send(route, [welcome])

    def _refused(self, route: bytes, node_id: int | None, refusal: Refused, now: float) -> None:
        """A fenced incarnation is told so and exits; a newcomer whose id is held is told who holds it."""
        if refusal.fenced:
            self.incidents.count("fenced_messages")
            self._send(route, [p.encode(MsgType.FENCED, refusal.reason)])
        else:
            self.incidents.refusal(ev.NODE_REFUSED, node_id, refusal.reason, now)
            self._send(route, [p.encode(MsgType.REFUSED, refusal.reason, *refusal.holder)])

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
