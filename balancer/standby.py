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

TICK_S = 0.1


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
        poller = zmq.Poller()
        for sock in (self.frontend, self.backend, self.control, member.pipe):
            poller.register(sock, zmq.POLLIN)
        polled: zmq.Socket | None = None  # the replica's socket, which changes whenever it follows afresh
        next_tick = 0.0
        while not member.stopping:
            if self.replica.sock is not polled:
                if polled is not None:
                    poller.unregister(polled)
                polled = self.replica.sock
                if polled is not None:
                    poller.register(polled, zmq.POLLIN)
            ready = dict(poller.poll(int(TICK_S * 1000)))
            now = time.monotonic()
            if member.pipe in ready:
                elected = member.hear_elector(now) or member.own_leadership(now)
                if elected is not None:
                    return elected
            self._follow_leader(now)
            if self.replica.sock is not None and self.replica.sock in ready:
                self.replica.drain(now)
            for sock, answer in ((self.frontend, self._redirect_client), (self.backend, self._redirect_node)):
                if sock in ready:
                    self._answer_all(sock, answer)
            if self.control in ready:
                self._answer_control()
            if now >= next_tick:
                self.replica.tick(now)
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

    def _answer_all(self, sock: zmq.Socket, answer: Any) -> None:
        for _ in range(limits.DRAIN_ITEMS):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            answer(sock, frames)

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

    def _answer_control(self) -> None:
        for _ in range(16):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
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

