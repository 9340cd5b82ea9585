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

from wire import control_client
from wire.control_client import BalancerUnreachable, ControlError, NoLeader
from wire.security import SERVER_KEY_ENV, load_public, load_secret, secure_client_socket

ADMIN_SECRET_ENV = "ZLB_HTTP_ADMIN_SECRET"

__all__ = ["ADMIN_SECRET_ENV", "BalancerUnreachable", "ControlError", "NoLeader", "admin_socket", "call"]


def secure_admin(sock: zmq.Socket) -> zmq.Socket:
    """Give a connecting socket the admin key pair (or the process's client keys, or none)."""
    admin = os.environ.get(ADMIN_SECRET_ENV)
    server_key = os.environ.get(SERVER_KEY_ENV)
    if admin and server_key:
        sock.curve_publickey, sock.curve_secretkey = load_secret(admin)
        sock.curve_serverkey = load_public(server_key)
        return sock
    return secure_client_socket(sock)


def admin_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A connecting socket with the admin key pair, for the event subscription."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return secure_admin(sock)


def call(endpoint: str, cmd: str, timeout_s: float, **args: Any) -> Any:
    """One control command with a deadline, made with the admin key; ControlError / BalancerUnreachable.

    `endpoint` may list an HA group's members (wire/control_client.py follows the leader); when only
    standbys answer, NoLeader (a BalancerUnreachable), which the gateway answers 503 like an absent balancer."""
    return control_client.call(endpoint, cmd, timeout_s, secure=secure_admin, **args)
