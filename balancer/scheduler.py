"""The balancer's brain: a pure model of requests, client sessions and nodes.

No sockets, no clock, no logging. Methods take `now` (monotonic seconds) where
time matters and record what should happen in the outbox (balancer/records.py):
events, replies and replays for clients and, with --journal, journal records.
`dispatch()` returns the assignments to send. A request is named by
(client_id, request_id), an idempotency key within a client id. Sessions are in
balancer/sessions.py and balancer/nodes.py, the queue in balancer/waiting.py,
the memory budget in balancer/budget.py, queries in balancer/index.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from balancer import kept, records
from balancer.budget import MemoryBudget
from balancer.dead import DEFAULT_MAX_DEAD, DEFAULT_MAX_DEAD_BYTES, DeadLetters, Letter
from balancer.earlier import PAGE_BITS
from balancer.index import Arrivals, matching
from balancer.kept import KeptResults, resubmitted
from balancer.kept import body_size as _size
from balancer.nodes import Joined, NodeTable, Refused
from balancer.records import (
    ACCEPTED,
    COUNTERS,
    DEAD_LETTER,
    FINISHED,
    RESERVED,
    Node,
    NodeState,
    Outbox,
    Request,
    Submitted,
)  # fmt: skip
from balancer.services import MAX_SERVICES, Service
from balancer.sessions import ClientSessions
from balancer.timers import Timers, backoff_s
from balancer.waiting import WaitingQueue
from wire import events as ev
from wire.protocol import (
    ASSIGNED,
    CANCELLED,
    DEAD,
    DEFAULT_SERVICE,
    EXPIRED,
    FAILED,
    FINAL_STATUSES,
    PENDING,
    PROCESSED,
)  # fmt: skip

__all__ = ["ACCEPTED", "FINISHED", "Joined", "Node", "NodeState", "Refused", "Request", "Scheduler", "Submitted"]

DEFAULT_MAX_ATTEMPTS = 3
# Told to clients in CLIENT_WELCOME: with requests outstanding they ping at a third of it. A client id
# is a name held by no process (balancer/sessions.py), so this is a ping interval, not a lock's lease.
DEFAULT_CLIENT_LEASE_S = 10.0
# How often one request may be lost in transit before it fails: far more than connection resets
# or resync storms of a healthy node cost one request (tests: 10 in a row). Lost that often, the
# transport itself refuses it (a node that cannot take it, an answer too big to come back; sizes
# are checked before this last line) and it would go round for ever.
MAX_TRANSIT_LOSSES = 20

# Enum members bound once: in Python 3.11 reading one off its class costs five plain global lookups.
_QUEUED, _DRAINING = Submitted.QUEUED, NodeState.DRAINING
_PENDING = PENDING


def _finished_record(req: Request, status: str, result: Any) -> tuple[Any, ...]:
    """The journal record of a request's end (balancer/journal_replay.py reads it)."""
    outcome = (status, req.server_id, req.attempts, result, req.payload_digest)
    return (FINISHED, req.client_id, req.request_id, req.priority, *outcome)


