"""The leader's half of replication: the journal shipped to the standby before anyone is answered.

The leader binds its replication endpoint (a ROUTER). A standby connects and
says FOLLOW; the leader sends a SNAPSHOT (its whole state as journal bytes,
what a start writes) and from then on every iteration's journal bytes as
RECORDS numbered by `seq`, exactly the bytes its own journal got. The standby
writes them to its journal and answers APPLIED [seq] (balancer/replica.py).

Answers wait for the standby (the gate). From the moment the leader asks
etcd to list the standby as in sync (balancer/election.py), the iteration's
results and replays are held, stamped with the seq of the records they rest
on, and leave once the standby has APPLIED that seq: a result a client has
seen is then in two journals on two hosts. The gate opens only after etcd
says the standby is out of the in-sync list, so a member that etcd would let
campaign always holds everything anyone was answered.

A standby that falls behind (its oldest unapplied batch older than
`max_lag_s`) or goes silent is dropped: insync := [leader] first, then the
held answers leave, with an ERROR event; until a standby is back in sync the
leader goes on alone, which `zlb status` (`ha.alone`), the dashboards and
the WARNING say; with --require-standby it refuses new work as busy instead.
What it sends to nodes (WORK) is not held: a request dispatched before the
standby had it may run again after a takeover, as in-flight work may.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from balancer import journal as jr
from balancer import journal_format as jf
from balancer.records import Request
from balancer.scheduler import Scheduler
from wire import events as ev
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received, send_routed

# The leader sends an empty RECORDS once per tick (its heartbeat): the standby knows the leader lives,
# and answers. Either side counts this many keep-alive intervals without a word as silence.
SILENT_KEEPALIVES = 4
# Journal bytes wait for the answers that rest on them, a tick, or this many bytes, whichever comes first.
UNSENT_MAX_BYTES = 256 * 1024
REFUSING = f"{p.REASON_BUSY}: no standby is in sync and this leader runs with --require-standby; re-send later"


@dataclass
class Standby:
    """The member that follows: where it is, what it applied."""

    route: bytes
    name: str
    snapshot_seq: int
    applied: int = -1
    heard_at: float = 0.0
    since: float = field(default_factory=time.time)


class Replication:
    """The replication socket, the standby that follows, and the answers that wait for it."""

    def __init__(
        self,
        sock: zmq.Socket,
        sched: Scheduler,
        counters: dict[str, int],
        elector: Any,
        epoch: int,
        name: str,
        max_lag_s: float,
        keepalive_s: float,
        require_standby: bool = False,
    ) -> None:
        self.sock = sock
        # The loop polls this socket by its descriptor (as the control socket): a socket in zmq_poll costs two
        # syscalls on every wake-up of the leader, three of them on a request's path. `unsignalled`: an arrival
        # the descriptor will not signal again (a drain's limit, or our own send took the signal), found by
        # recheck() after the loop's flush: the ZMQ_EVENTS it asks is off the path of the answers.
        self.fd: int = sock.getsockopt(zmq.FD)
        self.unsignalled = False
        self._recheck = False
        self.sched = sched
        self.counters = counters
        self.elector = elector  # ask_insync(members) -> None; the answer comes back as insync_written()
        self.epoch = epoch
        self.name = name
        self.max_lag_s = max_lag_s
        self.keepalive_s = keepalive_s
        self.require_standby = require_standby
        self.seq = 0
        self.standby: Standby | None = None
        self.gating = False  # answers wait for the standby: etcd may list it as in sync
        self.in_sync = False  # etcd confirmed it
        self._asking: list[str] | None = None  # an insync write under way
        self._held: deque[tuple[int, float, list[Request], list[Request]]] = deque()
        self._last_sent = 0.0
        self._shipped: deque[tuple[int, int]] = deque()  # (seq, records shipped up to it) not yet applied
        # Journal bytes not yet sent: they go with the answers that rest on them (see ship).
        self._unsent: list[bytes] = []
        self._unsent_records = self._unsent_bytes = 0
        self._records = self._applied_records = 0
        for name_ in ("ha_records_shipped", "ha_standby_dropped", "ha_snapshots", "ha_bad_messages"):
            counters.setdefault(name_, 0)
        self._alone(True)

    # ---- the socket -------------------------------------------------------

    def drain(self, now: float, limit: int) -> None:
        for frames in received(self.sock, limit, routed=True):
            try:
                msg_type, fields, _body = p.decode_routed(frames)
            except ProtocolError:
                self.counters["ha_bad_messages"] += 1
                continue
            if msg_type is MsgType.FOLLOW:
                self._follow(frames[0], fields[0], now)
            elif msg_type is MsgType.APPLIED:
                self._applied(frames[0], fields[0], now)
            else:
                self.counters["ha_bad_messages"] += 1
        self._recheck = True

    def _follow(self, route: bytes, name: str, now: float) -> None:
        """A member asks to follow: the whole state now, then the stream."""
        current = self.standby
        if current is not None and current.name != name and self.gating:
            return  # one standby at a time; the other may follow once this one is dropped
        self._send_unsent()  # to the standby that had the stream: the snapshot holds their effects
        records = jr.snapshot(self.sched)
        data = jf.frame(p.encode_records([jf.MAGIC, *records]))
        self.standby = Standby(route, name, self.seq, heard_at=now)
        self._shipped.clear()
        self._applied_records = self._records
        self.counters["ha_snapshots"] += 1
        self._send(MsgType.SNAPSHOT, self.seq, 1 + len(records), data, int(self.keepalive_s * 1000))
        self.sched.events.append((ev.SYSTEM_HA_FOLLOWING, name, len(records)))

    def resnapshot(self, now: float) -> None:
        """Send the standby the whole state again (the stream missed records); answers wait for it if gating."""
        standby = self.standby
        if standby is not None:
            self._follow(standby.route, standby.name, now)

    def _applied(self, route: bytes, seq: int, now: float) -> None:
        standby = self.standby
        if standby is None or standby.route != route:
            return
        standby.applied = max(standby.applied, seq)
        standby.heard_at = now
        shipped = self._shipped
        while shipped and shipped[0][0] <= seq:
            self._applied_records = shipped.popleft()[1]
        if not self.gating and standby.applied >= standby.snapshot_seq and self._lag_s(now) < self.max_lag_s:
            self._ask([self.name, standby.name])  # caught up: from now on answers wait for it
            self.gating = True

    def _send(self, msg_type: MsgType, seq: int, count: int, data: bytes, *extra: int) -> None:
        standby = self.standby
        if standby is None:
            return
        # send_routed: pyzmq's send_multipart adds ~10 us of Python per message, on the path of every answer.
        try:
            if not send_routed(self.sock, standby.route, [p.encode(msg_type, seq, count, *extra), data]):
                self._last_sent = time.monotonic()
        except zmq.ZMQError:
            pass  # a gone standby or a full pipe: the lag check drops it, and it follows again
        self._recheck = True

    # ---- the loop's side ----------------------------------------------------

    def recheck(self) -> None:
        """After the loop's flush: whether messages wait that the descriptor will not signal (see `fd`)."""
        if self._recheck:
            self._recheck = False
            self.unsignalled = bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def ship(self, data: bytes, count: int, answers: bool = False) -> None:
        """The iteration's journal bytes, sent with the next answers that rest on them (one round trip for
        a request's ACCEPTED and FINISHED; `answers`: this batch has some, so it leaves now), at the next
        tick, or once UNSENT_MAX_BYTES wait."""
        self._unsent.append(data)
        self._unsent_records += count
        self._unsent_bytes += len(data)
        if self._unsent_bytes >= UNSENT_MAX_BYTES or (answers and self.gating):
            self._send_unsent()

    def _send_unsent(self) -> None:
        """Number what waits as one batch of the stream and send it to the standby (if one follows)."""
        if not self._unsent:
            return
        data = self._unsent[0] if len(self._unsent) == 1 else b"".join(self._unsent)
        count = self._unsent_records
        self._unsent, self._unsent_records, self._unsent_bytes = [], 0, 0
        self.seq += 1
        self.counters["ha_records_shipped"] += count
        self._records += count
        if self.standby is not None:
            self._shipped.append((self.seq, self._records))
        self._send(MsgType.RECORDS, self.seq, count, data)

    def hold(self, out: Any, now: float) -> None:
        """While gating, the iteration's answers wait for the standby to apply what they rest on."""
        if self.gating and (out.replies or out.replays):
            self._send_unsent()
            self._held.append((self.seq, now, out.take_replies(), out.take_replays()))

    def release(self, out: Any) -> bool:
        """Answers whose records the standby has applied (all of them once the gate is open) go back out;
        whether any did."""
        held = self._held
        if not held:
            return False
        applied = self.standby.applied if self.gating and self.standby is not None else None
        released = False
        while held and (applied is None or held[0][0] <= applied):
            _seq, _at, replies, replays = held.popleft()
            out.replies.extend(replies)
            out.replays.extend(replays)
            released = True
        return released

    def release_alone(self, out: Any) -> bool:
        """release(), but only if `out` holds no answers of its own: ones decided since the last flush wait to be
        held (hold()), and must not leave with these. Whether any left."""
        return not (out.replies or out.replays) and self.release(out)

    @property
    def waiting(self) -> bool:
        """Answers are held for the standby."""
        return bool(self._held)

    def tick(self, now: float) -> None:
        """Keep the stream alive, and drop a standby that fell behind or went silent."""
        self._send_unsent()
        standby = self.standby
        if standby is None:
            return
        if time.monotonic() - self._last_sent >= self.keepalive_s * 0.9:
            self._send(MsgType.RECORDS, self.seq, 0, b"")
        silent = now - standby.heard_at > max(self.max_lag_s, SILENT_KEEPALIVES * self.keepalive_s)
        if silent or self._lag_s(now) > self.max_lag_s:
            self._drop(f"standby {standby.name} {'went silent' if silent else 'fell behind'}", now)
        elif self.gating and not self.in_sync and self._asking is None:
            # The write listing it had no known outcome (etcd slow or away): ask again, or the leader would
            # say it is alone, and refuse work with --require-standby, for as long as it leads.
            self._ask([self.name, standby.name])

    def _lag_s(self, now: float) -> float:
        """How long the oldest answer has waited for the standby (0 if none waits)."""
        return now - self._held[0][1] if self._held else 0.0

    def _drop(self, reason: str, now: float) -> None:
        standby = self.standby
        if standby is None:
            return
        if self.gating:
            if self._asking != [self.name]:
                self._ask([self.name])
            return  # answers keep waiting until etcd no longer lists the standby
        self.standby = None
        self.counters["ha_standby_dropped"] += 1
        self.sched.events.append((ev.SYSTEM_HA_STANDBY_DROPPED, standby.name, reason))

    def _ask(self, members: list[str]) -> None:
        self._asking = members
        self.elector.ask_insync(members, self.epoch)

    def insync_written(self, members: list[str], ok: bool) -> None:
        """etcd's answer to an insync write."""
        if members != self._asking:
            return
        self._asking = None
        if not ok:
            return  # unknown outcome: keep gating as if written; the next tick asks again (tick())
        if members == [self.name]:
            self.gating = self.in_sync = False
            dropped = self.standby
            self.standby = None
            if dropped is not None:
                self.counters["ha_standby_dropped"] += 1
                self.sched.events.append((ev.SYSTEM_HA_STANDBY_DROPPED, dropped.name, "fell behind or went silent"))
            self._alone(True)
        else:
            self.in_sync = True
            self._alone(False)

    def _alone(self, alone: bool) -> None:
        if alone:
            self.sched.events.append((ev.SYSTEM_HA_ALONE, self.name))
        if self.require_standby and alone:
            self.sched.refusing = self.sched.refusing or REFUSING
        elif self.sched.refusing == REFUSING:
            self.sched.refusing = ""

    def view(self, now: float) -> dict[str, Any]:
        """The replication part of `zlb status`."""
        standby = self.standby
        return {
            "standby": None if standby is None else standby.name,
            "in_sync": self.in_sync,
            "alone": not self.in_sync,
            "lag_records": 0 if standby is None else self._records + self._unsent_records - self._applied_records,
            "lag_ms": round(self._lag_s(now) * 1000, 1),
            "held_answers": sum(len(r) + len(q) for _s, _t, r, q in self._held),
            "seq": self.seq,
            "epoch": self.epoch,
        }
