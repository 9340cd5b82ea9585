"""Talking to a balancer's control socket: one request, one reply, a deadline.

Used by the admin commands, the monitor's snapshot and the HTTP gateway.
A fresh DEALER per call keeps a lost reply from ever being read as the answer
to the next question.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from wire import limits
from wire import protocol as p
from wire.protocol import ProtocolError
from wire.security import secure_client_socket

DEFAULT_TIMEOUT_S = 3.0


class ControlError(Exception):
    """The balancer answered, and the answer is an error."""


class BalancerUnreachable(Exception):
    """No answer from the balancer within the deadline."""


def call(
    endpoint: str,
    cmd: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    context: zmq.Context | None = None,
    secure: Callable[[zmq.Socket], zmq.Socket] = secure_client_socket,
    **args: Any,
) -> Any:
    """Send one control command and return its result, or raise; `secure` sets the socket's curve keys."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        secure(sock)
        sock.connect(endpoint)
        sock.send(p.encode_map({"cmd": cmd, **args}))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise BalancerUnreachable(f"no answer from the balancer at {endpoint} within {timeout_s:g} s")
        try:
            reply = p.decode_map(sock.recv(), limit=limits.DEFAULT_MAX_MESSAGE_BYTES)
        except ProtocolError as exc:
            raise ControlError(f"unreadable reply from {endpoint}: {exc}") from None
    finally:
        sock.close(linger=0)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")