class Scheduler:
    """Priority queue, client sessions, node table and least-loaded dispatch."""

    def __init__(
        self,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
        max_queue: int | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        keep_finished: int | None = kept.DEFAULT_KEEP_FINISHED,
        keep_finished_bytes: int = kept.DEFAULT_KEEP_FINISHED_BYTES,
        first_ticket: int = 0,
        journal: bool = False,
        client_lease_s: float = DEFAULT_CLIENT_LEASE_S,
        max_memory_bytes: int | None = None,
        keep_finished_s: float = kept.DEFAULT_KEEP_FINISHED_S,
        remember_s: float = kept.DEFAULT_REMEMBER_S,
        remember_bytes: int = kept.DEFAULT_REMEMBER_BYTES,
        retry_backoff_s: float = 0.0,  # `zlb balancer --retry-backoff-ms`; bare, a lost request goes back at once
        max_dead: int = DEFAULT_MAX_DEAD,
        max_dead_bytes: int = DEFAULT_MAX_DEAD_BYTES,
        wall_offset: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.client_lease_s = client_lease_s
        self.outbox = Outbox(journal=[] if journal else None)
        self.table = NodeTable(self.outbox, heartbeat_s, liveness)
        self.nodes = self.table.nodes
        self.routes = self.table.routes
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.sessions = ClientSessions()
        self._paused: set[int] = set()  # shared by every service's queue
        self._services: dict[str, Service] = {}
        self._default = self._service(DEFAULT_SERVICE)
        self.retry_backoff_s = retry_backoff_s
        self.timers = Timers(seed)
        self._deadlines = self.timers.deadline_of  # read on every finish: one lookup, not two
        self.dead = DeadLetters(max_dead, max_dead_bytes)
        # Wall-clock minus monotonic seconds (set by the loop): deadlines are journaled as wall-clock
        # times, so a restarted balancer or a standby (another process, another monotonic clock) keeps them.
        self.wall_offset = wall_offset
        self._arrivals = Arrivals()  # every remembered request in arrival order, for listings
        self.budget = MemoryBudget(max_memory_bytes)
        self.last_refusal = ""  # why the last submit was refused for the budget
        # Set while no new request may be taken, however much room there is (a journal that cannot be
        # written, balancer/journal_keeper.py): the reason, starting with REASON_BUSY, so clients re-send.
        self.refusing = ""
        # Requests lost in transit, and how often: rare, so a dict beside them, not a field in each.
        self._transit_losses: dict[Request, int] = {}
        # Unfinished requests submitted again from another connection (another process under the client id):
        # the routes that asked before the request's own, each answered too when it finishes. Rare: a dict beside.
        self._also_waiting: dict[Request, list[Any]] = {}
        # Attempts that were false deaths (the node came back holding the work): not counted against
        # max_attempts, while the request's `attempts` still numbers its runs as the nodes saw them.
        # A side table: false deaths are rare, and a field would cost every waiting request 8 bytes.
        self._forgiven: dict[Request, int] = {}
        windows = (keep_finished_s, remember_s, remember_bytes)
        self.kept = KeptResults(
            keep_finished, keep_finished_bytes, self.budget, self.sessions, *windows, forgotten=self._arrivals.forget
        )
        # Client id -> pages of ids finished earlier, read on submit (a dict lookup, no call).
        self._earlier_pages = self.kept.ids.by_client
        # Tickets must never repeat across balancer restarts (see protocol), so they start where told.
        self._ticket = first_ticket
        self._assigned = 0
        self._last_now = 0.0  # the latest `now` a tick brought (for the wall-clock stamp of a dead letter)

    @property
    def events(self) -> list[tuple[Any, ...]]:
        """Events not yet taken by the loop."""
        return self.outbox.events

    @property
    def journal(self) -> list[tuple[Any, ...]] | None:
        """Journal records not yet written (None without --journal)."""
        return self.outbox.journal

    # ---- requests -------------------------------------------------------

    @property
    def remembered_finished(self) -> int:
        """How many finished requests are remembered for resubmissions: with their results, or ids only."""
        return len(self.kept) + self.kept.ids.count

    @property
    def waiting(self) -> int:
        """How many requests wait for a node (those of paused clients, and those in a back-off, included)."""
        return sum(svc.waiting for svc in self._services.values()) + len(self.timers.delayed)

    def has_queued(self) -> bool:
        """Whether any queue holds a request (set-aside ones and stale entries count: a dispatch finds out)."""
        return any(svc.queue.count for svc in self._services.values())

    def queued(self) -> Iterator[Request]:
        """Every request waiting for a node, in no order: queued (set-aside ones included, stale entries
        left out) or sitting out a back-off. The property tests check the queues' invariants through it."""
        for svc in self._services.values():
            yield from (req for req in svc.queue if req.status == PENDING)
        yield from self.timers.delayed

    def _prune_services(self) -> int:
        """Forget the services nothing needs now (none of their requests waits, no live node offers them);
        how many. Their tallies go with them: a table full of names no one uses any more must not refuse
        new ones for good (an outside attack filled it with 1,024 made-up names)."""
        idle = [
            name
            for name, svc in self._services.items()
            if name != DEFAULT_SERVICE and svc.waiting == 0 and not self.table.offering(name)
            and not any(req.service == name for req in self.timers.delayed)
        ]  # fmt: skip
        for name in idle:
            del self._services[name]
        return len(idle)

    def _service(self, name: str) -> Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = Service(name, WaitingQueue(self._paused))
        return svc

    def submit(
        self,
        client_id: int,
        request_id: int,
        priority: int,
        route: Any,
        body: Any,
        incarnation: int = 0,
        now: float = 0.0,
        service: str = DEFAULT_SERVICE,
        deadline_s: float | None = None,
    ) -> Submitted:
        """Queue a client's request, or recognise it as one already known (from any process: ids are names).

        `service`: which nodes may run it; `deadline_s`: it ends `expired` if not finished that many
        seconds from `now`.
        """
        session = self.sessions.get(client_id)
        if session is None:
            session = self.sessions.of(client_id)
        req = session.get(request_id)
        if req is not None:
            if req.status is DEAD:
                return self._dead_again(req, route, body)
            return resubmitted(req, route, body, self.counters, self.outbox, self._also_waiting)
        pages = self._earlier_pages.get(client_id)
        if pages is not None and (request_id >> PAGE_BITS) in pages:  # maybe finished before its result went
            earlier = self.kept.earlier(client_id, request_id, route, body, self.counters, self.outbox)
            if earlier is not None:
                return earlier
        if self.refusing:
            self.last_refusal = self.refusing
            self.counters["busy"] += 1
            return Submitted.BUSY
        svc = self._default if service is DEFAULT_SERVICE else self._services.get(service)
        if svc is None:
            if len(self._services) >= MAX_SERVICES and not self._prune_services():
                return self._reject(client_id, request_id, f"too many services (at most {MAX_SERVICES} at once)")
            svc = self._service(service)
        if self.max_queue is not None and svc.queue.count >= self.max_queue:
            return self._reject(client_id, request_id, self.queue_full_reason())
        client_id = session.client_id
        refusal = self.budget.admit(client_id, len(body))
        if refusal:
            self.last_refusal = refusal
            if not self.budget.could_hold(len(body)):  # never, however long the client waits: not busy
                return Submitted.TOO_LARGE
            self.counters["busy"] += 1  # counted, not logged one by one: a flood would flood the log
            return Submitted.BUSY
        req = Request(client_id, request_id, priority, None, route, body)
        session[request_id] = req
        if request_id > session.highest:
            session.highest = request_id
        if self.budget.over():
            self.kept.trim()
        svc.queue.push_fresh(req)
        self._arrivals.add(req)
        self.counters["submitted"] += 1
        self.outbox.events.append((ev.REQUEST_ADDED, client_id, request_id, priority))
        if svc is not self._default or deadline_s is not None:
            self._shaped(req, svc, deadline_s, now)
        if self.outbox.journal is not None:
            self.outbox.journal.append((ACCEPTED, client_id, request_id, priority, route, body, *self.tail_of(req)))
        return _QUEUED

    def _shaped(self, req: Request, svc: Service, deadline_s: float | None, now: float) -> None:
        """A request of a service other than the default, or with a deadline (off the common path)."""
        req.service = svc.name
        if deadline_s is not None:
            self.timers.set_deadline(req, now + deadline_s)
        if not self.table.offering(svc.name):
            self.outbox.events.append((ev.REQUEST_UNSERVED, req.client_id, req.request_id, svc.name))

    def tail_of(self, req: Request) -> tuple[Any, ...]:
        """The optional end of an ACCEPTED record: (service, wall-clock deadline or None), or nothing."""
        deadline = self.timers.deadline_of.get(req) if self.timers.deadline_of else None
        if req.service is DEFAULT_SERVICE and deadline is None:
            return ()
        return (req.service, None if deadline is None else deadline + self.wall_offset)

    def _reject(self, client_id: int, request_id: int, reason: str) -> Submitted:
        self.last_refusal = reason
        self.counters["rejected"] += 1
        self.outbox.events.append((ev.REQUEST_REJECTED, client_id, request_id, reason))
        return Submitted.REJECTED

    def queue_full_reason(self) -> str:
        return records.queue_full_reason(self.max_queue)

    def _requeue(self, req: Request, server_id: int, now: float | None = None, why: str = "") -> None:
        """Put a lost request back ahead of later arrivals of its priority: at once, or (`now` given: its
        node died) after a back-off. After its last attempt it goes to the dead letters."""
        if req.attempts - (self._forgiven.get(req, 0) if self._forgiven else 0) >= self.max_attempts:
            reason = f"gave up after {req.attempts} attempts; the last on Server {server_id}{why}"
            self._bury(req, server_id, reason)
            return
        req.status = PENDING
        req.server_id = None
        if now is not None and self.retry_backoff_s > 0:
            self.timers.delay(req, now + backoff_s(self.retry_backoff_s, req.attempts, self.timers.rng))
        else:
            self._service(req.service).queue.push_retry(req, self._arrivals.number(req))
        self.counters["requeued"] += 1
        self.outbox.events.append(
            (ev.REQUEST_REQUEUED, req.client_id, req.request_id, req.priority, req.attempts, server_id)
        )

    def _requeue_many(self, lost: list[Request], server_id: int, now: float | None = None, why: str = "") -> None:
        for req in lost:
            self._requeue(req, server_id, now, why)

    def _fail(
        self,
        req: Request,
        server_id: int | None,
        reason: str,
        result: Any = None,
        answered: bool = False,
        journaled: bool = False,
    ) -> None:
        """Finish a request as failed: its result is the node's error text, or else the reason."""
        self._finish(req, FAILED, reason.encode() if result is None else result, answered, journaled)
        self.outbox.events.append((ev.REQUEST_FAILED, req.client_id, req.request_id, server_id, reason))

    def _finish(self, req: Request, status: str, result: Any, answered: bool = False, journaled: bool = False) -> None:
        """`answered`: the loop already sent the result (see complete()), so it is not queued as a reply;
        `journaled`: its record is written already (see journal_completion())."""
        if self._transit_losses:
            self._transit_losses.pop(req, None)
        if self._deadlines:
            self._deadlines.pop(req, None)
        if self._forgiven:
            self._forgiven.pop(req, None)
        req.status = status
        if self._also_waiting:
            self._answer_also_waiting(req, result)
        self.kept.add(req, result)
        self.counters[status] += 1
        if not answered:
            self.outbox.replies.append(req)
        if self.outbox.journal is not None and not journaled:
            self.outbox.journal.append(_finished_record(req, status, result))

    def _answer_also_waiting(self, req: Request, result: Any) -> None:
        """A finishing request's result goes to every other connection that submitted it, as a replay."""
        for route in self._also_waiting.pop(req, ()):
            if route != req.route:
                other = Request(req.client_id, req.request_id, req.priority, None, route, result)
                other.status, other.server_id, other.attempts = req.status, req.server_id, req.attempts
                self.outbox.replays.append(other)

    def next_request_id(self, client_id: int, count: int = 1) -> int:
        """The first of `count` request ids this client id has not used, reserved for the caller (journaled)."""
        first = self.sessions.next_request_id(client_id, count, self.kept.ids.by_client.get(client_id))
        if self.outbox.journal is not None:
            self.outbox.journal.append((RESERVED, client_id, self.sessions.reserved[client_id]))
        return first

    # ---- restart from a journal ------------------------------------------

    def restore_pending(
        self,
        client_id: int,
        request_id: int,
        priority: int,
        route: Any,
        body: Any,
        service: str = DEFAULT_SERVICE,
        deadline: float | None = None,
    ) -> None:
        """Queue a request that a previous balancer accepted and never finished (`deadline`: wall-clock)."""
        req = Request(client_id, request_id, priority, None, route, body)
        svc = self._service(service)
        req.service = svc.name
        self.sessions.add(client_id, request_id, req)
        svc.queue.push_fresh(req)
        self._arrivals.add(req)
        self.budget.charge(client_id, _size(body))
        if deadline is not None:
            self.timers.set_deadline(req, deadline - self.wall_offset)

    def restore_dead(self, client_id: int, request_id: int, priority: int, route: Any, body: Any, *rest: Any) -> None:
        """A dead letter a previous balancer kept: `rest` is (service, attempts, error, server_id)."""
        service, attempts, error, server_id = rest
        req = Request(client_id, request_id, priority, None, route, body, DEAD, server_id, attempts)
        req.service = self._service(service).name
        self.sessions.of(client_id)[request_id] = req
        self._arrivals.add(req)
        self.budget.charge(client_id, _size(body))
        self.dead.add(Letter(req, error, attempts, server_id, self.wall_offset))

    def restore_finished(self, client_id: int, request_id: int, priority: int, *outcome: Any) -> None:
        """Remember a request a previous balancer finished, to answer resubmissions.

        `outcome` is (status, server_id, attempts, result[, payload_digest]).
        """
        req = Request(client_id, request_id, priority, None, None, outcome[3], *outcome[:3], *outcome[4:])
        self.sessions.add(client_id, request_id, req)
        self._arrivals.add(req)
        self.kept.remember(req)

    def restore_earlier(self, client_id: int, request_id: int, status: str, digest: int | None) -> None:
        """Remember an id a previous balancer finished and kept past its result."""
        self.kept.restore_id(client_id, request_id, status, digest)

    def expire_finished(self, now: float) -> None:
        """Let go of results past --keep-finished-s and ids past --remember-s, a slice per call."""
        self._last_now = now
        self.kept.tick(now)

    def get(self, client_id: int, request_id: int) -> Request | None:
        """The request with these ids, if it is still remembered; for an id kept past its result, a
        stand-in with its status and no result (so `zlb request` and the REST API know it was finished)."""
        req = self.sessions.get(client_id, {}).get(request_id)
        if req is None and client_id in self._earlier_pages:
            return self.kept.stand_in(client_id, request_id)
        return req

    def requests(self, status: str | None = None, client_id: int | None = None) -> Iterator[Request]:
        """Remembered requests in arrival order, optionally filtered, read lazily (balancer/index.py)."""
        keep = matching(status, client_id)
        return iter(self._arrivals) if keep is None else filter(keep, self._arrivals)

    def requests_page(
        self, after: int, limit: int, scan: int, status: str | None = None, client_id: int | None = None
    ) -> tuple[list[Request], int | None]:
        """A page of the remembered requests that arrived after number `after`, and the next page's `after`."""
        return self._arrivals.page(after, limit, scan, matching(status, client_id))

    def waiting_by_priority(self) -> dict[int, int]:
        """Queue depth per priority, most urgent first (every service together)."""
        if len(self._services) == 1:
            return self._default.by_priority()
        out: dict[int, int] = {}
        for svc in self._services.values():
            for priority, n in svc.by_priority().items():
                out[priority] = out.get(priority, 0) + n
        return dict(sorted(out.items()))

    def services_view(self) -> dict[str, dict[str, int]]:
        """Per service: waiting, running, live nodes offering it, and how many expired, were cancelled, died."""
        running: dict[str, int] = {}
        nodes: dict[str, int] = {}
        for node in self.routes.values():
            for name in node.services:
                nodes[name] = nodes.get(name, 0) + 1
            for req in node.in_flight.values():
                running[req.service] = running.get(req.service, 0) + 1
        delayed: dict[str, int] = {}
        for req in self.timers.delayed:
            delayed[req.service] = delayed.get(req.service, 0) + 1
        names = sorted({*self._services, *nodes})
        return {name: self._service_row(name, running, nodes, delayed) for name in names}

    def _service_row(self, name: str, running: dict, nodes: dict, delayed: dict) -> dict[str, int]:
        svc = self._services.get(name)
        row = {"waiting": delayed.get(name, 0), "running": running.get(name, 0), "nodes": nodes.get(name, 0)}
        row.update(expired=0, cancelled=0, dead=0)
        if svc is not None:
            row["waiting"] += svc.waiting
            row.update(expired=svc.expired, cancelled=svc.cancelled, dead=svc.dead)
        return row

    def pause_client(self, client_id: int) -> None:
        """Set a client's waiting requests aside (its results pile up unread) until resume_client."""
        self._paused.add(client_id)

    def resume_client(self, client_id: int) -> None:
        for svc in self._services.values():
            svc.queue.resume(client_id)

    @property
    def paused_clients(self) -> int:
        return len(self._paused)

    # ---- dispatch and results ---------------------------------------------

    def dispatch(self, now: float | None = None) -> list[tuple[Node, int, Request]]:
        """Pair waiting requests with the least-loaded free nodes that offer their service. With `now`,
        requests past their deadline end first: one that expired between two deadline checks never runs."""
        if now is not None and self.timers.deadline_of:
            for req in self.timers.due(now):
                self.end(req, EXPIRED, "its deadline passed")
        out: list[tuple[Node, int, Request]] = []
        for svc in self._services.values():
            if svc.queue.count:
                self._dispatch(svc, out)
        return out

    def _dispatch(self, svc: Service, out: list[tuple[Node, int, Request]]) -> None:
        """Dispatch one service's queue, in priority order, to the free nodes that offer it."""
        append = out.append
        events = self.outbox.events
        queue = svc.queue
        name = svc.name
        pop_free, push = self.table.pop_free, self.table.push
        while queue.count:
            node = pop_free(name)
            if node is None:
                break
            req = queue.pop()
            while req is not None and req.status is not _PENDING:  # ended while it waited: skipped
                svc.skipped(req.priority)
                req = queue.pop()
            if req is None:  # only paused clients' requests were left: the node stays free
                push(node)
                break
            self._ticket += 1
            self._assigned += 1
            node.in_flight[self._ticket] = req
            node.last_assigned = self._assigned
            req.status = ASSIGNED
            req.server_id = node.node_id
            req.attempts += 1
            if len(node.in_flight) < node.capacity:
                push(node)
            append((node, self._ticket, req))
            events.append((ev.REQUEST_ASSIGNED, req.client_id, req.request_id, node.node_id, req.attempts))

    def undeliverable(self, node: Node, ticket: int) -> None:
        """WORK found no connection to its node: it never left, so it goes back at once, attempt uncounted."""
        req = node.in_flight.pop(ticket, None)
        self.table.unreachable(node)
        if req is None:
            return
        self.counters["undeliverable"] += 1
        req.attempts -= 1
        self._requeue(req, node.node_id)

    def finishing(self, route: Any, ticket: int) -> Request | None:
        """The request a node's result for `ticket` would finish, changing nothing; None if late or unknown.

        A loop woken for one result may send it from this before complete() keeps the books, and
        complete it with answered=True: the client's answer does not wait for the bookkeeping.
        """
        node = self.routes.get(route)
        return node.in_flight.get(ticket) if node is not None else None

    def journal_completion(self, req: Request, ok: bool, result: Any) -> None:
        """Journal now the record complete() would write for a node's result for `req` (from finishing()), so
        the loop can ship it to a standby before the books are kept; complete it with journaled=True."""
        if self.outbox.journal is not None:
            self.kept.digest(req)  # as kept.add() does first in complete()
            self.outbox.journal.append(_finished_record(req, PROCESSED if ok else FAILED, result))

    def complete(
        self,
        route: Any,
        ticket: int,
        ok: bool,
        result: Any,
        now: float,
        answered: bool = False,
        journaled: bool = False,
    ) -> Request | None:
        """Record a node's result; None when it is late or unknown (dropped).

        `answered`: the loop already sent this result to its client (see finishing()); `journaled`: its record
        is journaled already (see journal_completion()).
        """
        node = self.routes.get(route)
        req = node.in_flight.pop(ticket, None) if node is not None else None
        if req is None:
            self.counters["late_results"] += 1
            self.outbox.events.append((ev.REQUEST_LATE_RESULT, node.node_id if node else None, ticket))
            return None
        node.missing.pop(ticket, None)
        node.handled += 1
        if ok:
            self._finish(req, PROCESSED, result, answered, journaled)
            self.outbox.events.append((ev.REQUEST_PROCESSED, req.client_id, req.request_id, node.node_id))
        else:
            self._fail(req, node.node_id, bytes(result).decode("utf-8", "replace"), result, answered, journaled)
        self.table.finished(node, now)
        if node.state is _DRAINING and not node.in_flight:
            self.outbox.events.append((ev.NODE_DRAINED, node.node_id))
        return req

    # ---- deadlines, cancellation, back-off and dead letters ------------------

    def timers_due(self, now: float) -> None:
        """Queue requests whose back-off is over, expire those past their deadline, purge stale entries."""
        timers = self.timers
        if timers.delayed:
            for req in timers.ready(now):
                if req.status == PENDING:
                    self._service(req.service).queue.push_retry(req, self._arrivals.number(req))
        if timers.deadline_of:
            for req in timers.due(now):
                self.end(req, EXPIRED, "its deadline passed")
        for svc in self._services.values():
            if svc.stale and svc.purge_due():
                svc.purge()

    def cancel(self, client_id: int, request_id: int) -> tuple[str, Request | None]:
        """Cancel a request: (what it was, the request). A waiting (or dead) one never runs; a running one
        is taken from its node, which is told to stop it. A finished one stays as it was."""
        req = self.sessions.get(client_id, {}).get(request_id)
        if req is None:
            req = self.get(client_id, request_id)
            return ("unknown" if req is None else "finished"), req
        was = req.status
        if was in FINAL_STATUSES:
            return "finished", req
        self.end(req, CANCELLED, "cancelled")
        return was, req

    def end(self, req: Request, status: str, reason: str) -> None:
        """End a request that has not finished as EXPIRED or CANCELLED: off its queue, its back-off, its
        node (told to stop it, its slot free at once) or the dead letters; its sender is told."""
        if req.status == PENDING:
            if self.timers.delayed.pop(req, None) is None:
                self._service(req.service).ended_in_place(req.priority)
        elif req.status == ASSIGNED:
            self._stop_running(req, reason)
        elif req.status == DEAD:
            self.dead.take(req.client_id, req.request_id)
        svc = self._service(req.service)
        if status == EXPIRED:
            svc.expired += 1
        else:
            svc.cancelled += 1
        self._finish(req, status, reason.encode())
        self.outbox.events.append((ev.REQUEST_ENDED, req.client_id, req.request_id, status, req.server_id))

    def _stop_running(self, req: Request, reason: str) -> None:
        """Take a running request from its node; the node is told to stop it, and its DONE will be late."""
        node = self.nodes.get(req.server_id) if req.server_id is not None else None
        if node is None:
            return
        for ticket, held in node.in_flight.items():
            if held is req:
                del node.in_flight[ticket]
                node.missing.pop(ticket, None)
                self.outbox.cancels.append((node.route, ticket, reason))
                self.table.refresh(node)
                if node.state is _DRAINING and not node.in_flight:
                    self.outbox.events.append((ev.NODE_DRAINED, node.node_id))
                return

    def _bury(self, req: Request, server_id: int | None, reason: str) -> None:
        """A request that failed every attempt: to the dead letters, its payload kept for a retry; its
        sender is told (status dead, the reason as its result)."""
        if self._transit_losses:
            self._transit_losses.pop(req, None)
        if self.timers.deadline_of:
            self.timers.deadline_of.pop(req, None)
        if self._forgiven:
            self._forgiven.pop(req, None)
        req.status = DEAD
        req.server_id = server_id
        self.counters["dead"] += 1
        self._service(req.service).dead += 1
        letter = Letter(req, reason, req.attempts, server_id, self._wall_now())
        for old in self.dead.add(letter):
            self._drop_dead(old)
        self.outbox.replies.append(self._dead_answer(letter, req.route))
        if self.outbox.journal is not None:
            self.outbox.journal.append(self.dead_record(letter))
        self.outbox.events.append((ev.REQUEST_DEAD, req.client_id, req.request_id, req.attempts, reason))

    def _wall_now(self) -> float:
        """Wall-clock seconds of the last tick (the scheduler reads no clock; the loop keeps wall_offset)."""
        return self._last_now + self.wall_offset

    @staticmethod
    def _dead_answer(letter: Letter, route: Any) -> Request:
        """What the sender of a dead request is told: a stand-in carrying the error, not the payload."""
        req = letter.req
        return Request(
            req.client_id, req.request_id, req.priority, None, route, letter.error.encode(), DEAD,
            letter.server_id, letter.attempts,
        )  # fmt: skip

    @staticmethod
    def dead_record(letter: Letter) -> tuple[Any, ...]:
        """The journal record of a dead letter."""
        req = letter.req
        return (
            DEAD_LETTER, req.client_id, req.request_id, req.priority, req.route, req.body, req.service,
            letter.attempts, letter.error, letter.server_id,
        )  # fmt: skip

    def _drop_dead(self, letter: Letter) -> None:
        """A dead letter beyond the bounds: it ends failed with its error, its payload let go of."""
        self.counters["dead_dropped"] += 1
        self._finish(letter.req, FAILED, f"dropped from the dead letters: {letter.error}".encode(), answered=True)

    def _dead_again(self, req: Request, route: Any, body: Any) -> Submitted:
        """A re-send of a dead request's id: its answer again (it runs only when retried)."""
        letter = self.dead.get(req.client_id, req.request_id)
        if letter is None or not kept.same_payload(req.body, body):
            self.counters["conflicts"] += 1
            return Submitted.CONFLICT
        self.counters["duplicates"] += 1
        req.route = route
        self.outbox.replays.append(self._dead_answer(letter, route))
        return Submitted.FINISHED

    def retry(self, client_id: int, request_id: int) -> Request:
        """Queue a dead letter again, its attempts from zero; KeyError with the reason if it is not one.

        Its sender was already told it died, so the new outcome is kept, not sent: a re-send of the id
        (or `zlb request`) gets it."""
        letter = self.dead.take(client_id, request_id)
        if letter is None:
            raise KeyError(f"request {request_id} of client {client_id} is not in the dead letters")
        req = letter.req
        req.status = PENDING
        req.attempts = 0
        req.server_id = None
        req.route = None
        self._service(req.service).queue.push_fresh(req)
        self.counters["retried"] += 1
        self.outbox.events.append((ev.REQUEST_RETRIED, client_id, request_id, req.priority))
        if self.outbox.journal is not None:
            record = (ACCEPTED, client_id, request_id, req.priority, None, req.body, *self.tail_of(req))
            self.outbox.journal.append(record)
        return req

    def retry_all(self) -> int:
        """Queue every dead letter again; how many."""
        keys = list(self.dead.letters)
        for client_id, request_id in keys:
            self.retry(client_id, request_id)
        return len(keys)

    # ---- nodes ----------------------------------------------------------

    def hello(
        self,
        route: Any,
        node_id: int | None,
        capacity: int,
        pid: int,
        host: str,
        now: float,
        incarnation: int = 0,
        held: list[int] | tuple[int, ...] = (),
        max_seen: int = 0,
        services: tuple[str, ...] | None = None,
    ) -> Node:
        """A node's HELLO: join or resync, or raise Refused (the id is another's, or this one was fenced).
        `services`: what it offers (None: the default service)."""
        spec: tuple[Any, ...] = (capacity, pid, host, incarnation, max_seen)
        if services is not None:
            spec += (tuple(self._service(name).name for name in services),)
        outcome, node, lost = self.table.hello(route, node_id, spec, list(held), now)
        if lost:
            self._lost(lost, node.node_id if isinstance(node, Node) else -1)
        if outcome is Joined.JOINED and self.table.ghosts:
            ghosts = self.table.take_ghosts(route)
            if ghosts and held:
                self._returned(node, held, ghosts)
        if outcome is Joined.REFUSED:
            self.counters["nodes_refused"] += 1
        if isinstance(node, str):
            raise Refused(node, outcome is Joined.FENCED, self.table.holder(node_id))
        return node

    def _returned(self, node: Node, held: list[int] | tuple[int, ...], ghosts: dict[int, tuple[int, int]]) -> None:
        """A node declared dead came back (the same process, on the same route) holding work it had then:
        that death was false. A request still waiting goes back to it under its ticket, so it runs once;
        one already given to another node runs there too, but the false death is not one of its
        attempts (nor anything nearer to "gave up after N attempts"). A finished one stays finished
        (its result from here will be late)."""
        sessions = self.sessions
        back: dict[int, Request] = {}
        for ticket in held:
            ids = ghosts.get(ticket)
            req = sessions.get(ids[0], {}).get(ids[1]) if ids is not None else None
            if req is not None and req.status in (PENDING, ASSIGNED):
                back[ticket] = req
        if not back:
            return
        waiting = self._take_back({req for req in back.values() if req.status == PENDING})
        elsewhere = 0
        for ticket, req in sorted(back.items()):
            if req in waiting:
                node.in_flight[ticket] = req
                req.status = ASSIGNED
                req.server_id = node.node_id
                self.outbox.events.append(
                    (ev.REQUEST_ASSIGNED, req.client_id, req.request_id, node.node_id, req.attempts)
                )
            else:
                elsewhere += 1
                if req.attempts > 1:
                    self._forgiven[req] = self._forgiven.get(req, 0) + 1
        self.counters["reclaimed"] += len(waiting)
        self.table.refresh(node)
        self.outbox.events.append((ev.NODE_RETURNED, node.node_id, len(waiting), elsewhere))

    def _take_back(self, reqs: set[Request]) -> set[Request]:
        """Take these waiting requests out of their queues (or their back-off) again; return those found."""
        found = {req for req in reqs if self.timers.delayed.pop(req, None) is not None}
        for name in {req.service for req in reqs - found}:
            found |= self._service(name).queue.take_back(reqs - found)
        return found

    def _lost(self, lost: list[Request], server_id: int) -> None:
        """Work a live node never got (or whose answer never came): back to the queue, the attempt
        uncounted, unless it was lost MAX_TRANSIT_LOSSES times: then it fails."""
        self.counters["lost_in_transit"] += len(lost)
        losses = self._transit_losses
        for req in lost:
            times = losses[req] = losses.get(req, 0) + 1
            if times >= MAX_TRANSIT_LOSSES:
                reason = f"lost in transit {times} times, the last on the way to or from Server {server_id}"
                self._bury(req, server_id, reason)
                continue
            req.attempts -= 1
            self._requeue(req, server_id)

    def heartbeat(
        self,
        route: Any,
        in_flight: int,
        handled: int,
        now: float,
        dropped: int = 0,
        held: list[int] | None = None,
        max_seen: int = 0,
    ) -> Node | None:
        """A node's load report; with `held` (the tickets it holds) work lost on the way is re-queued."""
        report = (in_flight, handled, dropped, max_seen)
        node, lost = self.table.heartbeat(route, report, held, self._ticket, now)
        if lost:
            self._lost(lost, node.node_id)
        return node

    def seen(self, route: Any, now: float) -> Node | None:
        """Any message from a node is a sign of life; None if it is unknown."""
        return self.table.seen(route, now)

    def bye(self, route: Any) -> None:
        """A node leaves on purpose."""
        node = self.routes.get(route)
        if node is not None:
            self._requeue_many(self.table.drop(node, ev.NODE_LEFT), node.node_id)

    def gone(self, route: Any, now: float, kind: str = ev.NODE_DEAD) -> Node | None:
        """A Majordomo worker known to be gone without a word (silent while idle, or `kind` NODE_DISCONNECTED:
        its connection closed, and it never comes back on it): declared dead now, its work re-queued as a dead
        node's (after a back-off, the attempt counted)."""
        node = self.routes.get(route)
        if node is None:
            return None
        lost = self.table.drop(node, kind, now - node.last_seen)
        self._requeue_many(lost, node.node_id, now, " (it died)")
        return node

    def disconnected(self, route: Any, now: float) -> Node | None:
        """A node whose connection dropped and did not come back within the grace (balancer/drops.py): dead
        now, as a silent one would be at its deadline (its work re-queued after a back-off, the attempt
        counted, and remembered in case the node comes back holding it)."""
        node = self.routes.get(route)
        if node is None:
            return None
        self._requeue_many(self.table.dead(node, ev.NODE_DISCONNECTED, now), node.node_id, now, " (it died)")
        return node

    def expire(self, now: float) -> list[Node]:
        """Declare nodes silent past their deadline dead; re-queue their work."""
        dead = self.table.expire(now)
        for node, lost in dead:
            self._requeue_many(lost, node.node_id, now, " (it died)")
        return [node for node, _lost in dead]

    # ---- admin ----------------------------------------------------------

    def mark_down(self, node_id: int) -> Node:
        """Stop using a node and re-queue its in-flight work."""
        node, lost = self.table.mark_down(node_id)
        self._requeue_many(lost, node_id)
        return node

    def mark_up(self, node_id: int) -> Node:
        """Put a down or draining node back in service."""
        return self.table.mark_up(node_id)

    def drain(self, node_id: int) -> Node:
        """Send a node no new work; its in-flight work finishes (the node said LEAVING)."""
        return self.table.drain(node_id)

    def mark_draining(self, node_id: int) -> Node:
        """An admin's drain: as drain(), and kept by node id across rejoins until mark_up."""
        return self.table.drain(node_id, by_admin=True)

    def in_flight(self) -> int:
        """Requests currently running on nodes."""
        return sum(len(n.in_flight) for n in self.routes.values())
