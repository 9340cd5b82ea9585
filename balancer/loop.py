"""The balancer process: one thread, one poller, four sockets.

Thin by design: drain each readable socket in a batch, decode headers, call
the scheduler, then send what it decided and publish the iteration's events
as one message per topic. Payloads pass through as opaque frames.

With --journal, the iteration's accepted and finished records are appended
with one write before its results are sent (balancer/journal.py). SIGTERM
stops accepting, tells clients, lets in-flight work finish for up to
grace_s, tells nodes, flushes the journal and exits.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from typing import Any

import zmq

from balancer import control
from balancer import journal as jr
from balancer.budget import hwm_for
from balancer.clients import ClientSide
from balancer.compaction import Compaction
from balancer.config import BalancerConfig
from balancer.control_side import ControlSide
from balancer.eventlog import EventLog
from balancer.node_side import NodeSide
from balancer.pressure import Pressure
from balancer.scheduler import Scheduler
from wire import events as ev
from wire import limits
from wire import protocol as p
from wire.batching import grouped
from wire.protocol import MsgType, ProtocolError
from wire.security import CurveServer, exposed_endpoints
from wire.sockets import drain_limit

# Events are published (and handed to the log) at most this often, and sooner
# once this many wait: one PUB message and one log hand-over per interval rather
# than per loop iteration, so a lone request does not pay for two extra sends.
PUBLISH_INTERVAL_S = 0.01
PUBLISH_MAX_EVENTS = 4096
# Bad input is logged at most this often per (socket, kind); every one is counted.
BAD_INPUT_LOG_INTERVAL_S = 5.0

# Container allocations between gen-0 collections (CPython's default is 700); see _tune_gc.
GC_GEN0_THRESHOLD = 50_000


class Balancer(ClientSide, NodeSide, ControlSide, Pressure):
    """Owns the sockets and the scheduler; nothing else touches either."""

    def __init__(self, config: BalancerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.heartbeat_s = config.heartbeat_ms / 1000
        # Deadlines are checked ten times per interval, so a dead node is noticed within
        # liveness intervals plus a tenth; the check is O(nodes), cheap even at 1,000.
        self._expiry_check_s = self.heartbeat_s / 10
        self.sched = Scheduler(
            heartbeat_s=self.heartbeat_s,
            liveness=config.liveness,
            max_queue=config.max_queue,
            max_attempts=config.max_attempts,
            keep_finished=config.keep_finished,
            keep_finished_bytes=config.keep_finished_bytes,
            # Microseconds since the epoch: a later balancer's tickets never repeat an earlier one's.
            first_ticket=time.time_ns() // 1000,
            journal=config.journal is not None,
            max_memory_bytes=config.max_memory_bytes,
        )
        self.eventlog = EventLog(config.log_file)
        self.state = control.BalancerState(self.sched, self.eventlog, config.endpoints, time.monotonic(), time.time())
        self._ctx = context or zmq.Context.instance()
        self._stopping = False
        self._stop_deadline: float | None = None
        self._init_pressure(time.monotonic())
        self.state.loop_max_ms = self.loop_max_ms
        self._bad_logged: dict[tuple[str, str], float] = {}
        self.journal: jr.Journal | None = None
        self._compaction: Compaction | None = None
        self.curve: CurveServer | None = None
        self._monitors: dict[zmq.Socket, str] = {}
        if config.journal is not None:
            self._open_journal(config.journal)
        if config.curve_secret is not None:
            self.curve = CurveServer.start(
                self._ctx, config.curve_secret, config.allow_dir or "", config.admin_allow_dir
            )
        try:
            self._open_sockets()
        except BaseException:
            self._close_security()
            raise

    def _open_journal(self, path: str) -> None:
        """Replay the journal into the scheduler, then start it afresh with that state."""
        recovered = jr.recover(path, self.config.keep_finished)  # keeps a damaged file aside first
        jr.restore(self.sched, recovered)
        self.journal = jr.Journal(path)
        self.journal.open(jr.snapshot(self.sched))
        counters = self.state.counters
        counters["journal_restored_pending"] = len(recovered.pending)
        counters["journal_restored_finished"] = len(recovered.finished)
        counters["journal_records_lost"] = recovered.records_lost
        counters["journal_bytes_skipped"] = recovered.bytes_skipped
        if recovered.damaged:
            lost, skipped = recovered.records_lost, recovered.bytes_skipped
            self.sched.events.append((ev.SYSTEM_JOURNAL_DAMAGED, path, lost, skipped, recovered.kept_as))
        if recovered.records:
            self.sched.events.append(
                (
                    ev.SYSTEM_JOURNAL_RESTORED,
                    path,
                    len(recovered.pending),
                    len(recovered.finished),
                    recovered.torn_bytes,
                )
            )

    # ---- sockets --------------------------------------------------------

    def _open_sockets(self) -> None:
        cfg = self.config
        self.frontend = self._bind(zmq.ROUTER, cfg.frontend)
        self.backend = self._bind(zmq.ROUTER, cfg.backend)
        # A node keeps its identity across reconnects; let its new connection take over.
        self.backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A send to a route with no connection raises instead of vanishing: work that
        # cannot leave goes straight back to the queue (see _send_work).
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control_sock = self._bind(zmq.ROUTER, cfg.control)
        self.events_sock = self._bind(zmq.PUB, cfg.events)
        self.poller = zmq.Poller()
        # The control socket is polled by its file descriptor (ZMQ_FD), not as a socket: zmq_poll
        # asks each socket for ZMQ_EVENTS before and after it sleeps, a poll(2) each, and control
        # traffic is rare, so requests pay for two sockets, not three. _drain_control notes what
        # the descriptor will not signal again (balancer/control_side.py); the loop drains it then
        # as if signalled, once per pass and inside the pass's timing, like any socket.
        self._control_fd = self.control_sock.getsockopt(zmq.FD)
        self._readers = {
            self.frontend: self._drain_frontend,
            self.backend: self._drain_backend,
            self._control_fd: self._drain_control,
        }
        if self.curve is not None:
            self._watch_handshakes()
        for sock in self._readers:
            self.poller.register(sock, zmq.POLLIN)

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.socket_limit(self.config.max_message_bytes))
        # Messages queued per peer follow from the memory budget (balancer/budget.py): a full
        # send pipe says EAGAIN (ROUTER_MANDATORY) and pauses that client, a full receive
        # pipe stops reading its peer, so neither grows without bound.
        hwm = hwm_for(self.config.max_memory_bytes)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot bind {endpoint}: {exc}") from None
        return sock

    def close(self) -> None:
        """Close every socket, flush the journal and the log file."""
        for sock in (self.frontend, self.backend, self.control_sock, self.events_sock):
            sock.close(linger=0)
        for mon in self._monitors:
            mon.close(linger=0)
        if self.journal is not None:
            self.journal.close()
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

    def run(self) -> None:
        """Serve until stop() is called, then wind down."""
        self.sched.events.append((ev.SYSTEM_STARTED, *self.config.endpoints.values()))
        next_tick = next_expiry = time.monotonic() + self.heartbeat_s
        next_publish = 0.0
        poll = self.poller.poll
        readers = self._readers
        control_fd = self._control_fd
        while not self._stopping or not self._wound_down():
            now = time.monotonic()
            deadline = min(next_tick, next_expiry, next_publish if self.sched.events else next_tick)
            control_waiting = self._control_waiting
            busy = self._compaction or control_waiting
            timeout_ms = 0 if busy else max(0, int((deadline - now) * 1000) + 1)
            ready = poll(timeout_ms)
            woke = time.monotonic()
            # Woken from idle, one message per socket, then the flush: what woke the loop is
            # answered first (wire/sockets.py). Busy, it drains in batches.
            limit = drain_limit(woke - now)
            if control_waiting and all(sock != control_fd for sock, _ in ready):
                ready.append((control_fd, zmq.POLLIN))  # arrivals its descriptor will not signal again
            for sock, _ in ready:
                readers[sock](woke, limit)
            now = time.monotonic()
            if now >= next_expiry:
                self.sched.expire(now)
                next_expiry = now + self._expiry_check_s
            if now >= next_tick:
                self._tick(now)
                next_tick = now + self.heartbeat_s
            self._flush()
            events = self.sched.events
            if events and (now >= next_publish or len(events) >= PUBLISH_MAX_EVENTS):
                self._publish()
                next_publish = now + PUBLISH_INTERVAL_S
            self._note_iteration(time.monotonic() - woke)  # poll wait excluded: the stall a probe sees
        self._say_goodbye()

    def _wound_down(self) -> bool:
        """Graceful stop: refuse new work, tell clients, wait for in-flight work up to grace_s."""
        now = time.monotonic()
        if self._stop_deadline is None:
            self._stop_deadline = now + self.config.grace_s
            self.poller.unregister(self.frontend)  # stop accepting: clients re-send to the next balancer
            shutdown = p.encode(MsgType.REJECTED, None, p.REASON_STOPPING)
            for route in self._known_routes():
                self._send_client(route, shutdown)
            self.sched.events.append((ev.SYSTEM_STOPPING, self.sched.in_flight(), self.sched.waiting))
            return False
        return not self.sched.in_flight() or now >= self._stop_deadline

    def _say_goodbye(self) -> None:
        """Tell nodes to reconnect later and publish the last events."""
        shutdown = p.encode(MsgType.RECONNECT, p.REASON_STOPPING)
        for route in self.sched.routes:
            self._send_node(route, [shutdown])
        self._flush()
        self._flush_events()

    def _flush_events(self) -> None:
        if self.sched.events:
            self._publish()

    def _tick(self, now: float) -> None:
        """Heartbeat the live nodes and publish the periodic stats."""
        sched = self.sched
        control.record_sample(self.state, now)
        self._age_routes(now)
        self._roll_loop_max(now)
        sched.sessions.sweep(now)
        ping = p.encode(MsgType.PING)
        for route in sched.routes:
            self._send_node(route, [ping])
        c = sched.counters
        active = sum(1 for n in sched.routes.values() if n.active)
        stats = (ev.STATS, sched.waiting, sched.in_flight(), active, c["submitted"], c["processed"], c["failed"])
        self.events_sock.send_multipart([p.TOPIC_STATS, p.encode_events([time.time(), [(*stats, c["requeued"])]])])
        self.sched.events.extend(self.eventlog.health_events())  # a log writer gone degraded, or back
        self.state.counters["log_lines_dropped"] = self.eventlog.dropped_lines
        if self.journal is not None:
            self.journal.check()  # a failed fsync stops the balancer (run_balancer says why)
            journal, counters = self.journal, self.state.counters
            counters["journal_records"] = journal.appended
            counters["journal_bytes"] = journal.bytes_written
            counters["journal_compactions"] = journal.compactions

    def _flush(self) -> None:
        """Send what the scheduler decided; events are published by the loop, in batches."""
        sched = self.sched
        out = sched.outbox
        while sched.waiting and not self._stopping:  # a stopping balancer starts no new work
            if self._send_work(sched.dispatch()):
                break  # all left; otherwise what could not leave was re-queued: dispatch again
        if out.journal:
            self._append_journal()
        if self._compaction is not None and self._compaction.step():
            self._compaction = None
        if self._held:
            self._retry_held()  # results held for full client pipes go first, in order
        if out.replies:
            self._send_results(out.take_replies(), False)
        if out.replays:
            self._send_results(out.take_replays(), True)

    def _count(self, name: str) -> None:
        self.state.counters[name] = self.state.counters.get(name, 0) + 1

    def _append_journal(self) -> None:
        """One write for the iteration's records, before any of its results leave."""
        sched = self.sched
        self.journal.append(sched.outbox.take_journal())
        live = sched.remembered_finished + sched.waiting + sched.in_flight()
        if self._compaction is None and self.journal.due_for_compaction(live):
            self._compaction = Compaction(self.journal, sched)  # a slice per iteration (balancer/compaction.py)

    def publish_last_events(self) -> None:
        """Publish and log what is pending, on the way out after a failure."""
        self._flush_events()

    def _publish(self) -> None:
        batch = self.sched.outbox.take_events()
        ts = time.time()
        self.eventlog.add(ts, batch)
        for topic, events in grouped(batch, ev.topic_of_event).items():
            self.events_sock.send_multipart([topic, p.encode_events([ts, events])])

    # ---- bad input ------------------------------------------------------

    def _bad_input(self, sock_name: str, exc: ProtocolError, now: float) -> None:
        """Count a bad message, and log it unless that kind was logged lately."""
        key = f"{sock_name}.{exc.kind}"
        count = self.state.bad_input[key] = self.state.bad_input.get(key, 0) + 1
        last = self._bad_logged.get((sock_name, exc.kind))
        if last is None or now - last >= BAD_INPUT_LOG_INTERVAL_S:
            self._bad_logged[(sock_name, exc.kind)] = now
            self.sched.events.append((ev.SYSTEM_BAD_INPUT, sock_name, exc.kind, exc.detail[:200], count))

    def _refusal(self, kind: str, subject: Any, reason: str, now: float) -> None:
        """Log a refused id unless one of this kind was logged lately (the scheduler counts every one)."""
        last = self._bad_logged.get(("refused", kind))
        if last is None or now - last >= BAD_INPUT_LOG_INTERVAL_S:
            self._bad_logged[("refused", kind)] = now
            self.sched.events.append((kind, subject, reason))


def _tune_gc() -> None:
    """Collect cycles rarely: the loop makes few (its state is trees of records), but it allocates
    a container or three per message, and at the default gen-0 threshold of 700 a collection ran
    every few dozen requests, each walking the long-lived survivors (12% of a busy loop's samples).
    What exists at start-up (a restored journal included) is frozen out of collections altogether."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


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
    balancer = Balancer(config)
    _tune_gc()
    signal.signal(signal.SIGTERM, balancer.stop)
    signal.signal(signal.SIGINT, balancer.stop)
    try:
        balancer.run()
    except jr.JournalError as exc:
        # Durability is the journal's promise: stop rather than answer from state it cannot keep.
        balancer.sched.events.append((ev.SYSTEM_JOURNAL_FAILED, config.journal, str(exc)))
        balancer.publish_last_events()
        raise
    finally:
        balancer.close()
