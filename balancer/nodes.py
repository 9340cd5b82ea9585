"""The node table: who is serving, as which incarnation, with what load.

Pure, like the scheduler that owns it: no sockets, time passed in. It keys
nodes by id and by route, ranks the free ones in a heap, and enforces
sessions: a node id belongs to one incarnation at a time. A HELLO from the
holder again is a resync; a HELLO from another incarnation is refused while
the holder is alive, and takes over (fencing the holder) once it has been
silent past liveness. Heartbeats list the tickets a node holds, so work lost
in a dropped connection is found within two heartbeats.

An admin's `down` or `drain` is kept by node id until an admin's `up`: a node
that dies and rejoins, reconnects or is replaced by a new process under its id
comes back in the state the admin left it in, not active.

Judged by the time the loop could listen. A node's silence is the balancer's
to explain when the balancer itself was not listening: its loop woke later
than it planned (SIGSTOP, a starved host) or ran an iteration far longer than
usual. The loop reports that time (`excuse`) and deadlines run on listening
time, wall time minus it, so a loop late by less than a heartbeat again and
again judges its nodes by what it could have heard. A stall long enough that
the nodes gave up on the silent balancer (their own liveness) also leaves them
sitting out a reconnect back-off (at most RECONNECT_BACKOFF_MAX_S, and no
longer than the stall): nobody is declared dead before that back-off and a
deadline have passed after the stall. The work of a node declared dead is
remembered by ticket (`ghosts`) for when it comes back holding it: that death
was false (see Scheduler.hello).

Methods that take work away from a node return the lost requests; the
scheduler re-queues them. Events go to the shared outbox.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from enum import Enum
from typing import Any

from balancer.records import Node, NodeState, Outbox, Request
from wire import events as ev
from wire.protocol import DEFAULT_SERVICE, RECONNECT_BACKOFF_MAX_S

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_ACTIVE = NodeState.ACTIVE

# Heartbeats in a row a ticket beyond the node's highest seen may be missing before it counts as lost.
MISSES_TO_LOSE = 3
# Routes of replaced incarnations remembered to answer FENCED; the oldest are forgotten.
MAX_FENCED = 4096
# Tickets of nodes declared dead remembered for their return (`ghosts`); the oldest nodes' are forgotten.
MAX_GHOST_TICKETS = 65_536


class Joined(Enum):
    """What a HELLO led to."""

    JOINED = "joined"  # a new session for this id
    RESYNCED = "resynced"  # the holder again: its work was checked against what it holds
    REFUSED = "refused"  # another live incarnation holds the id
    FENCED = "fenced"  # this incarnation was replaced; it must exit


class Refused(Exception):
    """A HELLO the balancer will not take: `fenced` when this incarnation was replaced."""

    def __init__(self, reason: str, fenced: bool, holder: tuple[int | None, str | None] = (None, None)) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fenced = fenced
        self.holder = holder  # (pid, host) of the process that holds the id, when refused


class NodeTable:
    """Nodes by id and route, the free-node heap, and the fenced routes."""

    def holder(self, node_id: int | None) -> tuple[int | None, str | None]:
        """The pid and host of the process holding a node id, for a refusal."""
        node = self.nodes.get(node_id) if node_id is not None else None
        return (node.pid, node.host) if node is not None else (None, None)

    def __init__(self, outbox: Outbox, heartbeat_s: float, liveness: int) -> None:
        self.outbox = outbox
        self.deadline_s = heartbeat_s * liveness
        # Seconds the loop could not listen, in all (`excuse`): a node's expires_at is in listening
        # time, the monotonic clock minus these.
        self.deaf_s = 0.0
        # A stall at least this long may have made the nodes give up on the balancer (they heard nothing
        # for their liveness, counting from the last ping, up to a heartbeat before it).
        self._gave_up_after = max(heartbeat_s, self.deadline_s - heartbeat_s)
        # Listening time before which no node is judged: the back-off nodes may sit out after such a stall.
        self._judge_from = 0.0
        # Routes of nodes declared dead -> {ticket: (client_id, request_id)} of the work they held then.
        self.ghosts: OrderedDict[Any, dict[int, tuple[int, int]]] = OrderedDict()
        self._ghost_tickets = 0
        self.nodes: dict[int, Node] = {}
        self.routes: dict[Any, Node] = {}
        self.fenced: OrderedDict[Any, str] = OrderedDict()
        # Node ids an admin took out of service (DOWN or DRAINING), kept across deaths and rejoins.
        self._admin_states: dict[int, NodeState] = {}
        # Free nodes ranked per service they offer (see push).
        self._heaps: dict[str, list[tuple[float, int, int, Node]]] = {}
        self._offered: dict[str, int] = {}  # service -> live nodes that offer it
        self._push = 0

    # ---- sessions ---------------------------------------------------------

    def hello(
        self, route: Any, node_id: int | None, spec: tuple[Any, ...], held: list[int], now: float
    ) -> tuple[Joined, Node | str, list[Request]]:
        """Admit, resync, refuse or fence a node saying HELLO; spec is (capacity, pid, host, incarnation,
        max_seen[, services])."""
        capacity, pid, host, incarnation, max_seen = spec[:5]
        lost: list[Request] = []
        known = self.routes.get(route)
        if known is not None:
            if known.incarnation == incarnation and node_id in (None, known.node_id):
                self._resync(known, held, max_seen, now)
                return Joined.RESYNCED, known, []
            lost = self.drop(known, ev.NODE_LEFT)  # one identity, another session: the old one is over
        reason = self.fenced.get(route)
        if reason is not None:
            return Joined.FENCED, reason, lost
        node_id = self._free_id() if node_id is None else node_id
        holder = self.nodes.get(node_id)
        if holder is not None and holder.incarnation == incarnation and holder.state is not NodeState.DEAD:
            self._move(holder, route)  # the same process on a fresh identity
            self._resync(holder, held, max_seen, now)
            return Joined.RESYNCED, holder, lost
        if holder is not None and holder.incarnation != incarnation:
            if holder.state is not NodeState.DEAD and not self._silent(holder, now):
                return Joined.REFUSED, f"server id {node_id} is in use by pid {holder.pid} on host {holder.host}", lost
            lost += self._replace(holder, pid, host)
        node = Node(node_id, route, max(1, capacity), pid, host, incarnation, now - self.deaf_s + self.deadline_s, now)
        if len(spec) > 5:
            node.services = spec[5]
        for service in node.services:
            self._offered[service] = self._offered.get(service, 0) + 1
        node.heaps = tuple(self._heap_of(service) for service in node.services)
        self.nodes[node_id] = node
        self.routes[route] = node
        self.outbox.events.append((ev.NODE_JOINED, node_id, node.capacity, pid, host))
        kept = self._admin_states.get(node_id)
        if kept is not None:
            node.state = kept
            self.outbox.events.append((ev.NODE_KEPT_OUT, node_id, kept.value))
        self.refresh(node)
        return Joined.JOINED, node, lost

    def _replace(self, holder: Node, pid: int, host: str) -> list[Request]:
        """A newcomer takes over a silent holder's id: fence the holder, take back its work."""
        lost = [] if holder.state is NodeState.DEAD else self.drop(holder, ev.NODE_REPLACED, pid, host)
        self.fenced[holder.route] = f"server id {holder.node_id} was taken over by pid {pid} on host {host}"
        while len(self.fenced) > MAX_FENCED:
            self.fenced.popitem(last=False)
        return lost

    def _move(self, node: Node, route: Any) -> None:
        self.routes.pop(node.route, None)
        node.route = route
        self.routes[route] = node

    def _resync(self, node: Node, held: list[int], max_seen: int, now: float) -> None:
        """The holder said HELLO again, on a fresh connection: what it saw pass and does not hold finished or
        was lost with its old connection, and nothing is taken back yet.

        Its DONE may still come on the old connection after this HELLO: a ROUTER reads its connections in
        turn, not in the order things happened (a balancer stopped 5 s read a node's HELLO before the DONEs
        its old connection brought, re-queued 7 finished requests and ran them again). So they count as
        missing, and the first heartbeat on the new connection, which comes a heartbeat after the HELLO,
        takes back those still running here and not held there (see `heartbeat`). WORK above the highest
        ticket it has seen may have been sent after its HELLO left; the heartbeats settle those too.
        """
        self.touch(node, now)
        keep = set(held)
        missing = node.missing
        for ticket in node.in_flight:
            if ticket not in keep and ticket <= max_seen:
                missing[ticket] = missing.get(ticket, 0) + 1

    def heartbeat(
        self, route: Any, report: tuple[int, int, int, int], held: list[int] | None, mark: int, now: float
    ) -> Any:
        """A load report (in_flight, handled, dropped, max_seen) listing held tickets; returns (node, lost).

        WORK reaches a node in ticket order on one connection and its DONEs come back
        ahead of the heartbeat, so a ticket up to the highest the node has seen that it
        neither holds nor answered was lost on the way (a dropped connection takes what
        was in it): it goes back to the queue at once. A ticket above that may still be in
        transit; once it had an interval to arrive and is missing from MISSES_TO_LOSE
        heartbeats in a row, it is taken as lost too (its connection dropped with no later
        WORK behind it).
        """
        node = self.seen(route, now)
        if node is None:
            return None, []
        # The node's own counts of in-flight and handled work are not kept: its held tickets say more.
        _in_flight, _handled, node.reported_dropped, max_seen = report
        prev_mark, node.ticket_mark = node.ticket_mark, mark
        if held is None:
            return node, []  # a report without its tickets checks nothing
        keep = set(held)
        missing = node.missing
        lost_tickets = []
        for ticket in node.in_flight:
            if ticket in keep or (ticket > prev_mark and ticket > max_seen):
                continue
            count = missing.get(ticket, 0) + 1
            if ticket <= max_seen or count >= MISSES_TO_LOSE:
                lost_tickets.append(ticket)
            missing[ticket] = count
        for ticket in [t for t in missing if t in keep or t not in node.in_flight]:
            del missing[ticket]
        lost = self._take(node, lost_tickets)
        if lost:
            self.outbox.events.append((ev.NODE_RESYNCED, node.node_id, len(lost)))
        return node, lost

    def _take(self, node: Node, tickets: list[int]) -> list[Request]:
        lost = [node.in_flight.pop(t) for t in sorted(tickets)]
        for ticket in tickets:
            node.missing.pop(ticket, None)
        if lost:
            self.refresh(node)
        return lost

    # ---- liveness -----------------------------------------------------------

    def touch(self, node: Node, now: float) -> None:
        node.expires_at = now - self.deaf_s + self.deadline_s
        node.last_seen = now
        if not node.reachable:
            node.reachable = True
            self.refresh(node)

    def alive(self, node: Node, now: float) -> None:
        """A sign of life that changes nothing else: not its reachability, not its rank (a Majordomo worker,
        heard from or vouched for by its connection while it runs, balancer/majordomo.py)."""
        node.expires_at = now - self.deaf_s + self.deadline_s
        node.last_seen = now

    def finished(self, node: Node, now: float) -> None:
        """A node's result: a sign of life, and a free slot that may rank it again."""
        node.expires_at = now - self.deaf_s + self.deadline_s
        node.last_seen = now
        node.reachable = True
        self.refresh(node)

    def seen(self, route: Any, now: float) -> Node | None:
        """Any message from a node is a sign of life; None if it is unknown."""
        node = self.routes.get(route)
        if node is not None:
            self.touch(node, now)
        return node

    def unreachable(self, node: Node) -> None:
        """A send found no connection: give it nothing more until it is heard from."""
        node.reachable = False
        node.heap_seq = -1

    def excuse(self, seconds: float, now: float) -> None:
        """The loop could not listen for `seconds`, up to `now`: no node's silence counts for them.

        A stall long enough that the nodes may have given up on the balancer also gives them, before
        anyone is judged, the reconnect back-off they may be sitting out (no longer than the stall,
        at most RECONNECT_BACKOFF_MAX_S) and then a deadline to say HELLO again.
        """
        self.deaf_s += seconds
        if seconds >= self._gave_up_after:
            back_off = min(seconds, RECONNECT_BACKOFF_MAX_S)
            self._judge_from = max(self._judge_from, now - self.deaf_s + back_off + self.deadline_s)

    def _silent(self, node: Node, now: float) -> bool:
        """Silent past its deadline, in listening time (and not within a stall's back-off)."""
        heard = now - self.deaf_s
        return node.expires_at < heard and heard >= self._judge_from

    def judging(self, now: float) -> bool:
        """False while the loop's own stall excuses its nodes (they may be sitting out a reconnect back-off)."""
        return now - self.deaf_s >= self._judge_from

    def overdue(self, now: float) -> bool:
        """True when `expire(now)` would declare some node dead (the loop reads its sockets first)."""
        heard = now - self.deaf_s
        return heard >= self._judge_from and any(n.expires_at < heard for n in self.routes.values())

    def expire(self, now: float) -> list[tuple[Node, list[Request]]]:
        """Nodes silent past their deadline (in listening time), declared dead, each with the work it held."""
        heard = now - self.deaf_s
        if heard < self._judge_from:
            return []
        dead = [n for n in self.routes.values() if n.expires_at < heard]
        return [(node, self.dead(node, ev.NODE_DEAD, now)) for node in dead]

    def dead(self, node: Node, kind: str, now: float) -> list[Request]:
        """Declare a node dead (silent past its deadline, or its connection gone): its work, also remembered
        for when the node comes back holding it (a death that was false: Scheduler.hello)."""
        if node.in_flight:
            self._haunt(node)
        return self.drop(node, kind, now - node.last_seen)

    def _haunt(self, node: Node) -> None:
        """Remember what a node held as it was declared dead, for when it comes back holding it."""
        tickets = {t: (req.client_id, req.request_id) for t, req in node.in_flight.items()}
        old = self.ghosts.pop(node.route, None)
        self._ghost_tickets += len(tickets) - (len(old) if old else 0)
        self.ghosts[node.route] = tickets
        while self._ghost_tickets > MAX_GHOST_TICKETS and self.ghosts:
            self._ghost_tickets -= len(self.ghosts.popitem(last=False)[1])

    def take_ghosts(self, route: Any) -> dict[int, tuple[int, int]]:
        """The tickets the node on this route held when it was declared dead ({} if none); forgotten now."""
        tickets = self.ghosts.pop(route, None)
        if tickets is None:
            return {}
        self._ghost_tickets -= len(tickets)
        return tickets

    def drop(self, node: Node, kind: str, *details: Any) -> list[Request]:
        """Take a node out of service for good; return its work."""
        lost = self.take_all(node)
        if node.state is not NodeState.DEAD:
            for service in node.services:
                self._offered[service] -= 1
        node.state = NodeState.DEAD
        node.heap_seq = -1
        self.routes.pop(node.route, None)
        self.outbox.events.append((kind, node.node_id, *details, len(lost)))
        return lost

    @staticmethod
    def take_all(node: Node) -> list[Request]:
        # Tickets grow in dispatch order, so this keeps the lost requests' order.
        lost = [req for _ticket, req in sorted(node.in_flight.items())]
        node.in_flight.clear()
        node.missing.clear()
        return lost

    def _free_id(self) -> int:
        """The lowest id no live node holds and no admin took out of service (a newcomer would stay out)."""
        node_id = 0
        while (
            node_id in self.nodes and self.nodes[node_id].state is not NodeState.DEAD
        ) or node_id in self._admin_states:
            node_id += 1
        return node_id

    def live(self, node_id: int) -> Node:
        """The node with this id, for an admin command; KeyError with the reason otherwise."""
        node = self.nodes.get(node_id)
        if node is None:
            raise KeyError(f"Server {node_id} not found")
        if node.state is NodeState.DEAD:
            kept = self._admin_states.get(node_id)
            also = f" (it will be {kept.value} when it rejoins: an admin's choice holds until zlb up)" if kept else ""
            raise KeyError(f"Server {node_id} is dead; start it again with zlb server --id {node_id}{also}")
        return node

    def admin_state(self, node_id: int) -> NodeState | None:
        """DOWN or DRAINING when an admin took this id out of service (kept across rejoins), else None."""
        return self._admin_states.get(node_id)

    # ---- admin --------------------------------------------------------------

    def mark_down(self, node_id: int) -> tuple[Node, list[Request]]:
        """Stop using a node, now and after it rejoins; return it and the work it held (to re-queue)."""
        node = self.live(node_id)
        self._admin_states[node_id] = NodeState.DOWN
        node.state = NodeState.DOWN
        lost = self.take_all(node)
        self.refresh(node)
        self.outbox.events.append((ev.NODE_DOWN, node_id, len(lost)))
        return node, lost

    def mark_up(self, node_id: int) -> Node:
        """Put a down or draining node back in service."""
        node = self.live(node_id)
        self._admin_states.pop(node_id, None)
        node.state = NodeState.ACTIVE
        self.refresh(node)
        self.outbox.events.append((ev.NODE_UP, node_id))
        return node

    def drain(self, node_id: int, by_admin: bool = False) -> Node:
        """Send a node no new work; its in-flight work finishes. An admin's drain is kept across rejoins."""
        node = self.live(node_id)
        node.state = NodeState.DRAINING
        if by_admin:
            self._admin_states[node_id] = NodeState.DRAINING
        self.refresh(node)
        self.outbox.events.append((ev.NODE_DRAINING, node_id, len(node.in_flight)))
        if not node.in_flight:
            self.outbox.events.append((ev.NODE_DRAINED, node_id))
        return node

    # ---- the free-node heap ---------------------------------------------------

    def refresh(self, node: Node) -> None:
        """Re-rank a node after its load or state changed."""
        if node.state is _ACTIVE and node.reachable and len(node.in_flight) < node.capacity:
            self.push(node)
        else:
            node.heap_seq = -1

    def push(self, node: Node) -> None:
        """Rank a free node by load ratio, ties to the most recently assigned; older entries go stale.

        The tie rule keeps one-at-a-time traffic on one warm node: a node process woken for
        every fourth request runs with cold caches, which cost a sequential client 10% of
        its round trip (docs/PERFORMANCE.md). Any load spreads the work: a node with work
        in flight ranks behind every idle one.

        One heap per service: a node is ranked in the heap of each service it offers, every entry
        with the same push number, so taking it from one heap makes its entries in the others stale.
        """
        self._push += 1
        node.heap_seq = self._push
        key = (len(node.in_flight) / node.capacity, -node.last_assigned, self._push, node)
        for heap in node.heaps:  # one, unless the node offers several services
            heapq.heappush(heap, key)
            if len(heap) > 4 * len(self.nodes) + 64:
                heap[:] = [e for e in heap if e[3].heap_seq == e[2]]  # in place: nodes hold this list
                heapq.heapify(heap)

    def _heap_of(self, service: str) -> list[tuple[float, int, int, Node]]:
        heap = self._heaps.get(service)
        if heap is None:
            heap = self._heaps[service] = []
        return heap

    def pop_free(self, service: str = DEFAULT_SERVICE) -> Node | None:
        """The least-loaded free node that offers `service`, taken off the heaps (push it back if it stays free)."""
        heap = self._heaps.get(service)
        while heap:
            entry = heapq.heappop(heap)
            node = entry[3]
            if node.heap_seq == entry[2]:
                node.heap_seq = -1
                return node
        return None

    def offering(self, service: str) -> int:
        """How many live nodes (active or not) offer `service` (kept as nodes join and die: O(1))."""
        return self._offered.get(service, 0)
