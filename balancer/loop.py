"""The balancer process: one thread, one poller, four sockets, and the parts that use them.

The Balancer owns the sockets, the poller and the scheduler, and holds one
part per socket: ClientSide (frontend, balancer/clients.py), NodeSide
(backend, balancer/node_side.py) and ControlSide (control,
balancer/control_side.py). Each part owns its own state and is called through
a few named methods: `drain` when its socket is readable, `flush`/`dispatch`
after the drains, `tick` on the heartbeat. The loop publishes the events the
scheduler recorded, as one message per topic. Payloads pass through as opaque
frames.

With --journal, the iteration's accepted and finished records are appended
with one write before its results are sent, and no result is sent while the
journal cannot be written (balancer/journal_keeper.py). SIGTERM
stops accepting, tells clients, lets in-flight work finish for up to
grace_s, tells nodes, flushes the journal and exits.

As the leader of an HA group (balancer/member.py passes itself as `ha`) it
also binds the replication endpoint (balancer/replication.py): each
iteration's journal bytes go to the standby, and the iteration's answers wait
for it. Before anything leaves, each pass checks it still leads (its etcd
lease renewed in time, etcd naming it); when not, the loop returns at once,
sending nothing more, not even goodbyes.
"""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
import time
from collections import deque
from typing import Any

import zmq

from balancer import control
from balancer.budget import hwm_for
from balancer.clients import ClientSide
from balancer.config import BalancerConfig
from balancer.control_side import ControlSide
from balancer.curve import CurveServer
from balancer.drops import Drops
from balancer.eventlog import EventLog
from balancer.incidents import Incidents
from balancer.journal_keeper import JournalKeeper
from balancer.majordomo import Majordomo
from balancer.node_side import NodeSide
from balancer.replication import Replication
from balancer.scheduler import Scheduler
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import grouped
from wire.security import exposed_endpoints
from wire.sockets import DRAIN_BATCH, SLEPT_S

# Events are published (and handed to the log) at most this often, and sooner
# once this many wait: one PUB message and one log hand-over per interval rather
# than per loop iteration, so a lone request does not pay for two extra sends.
PUBLISH_INTERVAL_S = 0.01
PUBLISH_MAX_EVENTS = 4096
# `zlb status` reports the longest loop iteration over this window (loop_max_ms), for stall probes.
LOOP_WINDOW_S = 10.0
# A poll that returns this much later than planned was a stall: the time counts against no node.
LATE_S = 0.001
# Before declaring a node dead, the loop reads what waits on its sockets: at most this many passes.
EXPIRY_DRAIN_PASSES = 8

# Container allocations between gen-0 collections (CPython's default is 700); see _tune_gc.
GC_GEN0_THRESHOLD = 50_000


class IterationTimes:
    """The longest loop iteration (poll wait excluded) over the last LOOP_WINDOW_S."""

    def __init__(self) -> None:
        self.longest_s = 0.0  # in the current tick
        self._per_tick: deque[tuple[float, float]] = deque()  # (until, longest iteration)

    def roll(self, now: float) -> None:
        """Once per tick: close this tick's longest iteration, forget those older than the window."""
        per_tick = self._per_tick
        per_tick.append((now, self.longest_s))
        self.longest_s = 0.0
        while per_tick and now - per_tick[0][0] > LOOP_WINDOW_S:
            per_tick.popleft()

    def max_ms(self) -> float:
        longest = max((m for _t, m in self._per_tick), default=0.0)
        return round(max(longest, self.longest_s) * 1000, 2)


