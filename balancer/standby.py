"""An HA member that does not lead: it follows the leader's journal and points everyone at the leader.

The standby binds the same four endpoints a leader would (its own frontend,
backend, control and events), so a client, node or admin given the group's
list may reach it at any time:
- a client or node gets REDIRECT naming the leader's frontend or backend (None
  while no one leads: the peer tries the next member after a while);
- `zlb status` is answered here (`"role": "standby"`, the leader, the lag);
  every other control command answers an error naming the leader's control
  endpoint, which `wire/control_client.py` follows on its own.
Meanwhile it follows the leader's stream into its journal (balancer/replica.py).
It runs until the elector says this member won (`elected`) or the member is
stopped; balancer/member.py then starts the leader on the same endpoints.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import zmq

from balancer.replica import Replica
from wire import limits
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError
from wire.sockets import received

TICK_S = 0.1
# While following, the quiet sockets (peers to redirect, status queries, the elector) wait at most this long.
QUIET_LOOK_MS = 5
# Control commands answered per pass (status queries: a person or a script, never a flood of them).
CONTROL_DRAIN = 16


class Standby:
    """The standby's sockets and its replica; `run` returns the epoch it was elected with (None: stopped)."""

    def __init__(self, member: Any, replica: Replica) -> None:
        self.member = member  # balancer/member.py: config, name, elector link, what etcd says
        self.replica = replica
        cfg = member.config
        ctx = member.context
        self.frontend = member.bind(ctx, zmq.ROUTER, cfg.frontend)
        self.backend = member.bind(ctx, zmq.ROUTER, cfg.backend)
        self.control = member.bind(ctx, zmq.ROUTER, cfg.control)
        self.events = member.bind(ctx, zmq.PUB, cfg.events)
        self.started = time.monotonic()
        self.redirected = 0
        self.bad_messages = 0

    def close(self) -> None:
        for sock in (self.frontend, self.backend, self.control, self.events):
            sock.close(linger=0)

    def run(self) -> tuple[int, float] | None:
        """Serve as standby until elected ((epoch, lease valid until)) or stopped (None)."""
        member = self.member
        # While the stream flows, the loop waits for it in a blocking receive (Replica.wait) and looks at the
        # four quiet sockets between two waits, by their descriptors (ZMQ_FD): each is read until ZMQ_EVENTS
        # says it is empty (which re-arms its descriptor), and looked at once a tick besides. zmq_poll asks
        # every socket it polls for ZMQ_EVENTS before and after it sleeps, a poll(2) each: polling all five
        # cost 8 more syscalls on the wake-up of every RECORDS the leader's answers wait for. A wait that
        # times out ends the flow: the loop polls the stream with the rest until it flows again (waking every
        # QUIET_LOOK_MS, an idle standby used 6 % of a core).
        pipe_fd = member.pipe_fd
        quiet = {
            self.frontend.getsockopt(zmq.FD): lambda: self._answer_all(self.frontend, self._redirect_client),
            self.backend.getsockopt(zmq.FD): lambda: self._answer_all(self.backend, self._redirect_node),
            self.control.getsockopt(zmq.FD): self._answer_control,
        }
        between = zmq.Poller()  # the quiet sockets alone, looked at between two waits for the stream
        poller = zmq.Poller()  # and the stream's socket too, while it does not flow
        for fd in (pipe_fd, *quiet):
            between.register(fd, zmq.POLLIN)
            poller.register(fd, zmq.POLLIN)
        replica = self.replica
        polled: zmq.Socket | None = None  # the stream's socket in `poller` (a new one each time it follows afresh)
        flowing = False
        next_tick = 0.0
        # The quiet sockets a drain left with messages (its limit): their descriptors will not say so again, so
        # they are read on the next pass as if signalled, and that pass does not wait.
        more: set[int] = set()
        while not member.stopping:
            sock = replica.sock
            if sock is not polled:
                if polled is not None:
                    poller.unregister(polled)
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
                polled = sock
            if sock is not None and flowing:
                flowing = replica.wait(0 if more else QUIET_LOOK_MS)
                ready = dict(between.poll(0))
            else:
                ready = dict(poller.poll(0 if more else int(TICK_S * 1000)))
                if sock is not None and sock in ready:
                    replica.drain(time.monotonic())
                    flowing = True
            now = time.monotonic()
            tick = now >= next_tick
            if tick or pipe_fd in ready:  # what etcd says comes only through the pipe
                elected = member.hear_elector(now) or member.own_leadership(now)
                if elected is not None:
                    return elected
                self._follow_leader(now)
            left = more
            more = set()
            for fd, answer in quiet.items():
                if (tick or fd in ready or fd in left) and answer():
                    more.add(fd)
            if tick:
                replica.tick(now)
                next_tick = now + TICK_S
        return None

    # ---- following ------------------------------------------------------------

    def _follow_leader(self, now: float) -> None:
        """Follow whoever etcd says leads (not ourselves); stop following when no one does."""
        leader, epoch = self.member.leader, self.member.leader_epoch
        target = None if leader is None or leader.get("name") == self.member.name else leader
        endpoint = None if target is None else target.get("endpoints", {}).get("replication")
        replica = self.replica
        if endpoint == replica.leader and epoch == replica.epoch:
            return
        if endpoint is None:
            replica.stop_following()
        else:
            replica.follow(endpoint, epoch, now)

    # ---- answering peers --------------------------------------------------------

    def _leader_endpoint(self, role: str) -> str | None:
        leader = self.member.leader
        if leader is None or leader.get("name") == self.member.name:
            return None
        return leader.get("endpoints", {}).get(role)

    def _answer_all(self, sock: zmq.Socket, answer: Any) -> bool:
        """Answer what waits on `sock`; True if its drain's limit left some."""
        taken = 0
        for frames in received(sock, limits.DRAIN_ITEMS, routed=True):
            answer(sock, frames)
            taken += 1
        return taken >= limits.DRAIN_ITEMS

    def _redirect(self, sock: zmq.Socket, route: bytes, role: str) -> None:
        leader = self._leader_endpoint(role)
        reason = "standby; the leader is elsewhere" if leader else "standby; no leader is elected yet"
        try:
            sock.send_multipart([route, p.encode(MsgType.REDIRECT, leader, reason)], zmq.NOBLOCK)
            self.redirected += 1
        except zmq.ZMQError:
            pass  # the peer is gone or its pipe is full: it asks again

    def _redirect_client(self, sock: zmq.Socket, frames: list[Any]) -> None:
        self._redirect(sock, frames[0], "frontend")

    def _redirect_node(self, sock: zmq.Socket, frames: list[Any]) -> None:
        self._redirect(sock, frames[0], "backend")

    def _answer_control(self) -> bool:
        """Answer the control commands waiting; True if its drain's limit left some."""
        taken = 0
        for frames in received(self.control, CONTROL_DRAIN, routed=True):
            taken += 1
            if len(frames) < 2:
                continue
            try:
                request = p.decode_map(frames[-1])
            except ProtocolError:
                self.bad_messages += 1
                continue
            reply = self._control_reply(request.get("cmd"))
            try:
                self.control.send_multipart([*frames[:-1], p.encode_map(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        return taken >= CONTROL_DRAIN

    def _control_reply(self, cmd: Any) -> dict[str, Any]:
        if cmd in ("status", "ping"):
            return {"ok": True, "result": self.status()}
        leader = self._leader_endpoint("control")
        where = f"the leader's control is {leader}" if leader else "no leader is elected yet"
        return {"ok": False, "error": f"this balancer is a standby; {where}", "leader": leader}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        member = self.member
        return {
            "role": "standby",
            "epoch": member.leader_epoch,
            "uptime_s": round(now - self.started, 3),
            "endpoints": member.config.endpoints,
            "ha": {**member.view(), "replica": self.replica.view(now), "redirected": self.redirected},
            "host": socket.gethostname(),
        }
