"""`zlb balancer --ha`: one member of a leader/standby group, its phases and what etcd says.

A member starts as a standby (balancer/standby.py): it follows the leader's
journal into its own and points peers at the leader. When the elector
(balancer/election.py, a thread) says this member won, the standby's sockets
close and a Balancer (balancer/loop.py) starts on the same endpoints from the
journal the standby wrote, stamping the new epoch on everything it sends, with
a Replication part (balancer/replication.py) for the next standby. The
Balancer leads while `leads()` holds: the lease renewed in time and etcd still
naming this member with this epoch. The moment either fails (etcd lost, the
process paused past its lease, another member won) it stops sending and
returns; the member goes back to being a standby. SIGTERM: a leader stops
gracefully and revokes its lease so a standby takes over at once.

This object is the single owner of what etcd says in this process; the
elector thread only reports, over an inproc PAIR socket.
"""

from __future__ import annotations

import itertools
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from balancer import journal as jr
from balancer.config import BalancerConfig
from balancer.election import Elector, HaConfig
from balancer.journal_lock import JournalLock
from balancer.replica import Replica
from balancer.standby import Standby
from wire import protocol as p

BIND_RETRY_S = 3.0  # a port the previous phase closed may take libzmq a moment to let go
_pipes = itertools.count()


class Member:
    """One HA member: the elector's link, what etcd says, and the phase it is in."""

    def __init__(self, config: BalancerConfig, context: zmq.Context | None = None) -> None:
        assert config.ha is not None and config.replication is not None and config.journal is not None
        self.config = config
        self.context = context or zmq.Context.instance()
        self.ha = HaConfig.parse(config.ha, config.ha_lease_s)
        bound = {**config.endpoints, "replication": config.replication}
        _check_replication(self.context, config.replication, config.endpoints)
        _check_group(config.journal, self.ha.group)
        # What the others are told: a wildcard bind is reachable at this host's name, not at "*".
        self.endpoints = {role: advertised(ep) for role, ep in bound.items()} | {"host": socket.gethostname()}
        address = f"inproc://zlb-elector-{next(_pipes)}"
        self.pipe = self.context.socket(zmq.PAIR)
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.bind(address)
        # The leading loop polls the pipe by its descriptor, not as a socket (balancer/loop.py, as the control
        # socket): each socket zmq_poll polls costs a poll(2) before and after it sleeps, on every wake-up of
        # the leader, and the elector speaks a few times a lease. `pipe_waiting`: a message arrived that the
        # descriptor will not signal (our own send on the pipe took the signal), read on the loop's next pass.
        self.pipe_fd: int = self.pipe.getsockopt(zmq.FD)
        self.pipe_waiting = False
        self.name = self.endpoints["replication"]  # unique in the group: etcd refuses a second live holder
        self.elector = Elector(self.context, address, self.ha, self.name, self.endpoints)
        self.leader: dict[str, Any] | None = None
        self.leader_epoch = 0
        self.members: dict[str, Any] = {}
        self.etcd_ok: bool | None = None
        self.etcd_problem = ""
        self.epoch = 0  # ours, while we lead
        self.valid_until = 0.0
        self.last_takeover: dict[str, Any] | None = None
        self.stopping = False
        self.fatal: str | None = None  # why this member cannot serve (said on exit)
        self.balancer: Any = None
        self.pending: tuple[int, float] | None = None  # an election heard while still leading an older epoch
        self.replication: Any = None  # the leading Balancer's Replication part, for insync answers

    # ---- what the elector says --------------------------------------------

    def hear_elector(self, now: float) -> tuple[int, float] | None:
        """Read the elector's reports; (epoch, valid_until) once this member has won."""
        elected = None
        while self.pipe.poll(0):
            message = self.pipe.recv_pyobj()
            kind = message[0]
            if kind == "lease":
                self.valid_until = message[1]
            elif kind == "elected":
                elected = (message[1], message[2])
            elif kind == "leader":
                self.leader, self.leader_epoch = message[1], message[2]
                if self.balancer is None:
                    p.set_epoch(self.leader_epoch)  # a standby's REDIRECTs carry the leadership it names
            elif kind == "members":
                self.members = message[1]
            elif kind == "etcd":
                self.etcd_ok, self.etcd_problem = message[1], message[2]
                if self.balancer is not None:
                    self.balancer.note_etcd(message[1], message[2])
            elif kind == "conflict":
                self.fatal, self.stopping = message[1], True
            elif kind == "insync" and self.replication is not None:
                self.replication.insync_written(message[1], message[2])
        return elected

    def hear(self, now: float, _limit: int) -> None:
        """The leading loop's reader for the pipe. An election heard while leading is a new leadership of
        ours (our old key expired and we won again): the loop steps down from the old epoch, and the
        member leads again with the new one at once (`run`)."""
        self.pipe_waiting = False  # hear_elector reads until the pipe is empty, which re-arms its descriptor
        elected = self.hear_elector(now)
        if elected is not None:
            self.pending = elected

    def own_leadership(self, now: float) -> tuple[int, float] | None:
        """etcd names this member leader and its lease holds: (epoch, valid until). A standby that hears so
        leads, whether or not the elector's "elected" reached it (it may have come while the loop stepped
        down from an older epoch, or the renewal that keeps it came late)."""
        leader = self.leader
        if leader is None or leader.get("name") != self.name or not self.leader_epoch or now >= self.valid_until:
            return None
        return self.leader_epoch, self.valid_until

    def leads(self, now: float) -> bool:
        """Whether this member may still act as leader: lease in time, etcd still naming it."""
        if now >= self.valid_until:
            return False
        leader = self.leader
        return leader is not None and leader.get("name") == self.name and self.leader_epoch == self.epoch

    def why_not_leading(self, now: float) -> str:
        if now >= self.valid_until:
            return "its etcd lease could not be renewed in time (etcd unreachable, or this process was paused)"
        if self.leader is None:
            return "etcd names no leader (the leader key is gone)"
        return f"etcd names another leader ({self.leader.get('name')}, epoch {self.leader_epoch})"

    def ask_insync(self, members: list[str], epoch: int) -> None:
        self.pipe.send_pyobj(("insync", members, epoch))
        self.pipe_waiting = bool(self.pipe.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def view(self) -> dict[str, Any]:
        """The HA section of `zlb status`."""
        return {
            "name": self.name,
            "group": self.ha.group,
            "leader": (self.leader or {}).get("name"),
            "leader_endpoints": (self.leader or {}).get("endpoints"),
            "members": self.members,
            "etcd_ok": self.etcd_ok,
            "etcd_problem": self.etcd_problem or None,
            "last_takeover": self.last_takeover,
        }

    # ---- phases ---------------------------------------------------------------

    def bind(
        self, ctx: zmq.Context, kind: int, endpoint: str, prepare: Callable[[zmq.Socket], None] | None = None
    ) -> zmq.Socket:
        """A bound socket (`prepare` sets its options first), retrying briefly while the previous phase's
        socket lets the port go."""
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if prepare is not None:
                prepare(sock)
            try:
                sock.bind(endpoint)
                return sock
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                if exc.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                    raise OSError(f"cannot bind {endpoint}: {exc}") from None
                time.sleep(0.02)  # wait-ok: the kernel and libzmq's I/O thread release the port

    def stop(self, *_args: Any) -> None:
        """SIGTERM/SIGINT: a standby stops; a leader stops gracefully and gives its lease up."""
        if self.balancer is not None:
            self.balancer.stop()
        self.stopping = True

    def run(self) -> None:
        from balancer.loop import Balancer  # the leader's loop; imported here to keep the layers one-way

        self.elector.start()
        lock = self._lock()
        try:
            while not self.stopping:
                elected, self.pending = self.pending, None
                if elected is None:
                    elected = self._standby()
                if elected is None or self.stopping:  # a SIGTERM that came as we won: stop, do not lead
                    break
                lock.release()
                lock = None
                self._lead(Balancer, *elected)
                if not self.stopping:
                    lock = self._lock()
        finally:
            if lock is not None:
                lock.release()
            self.pipe.send_pyobj(("resign",))
            self.elector.stop()
            self.elector.join(2)
            self.pipe.close(linger=0)
        if self.fatal:
            raise OSError(self.fatal)

    def _lock(self) -> JournalLock:
        path = self.config.journal
        return JournalLock.acquire(path, jr.lock_path(path), self.config.endpoints)

    def _standby(self) -> tuple[int, float] | None:
        replica = Replica(self.context, self.config.journal, self.name, self.config.scheduler_options())
        standby = Standby(self, replica)
        try:
            return standby.run()
        finally:
            standby.close()
            replica.close()

    def _lead(self, balancer_class: Any, epoch: int, valid_until: float) -> None:
        started = time.monotonic()
        self.epoch, self.valid_until = epoch, valid_until
        p.set_epoch(epoch)
        balancer = balancer_class(self.config, ha=self)
        self.balancer = balancer
        self.replication = balancer.replication
        took_s = round(time.monotonic() - started, 3)
        self.last_takeover = {"at": time.time(), "epoch": epoch, "name": self.name, "start_s": took_s}
        print(f"zlb balancer: {self.name} leads, epoch {epoch} (started in {took_s} s)", file=sys.stderr, flush=True)
        try:
            balancer.run()
        finally:
            self.balancer = self.replication = None
            balancer.close()
            self.epoch = 0
        if balancer.stepped_down:
            print(f"zlb balancer: {self.name} stopped leading: {balancer.stepped_down}", file=sys.stderr, flush=True)


def _check_replication(ctx: zmq.Context, endpoint: str, others: dict[str, str]) -> None:
    """The replication endpoint must be one of its own and bindable, before this member may campaign:
    a leader that cannot bind it would hold the group's in-sync list and serve no one."""
    clash = [role for role, bound in others.items() if bound == endpoint]
    if clash:
        raise OSError(f"--replication {endpoint} is also this balancer's --{clash[0]}")
    if endpoint.startswith("ipc://") and _listening(endpoint[len("ipc://") :]):
        # libzmq's ipc bind would unlink the live socket file and take another member's endpoint from it.
        raise OSError(f"--replication {endpoint} is in use by another process")
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(f"cannot bind --replication {endpoint}: {exc}") from None
    finally:
        sock.close(linger=0)


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _check_group(journal: str, group: str) -> None:
    """A journal serves one group: PATH.group names it, and a member of another group refuses the journal."""
    marker = f"{journal}.group"
    try:
        with open(marker, encoding="utf-8") as fh:
            named = fh.read().strip()
    except FileNotFoundError:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(group + "\n")
        return
    if named != group:
        raise OSError(f"journal {journal} belongs to HA group {named!r} ({marker}), not {group!r}")


def advertised(endpoint: str) -> str:
    """An endpoint as other machines can dial it: tcp://*:P and tcp://0.0.0.0:P name this host instead."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{socket.gethostname()}:{endpoint[len(wildcard):]}"
    return endpoint


def run_member(config: BalancerConfig) -> None:
    """Run one HA member in this process until SIGINT or SIGTERM."""
    member = Member(config)
    signal.signal(signal.SIGTERM, member.stop)
    signal.signal(signal.SIGINT, member.stop)
    member.run()