class Balancer:
    """Owns the sockets, the poller and the scheduler; its parts use the sockets it hands them."""

    def __init__(self, config: BalancerConfig, context: zmq.Context | None = None, ha: Any = None) -> None:
        self.config = config
        self.ha = ha  # the HA member this balancer leads for (balancer/member.py), or None
        self.replication: Replication | None = None
        self.stepped_down: str | None = None
        self.heartbeat_s = config.heartbeat_ms / 1000
        # Deadlines are checked ten times per interval, so a dead node is noticed within
        # liveness intervals plus a tenth; the check is O(nodes), cheap even at 1,000.
        self._expiry_check_s = self.heartbeat_s / 10
        self.sched = Scheduler(
            **config.scheduler_options(),
            # Microseconds since the epoch: a later balancer's tickets never repeat an earlier one's.
            first_ticket=time.time_ns() // 1000,
            wall_offset=time.time() - time.monotonic(),
        )
        self.eventlog = EventLog(config.log_file)
        self.incidents = Incidents(self.sched.outbox)
        self.times = IterationTimes()
        self.state = control.BalancerState(
            self.sched,
            self.eventlog,
            config.endpoints,
            time.monotonic(),
            time.time(),
            bad_input=self.incidents.bad_input,
            counters=self.incidents.counters,
            loop_max_ms=self.times.max_ms,
            ha=self._ha_view,
        )
        self._ctx = context or zmq.Context.instance()
        self._stopping = False
        self._stop_deadline: float | None = None
        self.journal: JournalKeeper | None = None
        self.curve: CurveServer | None = None
        if config.journal is not None:
            # Locked first: a second balancer on this journal stops here, before it binds or reads anything.
            try:
                self.journal = JournalKeeper(
                    config.journal, self.sched, self.incidents.counters, config.endpoints, config.keep_finished
                )
            except BaseException:
                self.eventlog.close()
                raise
            self.state.journal = self.journal.view
        try:
            if config.curve_secret is not None:
                allowed = (config.allow_dir or "", config.admin_allow_dir, config.node_allow_dir)
                self.curve = CurveServer.start(self._ctx, config.curve_secret, *allowed)
            self._open_sockets()
        except BaseException:
            self._close_security()
            if self.journal is not None:
                self.journal.close()
            raise

    # ---- sockets --------------------------------------------------------

    def _open_sockets(self) -> None:
        cfg = self.config
        self.frontend = self._bind(zmq.ROUTER, cfg.frontend)
        self.backend = self._bind(zmq.ROUTER, cfg.backend, "backend")  # its own ZAP domain: node keys
        # A node keeps its identity across reconnects; let its new connection take over.
        self.backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A send to a route with no connection raises instead of vanishing: work that
        # cannot leave goes straight back to the queue (NodeSide._send_batch).
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control_sock = self._bind(zmq.ROUTER, cfg.control)
        self.events_sock = self._bind(zmq.PUB, cfg.events)
        if self.ha is not None:
            self._open_replication()
        now = time.monotonic()
        self.majordomo = Majordomo(self.frontend, self.backend, self.sched, self.incidents, cfg)
        self.client_side = ClientSide(
            self.frontend, self.sched, self.incidents, cfg.max_message_bytes, now, self.majordomo
        )
        self.node_side = NodeSide(self.backend, self.sched, self.incidents, self.client_side, cfg, self.majordomo)
        self.control_side = ControlSide(
            self.control_sock, self.state, self.incidents, self.curve is not None, self._publish, self._write_journal
        )
        # The backend's monitor: a node's dropped connection (and, with curve, the backend's refused handshakes).
        self.drops = Drops(
            self.backend,
            cfg.reconnect_grace_ms / 1000 if cfg.reconnect_grace_ms else None,
            self.sched.table,
            self.node_side,
            self.majordomo,
            self.incidents,
            self.control_side.handshake_failed if self.curve is not None else None,
        )
        # The control socket is polled by its file descriptor (ZMQ_FD), not as a socket: zmq_poll
        # asks each socket for ZMQ_EVENTS before and after it sleeps, a poll(2) each, and control
        # traffic is rare, so requests pay for two sockets, not three. The control side notes what
        # the descriptor will not signal again (ControlSide.waiting); the loop drains it then as if
        # signalled, once per pass and inside the pass's timing, like any socket.
        self._readers = {
            self.backend: self.node_side.drain,
            self.frontend: self.client_side.drain,
            self.control_side.fd: self.control_side.drain,
        }
        if self.replication is not None:
            self._readers[self.replication.fd] = self._read_replication
            self.node_side.ship_now = self._ship_answer
            self._readers[self.ha.pipe_fd] = self.ha.hear
        if self.drops.monitor is not None:
            # By its descriptor too, for the same reason: drops are rare. The descriptor signals an event
            # only once a read has found the monitor empty, so it is read empty now, and Drops.drain always
            # reads it empty.
            self._readers[self.drops.monitor.getsockopt(zmq.FD)] = self.drops.drain
            self.drops.drain(now, 0)
        if self.curve is not None:
            sockets = {"frontend": self.frontend, "control": self.control_sock, "events": self.events_sock}
            for mon in self.control_side.watch_handshakes(sockets):
                self._readers[mon] = self.control_side.drain_monitors
        self.poller = zmq.Poller()
        for sock in self._readers:
            self.poller.register(sock, zmq.POLLIN)

    def _open_replication(self) -> None:
        ha, cfg = self.ha, self.config
        sock = self._bind(zmq.ROUTER, cfg.replication or "")
        sock.setsockopt(zmq.SNDHWM, 0)  # the stream is bounded by the lag check, not by dropping
        self.replication = Replication(
            sock,
            self.sched,
            self.incidents.counters,
            ha,
            ha.epoch,
            ha.name,
            cfg.standby_max_lag_ms / 1000,
            self.heartbeat_s,
            cfg.require_standby,
        )
        restored = self.incidents.counters.get("journal_restored_pending", 0)
        self.sched.events.append((ev.SYSTEM_HA_LEADING, ha.name, ha.epoch, restored))

    def note_etcd(self, ok: bool, reason: str) -> None:
        """The elector's word on etcd, as an event (the lease check acts on it by itself)."""
        self.sched.events.append((ev.SYSTEM_HA_ETCD, ok, reason))

    def _ha_view(self) -> dict[str, Any] | None:
        if self.ha is None or self.replication is None:
            return None
        return {**self.ha.view(), **self.replication.view(time.monotonic())}

    def _bind(self, kind: int, endpoint: str, role: str = "") -> zmq.Socket:
        if self.ha is not None:  # through the member, which waits for the standby's sockets to let the port go
            return self.ha.bind(self._ctx, kind, endpoint, lambda sock: self._prepare(sock, role))
        sock = self._ctx.socket(kind)
        self._prepare(sock, role)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot bind {endpoint}: {exc}") from None
        return sock

    def _prepare(self, sock: zmq.Socket, role: str) -> None:
        """A socket's options, set before it binds."""
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock, role)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.socket_limit(self.config.max_message_bytes))
        # Messages queued per peer follow from the memory budget (balancer/budget.py): a full
        # send pipe says EAGAIN (ROUTER_MANDATORY) and pauses that client, a full receive
        # pipe stops reading its peer, so neither grows without bound.
        hwm = hwm_for(self.config.max_memory_bytes)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)

    def close(self) -> None:
        """Close every socket, flush the journal and the log file."""
        self.drops.close()  # before the backend: its monitor is stopped while the socket still exists
        for sock in (self.frontend, self.backend, self.control_sock, self.events_sock):
            sock.close(linger=0)
        if self.replication is not None:
            self.replication.sock.close(linger=0)
        self.control_side.close()
        try:
            if self.journal is not None:
                self.journal.close()  # raises if it was failing: the exit says so
        finally:
            self.eventlog.close()
            self._close_security()

    def _close_security(self) -> None:
        if self.curve is not None:
            self.curve.stop()
            self.curve = None

    # ---- the loop -------------------------------------------------------

    def stop(self, *_args: Any) -> None:
        """Ask the loop to stop gracefully (signal-safe; a second call stops at once)."""
        if self._stopping:
            self._stop_deadline = 0.0
        self._stopping = True
        self.node_side.work_first = False

    def run(self) -> None:
        """Serve until stop() is called, then wind down."""
        self.sched.events.append((ev.SYSTEM_STARTED, *self.config.endpoints.values()))
        next_tick = next_expiry = time.monotonic() + self.heartbeat_s
        next_publish = 0.0
        nodes = self.sched.table
        poll = self.poller.poll
        readers = self._readers
        control = self.control_side
        times = self.times
        journal = self.journal
        ha = self.ha
        drops = self.drops
        excused_to = time.monotonic()
        while not self._stopping or not self._wound_down():
            now = time.monotonic()
            # Stopped between iterations (after the last one's count, before this clock read): not late from
            # the poll's view, so excused here, before this iteration judges anyone.
            self._excused(excused_to, now)
            deadline = min(next_tick, next_expiry, drops.due_at, next_publish if self.sched.events else next_tick)
            quiet_waiting = control.waiting or (ha is not None and (ha.pipe_waiting or self.replication.unsignalled))
            busy = (journal is not None and journal.compaction) or quiet_waiting
            timeout_ms = 0 if busy else max(0, int((deadline - now) * 1000) + 1)
            ready = poll(timeout_ms)
            woke = time.monotonic()
            if ha is not None and not self._still_leads(woke):
                # Checked before reading: the readers answer (control replies, refusals) as they read.
                self._step_down(woke)
                return
            late_s = woke - now - timeout_ms / 1000
            if late_s > LATE_S:  # woken after it planned (stopped, starved): no node's silence counts for it
                nodes.excuse(late_s, woke)
            # Woken from idle, one message per socket, then the flush: what woke the loop is
            # answered first (wire/sockets.SLEPT_S).
            limit = 1 if woke - now >= SLEPT_S else DRAIN_BATCH
            if quiet_waiting:
                self._add_quiet(ready)
            for sock, _ in ready:
                readers[sock](woke, limit)
            now = time.monotonic()
            excused_to = self._excused(woke, now)  # stopped or starved while reading: before anyone is judged
            if ha is not None and not self._still_leads(now):
                self._step_down(now)
                return
            if now >= next_expiry or now >= drops.due_at:
                if now >= drops.due_at:
                    drops.probe(now)  # a node whose connection dropped and is not back: dead now
                if nodes.overdue(now):
                    # Before anyone is declared dead, what already waits on the sockets is read (heartbeats
                    # the loop was too late or too busy to take are signs of life); node deadlines ran on the
                    # time the loop could listen (balancer/nodes.py).
                    for _pass in range(EXPIRY_DRAIN_PASSES):
                        waiting = poll(0)
                        for sock, _ in waiting:
                            readers[sock](now, DRAIN_BATCH)
                        if not waiting:
                            break
                    now = time.monotonic()
                    excused_to = self._excused(excused_to, now)
                    self.sched.expire(now)
                self.sched.expire_finished(now)  # a slice: a burst of results goes over several checks
                self.sched.timers_due(now)  # deadlines, back-offs over (checked ten times per heartbeat)
                next_expiry = now + self._expiry_check_s
                # A dead node's work runs again as its back-off ends, not up to a check interval later.
                retry_at = self.sched.timers.next_ready()
                if retry_at is not None and retry_at < next_expiry:
                    next_expiry = retry_at
            if now >= next_tick:
                self._tick(now)
                next_tick = now + self.heartbeat_s
            self._flush()
            if self.replication is not None:
                self.replication.recheck()
            events = self.sched.events
            if events and (now >= next_publish or len(events) >= PUBLISH_MAX_EVENTS):
                self._publish()
                next_publish = now + PUBLISH_INTERVAL_S
            done = time.monotonic()
            busy_s = done - woke  # poll wait excluded: the stall a probe sees
            if busy_s > times.longest_s:
                times.longest_s = busy_s
            excused_to = self._excused(excused_to, done)
        self._say_goodbye()

    def _add_quiet(self, ready: list[tuple[Any, int]]) -> None:
        """The sockets polled by their descriptors that hold arrivals their descriptors will not signal again
        (the control socket; an HA leader's elector pipe and replication socket) are read in this pass as if
        signalled."""
        polled = {sock for sock, _ in ready}
        quiet = [(self.control_side.waiting, self.control_side.fd)]
        if self.ha is not None and self.replication is not None:
            quiet.append((self.ha.pipe_waiting, self.ha.pipe_fd))
            quiet.append((self.replication.unsignalled, self.replication.fd))
        ready.extend((fd, zmq.POLLIN) for waiting, fd in quiet if waiting and fd not in polled)

    def _excused(self, since: float, now: float) -> float:
        """The loop ran from `since` to `now` without listening: beyond an iteration's usual length (a SIGSTOP
        or a starved host may land anywhere in it), no node's silence counts for that time. The mark from
        which the rest of the iteration counts."""
        if now - since <= self._expiry_check_s:
            return since
        self.sched.table.excuse(now - since - self._expiry_check_s, now)
        return now

    def _still_leads(self, now: float) -> bool:
        """The member may still act as leader. The lease's renewals come over the elector pipe, read among the
        sockets: when the lease looks out of time, what waits there unread is read first. A start that replayed
        a big journal for longer than the lease's margin (2.2-3.6 s with 250,000 requests in it) otherwise
        stepped down at its first look, replayed again as it won again, and never served."""
        ha = self.ha
        if ha.leads(now):
            return True
        ha.hear(now, 0)
        return ha.leads(now)

    def _step_down(self, now: float) -> None:
        """No longer the leader: stop here, sending nothing (not even goodbyes); the events say why."""
        self.stepped_down = self.ha.why_not_leading(now)
        self.sched.events.append((ev.SYSTEM_HA_STEPPED_DOWN, self.ha.name, self.ha.epoch, self.stepped_down))
        self.eventlog.add(time.time(), self.sched.outbox.take_events())

    def _wound_down(self) -> bool:
        """Graceful stop: refuse new work, tell clients, wait for in-flight work up to grace_s."""
        now = time.monotonic()
        if self._stop_deadline is None:
            self._stop_deadline = now + self.config.grace_s
            self.poller.unregister(self.frontend)  # stop accepting: clients re-send to the next balancer
            self.client_side.tell_stopping()
            self.sched.events.append((ev.SYSTEM_STOPPING, self.sched.in_flight(), self.sched.waiting))
            return False
        return not self.sched.in_flight() or now >= self._stop_deadline

    def _say_goodbye(self) -> None:
        """Tell nodes to reconnect later and publish the last events."""
        self.node_side.tell_stopping()
        self._flush()
        self.publish_pending()

    def _tick(self, now: float) -> None:
        """Heartbeat the live nodes and publish the periodic stats."""
        sched = self.sched
        control.record_sample(self.state, now)
        sched.wall_offset = time.time() - time.monotonic()  # the wall clock may be stepped; deadlines follow it
        self.client_side.tick(now)
        self.times.roll(now)
        sched.sessions.sweep()
        # What outlived a tick is the loop's state (requests, results, routes), freed by reference counts, not
        # by the cycle collector: frozen out of collections, as at start-up (_tune_gc). A full collection over
        # 300,000 waiting requests took 71 to 280 ms of the loop, and its objects make no cycles: under the
        # throughput bench and an admin burst over 300,000 waiting, the collector found none after start-up.
        gc.freeze()
        self.node_side.tick()
        self.majordomo.tick(now)
        c = sched.counters
        active = sum(1 for n in sched.routes.values() if n.active)
        stats = (ev.STATS, sched.waiting, sched.in_flight(), active, c["submitted"], c["processed"], c["failed"])
        self.events_sock.send_multipart([p.TOPIC_STATS, p.encode_events([time.time(), [(*stats, c["requeued"])]])])
        sched.events.extend(self.eventlog.health_events())  # a log writer gone degraded, or back
        counters = self.incidents.counters
        counters["log_lines_dropped"] = self.eventlog.dropped_lines
        if self.journal is not None:
            recoveries = counters["journal_recoveries"]
            self.journal.tick(now)  # a file gone or failing turns it failing: new work refused, results held
            if self.replication is not None and counters["journal_recoveries"] != recoveries:
                # What the failing journal dropped never reached the standby either: it starts afresh.
                self.replication.resnapshot(now)
        if self.replication is not None:
            self.replication.tick(now)
        if self.ha is not None and self.ha.pipe.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.ha.pipe_waiting = True  # never expected (ask_insync notes it): a missed signal costs a tick at most
        if self.replication is not None and self.replication.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.replication.unsignalled = True  # the same

    def _flush(self) -> None:
        """Send what the scheduler decided; events are published by the loop, in batches."""
        out = self.sched.outbox
        journal = self.journal
        if out.cancels:  # before new work: a slot freed by a cancel may take it in this very pass
            self.node_side.send_cancels()
        if journal is not None and out.journal:
            self._write_journal()  # first: with a standby, its records are on their way before any WORK
        if not self._stopping and self.sched.has_queued():  # a stopping balancer starts no new work
            self.node_side.dispatch()
        if journal is not None:
            if out.journal:
                self._write_journal()  # what dispatching finished (a request out of attempts)
            if journal.compaction is not None:
                journal.step()
            if not journal.healthy:
                return  # results wait until their records can be written
        replication = self.replication
        if replication is not None:
            replication.hold(out, time.monotonic())  # this iteration's answers wait for the standby
            replication.release(out)  # earlier ones it has applied go now
        client_side = self.client_side
        if out.replies or out.replays or client_side.held or client_side.leaving.any or client_side.credit.wanting:
            client_side.flush()

    def _write_journal(self) -> None:
        """Append the records decided so far and ship them to a standby (a control answer that rests on one,
        a request id reservation, leaves only after this)."""
        if self.journal is not None and self.sched.outbox.journal:
            self.journal.append(None if self.replication is None else self._ship)

    def _ship(self, data: bytes, count: int) -> None:
        """A batch for the standby, before this member writes it: when answers rest on it, it leaves now,
        and the standby's APPLIED, which they wait for, is on its way while our own write goes on."""
        out = self.sched.outbox
        assert self.replication is not None
        self.replication.ship(data, count, answers=bool(out.replies or out.replays))

    def _ship_answer(self) -> None:
        """Journal and ship now what is decided: the records an answer rests on (NodeSide's lone result)."""
        if self.journal is not None and self.sched.outbox.journal:
            self.journal.append(self._ship_answering)

    def _ship_answering(self, data: bytes, count: int) -> None:
        assert self.replication is not None
        self.replication.ship(data, count, answers=True)

    def _read_replication(self, now: float, limit: int) -> None:
        """The standby's messages. Woken for the APPLIED that held answers wait for, they leave at once, not
        after the rest of the pass: nothing else is on a lone answer's path (the loop checked its leadership
        as it woke; answers the pass decided itself are held first, in _flush)."""
        replication = self.replication
        assert replication is not None
        replication.drain(now, limit)
        healthy = self.journal is None or self.journal.healthy  # as _flush: nothing leaves while it fails
        # With work queued, the pass's answers go together in _flush (one send to each client, not two).
        idle = limit == 1 and not self.sched.has_queued()
        if idle and healthy and replication.release_alone(self.sched.outbox):
            self.client_side.flush()

    def publish_pending(self) -> None:
        """Publish and log the events not yet published (also on the way out after a failure)."""
        if self.sched.events:
            self._publish()

    def _publish(self) -> None:
        batch = self.sched.outbox.take_events()
        ts = time.time()
        self.eventlog.add(ts, batch)
        for topic, events in grouped(batch, ev.topic_of_event).items():
            self.events_sock.send_multipart([topic, p.encode_events([ts, events])])


