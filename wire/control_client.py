"""Talking to a balancer's control socket: one request, one reply, a deadline.

Used by the admin commands, the monitor's snapshot and the HTTP gateway.
A fresh DEALER per call keeps a lost reply from ever being read as the answer
to the next question.

The endpoint may be a comma-separated list: the members of an HA group
(`--control tcp://a:5558,tcp://b:5558`). The question goes to every member at
once, each on its own DEALER, within the one deadline, so a dead member costs
nothing but its socket. The leader's answer is the answer. A standby refuses
every command but `status` and `ping` with an error naming the leader's
control endpoint (`{"ok": false, "error": ..., "leader": X}`): the call waits
for the leader's own answer, asking X once if it was not in the list
(`--control standby` alone is followed to the leader). A standby does answer
`status` and `ping` (`"role": "standby"`); that answer is kept, and returned
only if no leader answers by the deadline, so `zlb status` prefers the leader
and still reports the member it reached when no leader is there.
An error without "leader" is a serving balancer's verdict and ends the call;
standbys' refusals with no leader answering end it as NoLeader.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from wire import limits
from wire import protocol as p
from wire.following import endpoint_list
from wire.protocol import ProtocolError
from wire.security import secure_client_socket

DEFAULT_TIMEOUT_S = 3.0


class ControlError(Exception):
    """The balancer answered, and the answer is an error."""


class BalancerUnreachable(Exception):
    """No answer from the balancer within the deadline."""


class NoLeader(BalancerUnreachable):
    """Members of an HA group answered, but none leads: each refused as a standby, and no leader they named
    answered in time. The leader is unreachable (a retry later may find one); the message says why."""


def call(
    endpoint: str,
    cmd: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    context: zmq.Context | None = None,
    secure: Callable[[zmq.Socket], zmq.Socket] = secure_client_socket,
    follow_leader: bool = True,
    **args: Any,
) -> Any:
    """Send one control command and return its result, or raise; `secure` sets the socket's curve keys.

    `endpoint` may list several members of an HA group, comma-separated: see the module's text.
    follow_leader=False: a standby's own `status` or `ping` answer is the answer (a probe of one member)."""
    return reach(endpoint, cmd, timeout_s, context, secure, follow_leader, **args)[1]


def reach(
    endpoint: str,
    cmd: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    context: zmq.Context | None = None,
    secure: Callable[[zmq.Socket], zmq.Socket] = secure_client_socket,
    follow_leader: bool = True,
    **args: Any,
) -> tuple[str, Any]:
    """As call(), with the endpoint that gave the answer: (endpoint, result)."""
    try:
        endpoints = endpoint_list(endpoint)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    asking = _Asking(context or zmq.Context.instance(), secure, p.encode_map({"cmd": cmd, **args}), follow_leader)
    try:
        return asking.run(endpoints, time.monotonic() + timeout_s, timeout_s)
    finally:
        asking.close()


def standby_leader(result: Any) -> str | None:
    """A standby's `status` or `ping` result: the leader's control endpoint it names (None: not a standby's, or
    no leader named)."""
    if not isinstance(result, dict) or result.get("role") != "standby":
        return None
    named = ((result.get("ha") or {}).get("leader_endpoints") or {}).get("control")
    return named if isinstance(named, str) and named else None


class _Asking:
    """The sockets of one call, one per member asked, and what came back so far."""

    def __init__(
        self, ctx: zmq.Context, secure: Callable[[zmq.Socket], zmq.Socket], request: bytes, follow_leader: bool
    ) -> None:
        self.ctx, self.secure, self.request = ctx, secure, request
        self.follow_leader = follow_leader  # False: a standby's own status is the answer
        self.asked: dict[str, zmq.Socket | None] = {}  # endpoint -> its socket (None: answered or unusable)
        self.poller = zmq.Poller()
        self.standby_answer: tuple[str, Any] | None = None  # a standby's status: kept in case no leader answers
        self.refusal: ControlError | None = None  # a standby's error naming the leader (or none)

    def close(self) -> None:
        for sock in self.asked.values():
            if sock is not None:
                sock.close(linger=0)

    def ask(self, endpoint: str) -> None:
        """Send the request to `endpoint` once; an endpoint that cannot be dialled is noted, not fatal."""
        if endpoint in self.asked:
            return
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.asked[endpoint] = None
        try:
            self.secure(sock)
            sock.connect(endpoint)
            sock.send(self.request, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self.refusal = self.refusal or ControlError(f"cannot ask {endpoint}: {exc}")
            return
        except BaseException:
            sock.close(linger=0)
            raise
        self.asked[endpoint] = sock
        self.poller.register(sock, zmq.POLLIN)

    def run(self, endpoints: list[str], deadline: float, timeout_s: float) -> tuple[str, Any]:
        for endpoint in endpoints:
            self.ask(endpoint)
        while self.waiting():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in self.poller.poll(max(1, int(left * 1000))):
                answer = self.read(sock)
                if answer is not None:
                    return answer
        if self.standby_answer is not None:
            return self.standby_answer
        if self.refusal is not None:
            raise self.refusal
        where = ", ".join(self.asked)
        raise BalancerUnreachable(f"no answer from the balancer at {where} within {timeout_s:g} s")

    def waiting(self) -> bool:
        return any(sock is not None for sock in self.asked.values())

    def read(self, sock: zmq.Socket) -> tuple[str, Any] | None:
        """One member's reply: (endpoint, result) if it is the answer, None to go on waiting; or raise."""
        endpoint = next(e for e, s in self.asked.items() if s is sock)
        self.poller.unregister(sock)
        self.asked[endpoint] = None
        try:
            reply = p.decode_map(sock.recv(), limit=limits.DEFAULT_MAX_MESSAGE_BYTES)
        except ProtocolError as exc:
            raise ControlError(f"unreadable reply from {endpoint}: {exc}") from None
        finally:
            sock.close(linger=0)
        if reply.get("ok"):
            result = reply.get("result")
            if isinstance(result, dict) and result.get("role") == "standby" and self.follow_leader:
                self.standby_answer = self.standby_answer or (endpoint, result)
                self.follow(standby_leader(result))
                return None
            return endpoint, result
        text = str(reply.get("error", "unknown error"))
        if "leader" not in reply:
            raise ControlError(text)  # a serving balancer's verdict
        self.refusal = NoLeader(text)  # a standby: the leader it names answers, or this stands
        self.follow(reply["leader"])
        return None

    def follow(self, leader: Any) -> None:
        """A standby named the leader: ask it too, unless it was asked already."""
        if isinstance(leader, str) and leader:
            self.ask(leader)
