"""Receiving and sending without blocking, the way every zlb loop does.

Why, as measured on this machine (python -m tools.hops; docs/PERFORMANCE.md,
"One at a time: the second latency round"): pyzmq's getsockopt looks its option up
in a Python enum on every call (1.3 us, most of it the lookup), its
recv_multipart asks RCVMORE that way after every frame, its send_multipart and
the Python `send` wrapper add another layer per frame, and a recv that fails
raises zmq.Again (12 us on a just-woken process). So:

- frames are received as zmq.Frame and `Frame.more` says whether another
  follows; a ROUTER's first frame (the route) always has one, so it is taken
  as plain bytes;
- a drain asks ZMQ_EVENTS after a message only while it may take another, so
  a loop that takes one message (the one it woke for) never asks: after a
  poll that slept (SLEPT_S), a loop answers that one message first and
  drains the rest on its next turn, while a busy loop drains in batches;
- sends call the unbound `zmq.Socket.send` with plain-int flags. Calling the
  private Cython `zmq.backend.Socket.send` under it instead saves 0.19 us a
  call (tools/sendcost.py: 0.39 against 0.19 us), six calls a round trip:
  1.1 us of ~360 us, 0.3%, far inside the round trip's run-to-run noise, so
  zlb keeps to pyzmq's public API;
- a process waiting on one socket alone (the Client, a node running its
  handler inline) blocks in a receive with ZMQ_RCVTIMEO instead of polling:
  zmq_poll checks ZMQ_EVENTS before and after it sleeps, each a poll(2) on
  the socket's mailbox, so a blocking receive makes three fewer syscalls per
  message (the Client: 8 polls per request -> 5, strace -c) and builds no
  poll result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import zmq

# Messages taken from one socket before looking at the others: large enough to
# amortise the poll, small enough that no socket starves the rest.
DRAIN_BATCH = 256
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOWAIT = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)
_send = zmq.Socket.send  # unbound: no bound method built per frame
_set = zmq.Socket.set
# A poll that took this long slept: the process was idle and woke for what arrived. A busy
# loop's poll returns in a few microseconds; a wake-up takes tens (50-60 us here). Woken from
# idle, a loop takes one message from each ready socket and answers it before anything else is
# asked (another poll, or ZMQ_EVENTS: each a syscall or two in libzmq); busy, it drains up to
# DRAIN_BATCH. Each loop compares inline: deciding by the poll's duration costs no second poll.
SLEPT_S = 25e-6


def received(
    sock: zmq.Socket,
    limit: int = DRAIN_BATCH,
    copy: bool = True,
    routed: bool = False,
    max_bytes: int | None = None,
    frames_over: int | None = None,
) -> Iterator[list[Any]]:
    """The messages waiting on a socket, at most `limit` of them, without blocking.

    Frames come as bytes, or as zmq.Frame with copy=False. `routed`: the socket
    is a ROUTER, so every message starts with its route. `max_bytes`: stop after
    the message that reaches this many bytes (the first is always taken).
    `frames_over`: a frame after the header bigger than this stays a zmq.Frame
    (a big payload: not copied, and sent on as it is).
    """
    recv, events = sock.recv, sock.getsockopt
    while True:
        try:
            message = [recv(_NOBLOCK)] if routed else []
            frame = recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return  # a wake-up with nothing to read (a poll may say readable for a command)
        yield _with_rest(recv, frame, message, copy, frames_over)
        limit -= 1
        if limit <= 0:
            return
        if max_bytes is not None:
            max_bytes -= sum(map(len, message))
            if max_bytes <= 0:
                return
        if not events(_EVENTS) & _POLLIN:
            return


class Waiter:
    """Waits for the next message on one socket in a blocking receive with a timeout (see above)."""

    __slots__ = ("_recv", "_sock", "_timeout_ms")

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._recv = sock.recv
        self._timeout_ms: int | None = None  # the socket's ZMQ_RCVTIMEO, once set

    def message(self, timeout_ms: int) -> list[bytes] | None:
        """The next message's frames, waiting up to `timeout_ms` (0: not at all); None if none came."""
        if timeout_ms != self._timeout_ms:
            _set(self._sock, _RCVTIMEO, timeout_ms)
            self._timeout_ms = timeout_ms
        recv = self._recv
        try:
            frame = recv(0, copy=False)
        except zmq.Again:
            return None
        return _with_rest(recv, frame, [], True)


def _with_rest(
    recv: Any, frame: zmq.Frame, message: list[Any], copy: bool, frames_over: int | None = None
) -> list[Any]:
    """`message` with `frame` and the frames that follow it appended (as bytes if `copy`, except a
    frame after the first of more than `frames_over` bytes, which stays a zmq.Frame: not copied): a
    message arrives whole, so once its first frame is in, the rest are taken without waiting."""
    message.append(frame.bytes if copy else frame)
    while frame.more:
        frame = recv(_NOBLOCK, copy=False)
        message.append(frame.bytes if copy and (frames_over is None or len(frame) <= frames_over) else frame)
    return message


def _send_message(sock: zmq.Socket, frames: list[Any] | tuple[Any, ...]) -> None:
    # Copied, even big payloads. Lent instead (copy=False) a Client spent 280 us of CPU per 256 KiB request
    # against 314, but pyzmq's garbage thread lets go of every lent object at interpreter exit while libzmq
    # may still be writing it: a process that exits with a big message in flight aborted (EFAULT in
    # tcp.cpp) or its peer got the frame with freed memory in it (an outsider's review; tests/test_wire_sockets.py).
    for frame in frames[:-1]:
        _send(sock, frame, _MORE_NOWAIT)
    _send(sock, frames[-1], _NOBLOCK)


def send_frames(sock: zmq.Socket, frames: list[Any] | tuple[Any, ...]) -> bool:
    """Send frames as one message without blocking; False when the queue is full (nothing was queued)."""
    try:
        _send_message(sock, frames)
    except zmq.Again:
        return False
    return True


def send_routed(sock: zmq.Socket, route: bytes, frames: list[Any]) -> str:
    """Send [route, *frames] on a ROUTER without blocking; '' or why it could not ("dropped", "unroutable").

    EAGAIN (a full queue) and EHOSTUNREACH (no connection, with ROUTER_MANDATORY) can
    only come on the first frame, before anything is queued.
    """
    try:
        _send(sock, route, _MORE_NOWAIT)
        _send_message(sock, frames)
    except zmq.Again:
        return "dropped"
    except zmq.ZMQError as exc:
        if exc.errno != zmq.EHOSTUNREACH:
            raise
        return "unroutable"
    return ""


def monitor_events(mon: zmq.Socket) -> Iterator[tuple[int, int]]:
    """The (event, value) pairs waiting on a socket monitor, without blocking."""
    while True:
        try:
            frames = mon.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        # The first frame packs a 16-bit event id and a 32-bit value (a file descriptor, an error); the peer is
        # not named.
        head = frames[0] if frames else b""
        event = int.from_bytes(head[:2], "little") if len(head) >= 2 else 0
        value = int.from_bytes(head[2:6], "little") if len(head) >= 6 else 0
        yield event, value