def _tune_gc() -> None:
    """Collect cycles rarely: the loop makes few (its state is trees of records), but it allocates
    a container or three per message, and at the default gen-0 threshold of 700 a collection ran
    every few dozen requests, each walking the long-lived survivors (12% of a busy loop's samples).
    What exists at start-up (a restored journal included) is frozen out of collections altogether,
    and so is what outlived each tick since (Balancer._tick)."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


# glibc's mallopt parameter for the size from which an allocation gets its own mmap.
_M_MMAP_THRESHOLD = -3


def _tune_malloc() -> None:
    """Hand big buffers back to the OS when they are freed (glibc only; elsewhere nothing changes).

    glibc maps an allocation of M_MMAP_THRESHOLD bytes or more on its own and unmaps it at free, but
    the threshold is dynamic: each such free raises it to that size (up to 32 MiB), after which big
    payloads come from the heap, whose freed memory stays in the process. Set once, the threshold
    stays put. Every buffer over the largest batch frame is a lone payload or result, so those are
    the ones returned at free; the cost is fresh pages (page faults) for each one received.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, limits.BATCH_BYTES + limits.BATCH_OVERHEAD_BYTES)


def run_balancer(config: BalancerConfig) -> None:
    """Run a balancer in this process until SIGINT or SIGTERM."""
    exposed = exposed_endpoints(list(config.endpoints.values()))
    if exposed and config.curve_secret is None:
        print(
            f"zlb balancer: warning: {', '.join(exposed)} reachable beyond this machine without curve;"
            " anyone who can connect can submit, join as a node and send admin commands"
            " (see zlb keys generate, --curve-secret, --allow)",
            file=sys.stderr,
            flush=True,
        )
    _tune_malloc()
    balancer = Balancer(config)
    _tune_gc()
    signal.signal(signal.SIGTERM, balancer.stop)
    signal.signal(signal.SIGINT, balancer.stop)
    try:
        balancer.run()
    finally:
        balancer.close()
