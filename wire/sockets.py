"""Receiving and sending without blocking, the way every zlb loop does.

A loop polls, then takes what is waiting. Receiving until EAGAIN costs a failed
recv and a raised zmq.Again per drain (12 us on a just-woken process here,
measured with bench traces: see docs/PERFORMANCE.md); asking ZMQ_EVENTS after
each message costs less and says the same thing, so the drain stops there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import zmq

# Messages taken from one socket before looking at the others: large enough to
# amortise the poll, small enough that no socket starves the rest.
DRAIN_BATCH = 256
# Plain-int flags and one send per frame: pyzmq's send_multipart combines enum flags
# for every frame, measured at 4 us per 3-frame message against 1 us.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOWAIT = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def received(sock: zmq.Socket, limit: int = DRAIN_BATCH, copy: bool = True) -> Iterator[list[Any]]:
    """The messages waiting on a socket, at most `limit` of them, without blocking."""
    recv, events = sock.recv_multipart, sock.getsockopt
    for _ in range(limit):
        try:
            message = recv(_NOBLOCK, copy=copy)
        except zmq.Again:
            return  # a wake-up with nothing to read (a poll may say readable for a command)
        yield message
        if not events(_EVENTS) & _POLLIN:
            return


def send_routed(sock: zmq.Socket, route: bytes, frames: list[Any]) -> str:
    """Send [route, *frames] on a ROUTER without blocking; '' or why it could not ("dropped", "unroutable").

    EAGAIN (a full queue) and EHOSTUNREACH (no connection, with ROUTER_MANDATORY) can
    only come on the first frame, before anything is queued.
    """
    send = sock.send
    try:
        send(route, _MORE_NOWAIT)
        for frame in frames[:-1]:
            send(frame, _MORE_NOWAIT)
        send(frames[-1], _NOBLOCK)
    except zmq.Again:
        return "dropped"
    except zmq.ZMQError as exc:
        if exc.errno != zmq.EHOSTUNREACH:
            raise
        return "unroutable"
    return ""
