"""The gateway's control calls, made with the admin key when curve is on.

`wire.control_client.call` takes its curve keys from ZLB_CURVE_SECRET, the
key this process's clients submit with. The gateway also drains, downs, ups
and configures, which a balancer that tells admin keys from client keys
grants only to an admin key; so control calls and the event subscription use
the key pair in ZLB_HTTP_ADMIN_SECRET when it is set, and the processes
/configure starts never see that variable.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from wire import protocol as p
from wire.control_client import BalancerUnreachable, ControlError
from wire.protocol import ProtocolError
from wire.security import SERVER_KEY_ENV, load_public, load_secret, secure_client_socket

ADMIN_SECRET_ENV = "ZLB_HTTP_ADMIN_SECRET"

__all__ = ["ADMIN_SECRET_ENV", "BalancerUnreachable", "ControlError", "admin_socket", "call"]


def admin_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A connecting socket with the admin key pair (or the process's client keys, or none)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    admin = os.environ.get(ADMIN_SECRET_ENV)
    server_key = os.environ.get(SERVER_KEY_ENV)
    if admin and server_key:
        sock.curve_publickey, sock.curve_secretkey = load_secret(admin)
        sock.curve_serverkey = load_public(server_key)
    else:
        secure_client_socket(sock)
    return sock


def call(endpoint: str, cmd: str, timeout_s: float, **args: Any) -> Any:
    """One control command with a deadline; its result, or ControlError / BalancerUnreachable."""
    sock = admin_socket(zmq.Context.instance(), zmq.DEALER)
    try:
        sock.connect(endpoint)
        sock.send(p.encode_map({"cmd": cmd, **args}))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise BalancerUnreachable(f"no answer from the balancer at {endpoint} within {timeout_s:g} s")
        try:
            reply = p.decode_map(sock.recv(), limit=p.DEFAULT_MAX_MESSAGE_BYTES)
        except ProtocolError as exc:
            raise ControlError(f"unreadable reply from {endpoint}: {exc}") from None
    finally:
        sock.close(linger=0)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")
