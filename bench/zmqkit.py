"""Socket plumbing shared by the bench's raw-pyzmq processes: relays, proxy, echo nodes, load generators.

Each of them wants the same socket (no linger, no high-water marks: a benchmark
must queue rather than drop), the same non-blocking batch drain after a poll,
and the same frame-by-frame send; one copy here keeps them alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import zmq

# Plain ints: pyzmq ORs Flag enums per frame in send_multipart, which costs more than the send.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def unbounded_socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool) -> zmq.Socket:
    """A socket of `kind` with LINGER 0 and no HWM on either side, bound to or connected to `endpoint`."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock


def drain(sock: zmq.Socket, batch: int) -> Iterator[list[bytes]]:
    """Up to `batch` messages already queued on `sock`, taken without blocking (stops early when none is left)."""
    recv = sock.recv_multipart
    for _ in range(batch):
        try:
            frames = recv(NOBLOCK)
        except zmq.Again:
            return
        yield frames  # outside the try: an error in the caller's loop body is not swallowed


def send_frames(sock: zmq.Socket, frames: list[bytes], first: int = 0) -> None:
    """Send frames[first:] as one message, one send per frame (cheaper than send_multipart for small frames)."""
    last = len(frames) - 1
    for i in range(first, last):
        sock.send(frames[i], SNDMORE)
    sock.send(frames[last])


def broker_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The command line every bench broker (relay, frame relay, proxy) starts from: where to bind."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--backend", required=True)
    return parser


def close_all(ctx: zmq.Context, *socks: zmq.Socket) -> None:
    """Close `socks` without lingering, then end the context (nothing queued is worth waiting for)."""
    for sock in socks:
        sock.close(linger=0)
    ctx.term()
