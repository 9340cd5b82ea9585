"""Why a balancer does not answer: a second connection that watches its own handshake.

A peer whose curve settings do not match the balancer's only ever sees silence on its
socket: libzmq retries the connection for ever and reports the failure as a monitor
event, nowhere else. So when a command has heard nothing for its connect timeout, it
opens one more socket, secured exactly as its own, and reads that socket's monitor for
a moment: a refused key, a mechanism mismatch (curve on one side only) or a server key
that is not the balancer's each name themselves; a handshake that succeeds, or no
connection at all, leave the old words ("is it running?") standing.
"""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from wire.following import endpoint_list
from wire.security import client_keys, secure_client_socket

# How long the probe watches its handshake: libzmq connects and shakes hands in milliseconds on a
# reachable host, and retries a refused connection every 100 ms.
PROBE_S = 2.0
_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
KEY_OPTIONS = "--curve-secret and --server-key (ZLB_CURVE_SECRET and ZLB_SERVER_KEY)"


def curve_trouble(endpoint: str, timeout_s: float = PROBE_S, context: zmq.Context | None = None) -> str | None:
    """What is wrong with the curve handshake at `endpoint` (or a comma-separated list of members), in words;
    None when it works or nothing answers.

    Each side of a mismatch reads the other's greeting, and whichever reads first hangs up: the other
    then sees only a dropped handshake (NO_DETAIL). So a dropped handshake waits for a clearer event
    until the deadline, and alone counts as what it most likely means for this process's keys.
    """
    ctx = context or zmq.Context.instance()
    sock = secure_client_socket(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(_EVENTS, f"inproc://zlb-handshake-probe-{id(sock)}-{time.monotonic_ns()}")
    have_keys = client_keys() is not None
    dropped = False
    try:
        for one in endpoint_list(endpoint):  # an HA group's members: any of them tells
            sock.connect(one)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(max(1, int(left * 1000))):
                break
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return None
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                dropped = True
                continue
            return describe(event["event"], event["value"], endpoint, have_keys)
        if not dropped:
            return None
        mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        return describe(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0 if have_keys else mismatch, endpoint, have_keys)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def describe(event: int, value: int, endpoint: str, have_keys: bool) -> str:
    """A failed handshake's monitor event as the likely cause, for a peer with (or without) curve keys."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the balancer at {endpoint} refused this process's curve key: its public key must be in the"
            " balancer's --allow directory (--node-allow for a node)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if have_keys:
            return f"this process uses curve keys but the balancer at {endpoint} does not: drop {KEY_OPTIONS}"
        return f"the balancer at {endpoint} requires curve keys and this process has none: set {KEY_OPTIONS}"
    return (
        f"the curve handshake with the balancer at {endpoint} failed: is --server-key (ZLB_SERVER_KEY)"
        " the balancer's public key?"
    )
