"""What pyzmq's Python `Socket.send` costs over the Cython send it wraps, per call.

wire/sockets.py once called `zmq.backend.Socket.send` (pyzmq's private backend) to skip
the Python wrapper; this measures whether that is worth depending on a private module.
Each run sends BATCH one-frame messages with NOBLOCK on a real socket pair (timed), then
drains them (untimed), for each way of calling send, interleaved so drift hits all alike.

    python tools/sendcost.py [--transport inproc|tcp] [--runs 7] [--messages 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import zmq

BATCH = 1000
PAYLOAD = b"x" * 64


def _pair(ctx: zmq.Context, transport: str) -> tuple[zmq.Socket, zmq.Socket]:
    receiver, sender = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for sock in (receiver, sender):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
    if transport == "tcp":
        port = receiver.bind_to_random_port("tcp://127.0.0.1")
        sender.connect(f"tcp://127.0.0.1:{port}")
    else:
        receiver.bind("inproc://sendcost")
        sender.connect("inproc://sendcost")
    sender.send(b"hello")
    receiver.recv()
    return sender, receiver


def _drain(receiver: zmq.Socket, count: int) -> None:
    for _ in range(count):
        receiver.recv()


def _timed_batch(send: Callable[..., object], sender: zmq.Socket, receiver: zmq.Socket) -> float:
    """Seconds spent in BATCH sends (the drain that follows is not counted)."""
    flags = int(zmq.NOBLOCK)
    start = time.perf_counter()
    for _ in range(BATCH):
        send(sender, PAYLOAD, flags)
    elapsed = time.perf_counter() - start
    _drain(receiver, BATCH)
    return elapsed


def _ways() -> dict[str, Callable[..., object]]:
    ways: dict[str, Callable[..., object]] = {
        "zmq.Socket.send (public)": zmq.Socket.send,
        "sock.send bound (public)": lambda sock, data, flags: sock.send(data, flags),
    }
    backend = getattr(zmq, "backend", None)
    if backend is not None and hasattr(backend, "Socket"):
        ways["zmq.backend.Socket.send (private)"] = backend.Socket.send
    return ways


def run(transport: str, runs: int, messages: int) -> dict[str, list[float]]:
    """Nanoseconds per send, one figure per run, for each way of calling send."""
    ctx = zmq.Context()
    sender, receiver = _pair(ctx, transport)
    ways = _ways()
    per_run: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(runs):
            totals = dict.fromkeys(ways, 0.0)
            for _ in range(messages // BATCH):
                for name, send in ways.items():
                    totals[name] += _timed_batch(send, sender, receiver)
            for name, total in totals.items():
                per_run[name].append(total / messages * 1e9)
    finally:
        sender.close()
        receiver.close()
        ctx.term()
    return per_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("inproc", "tcp"), default="inproc")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    per_run = run(args.transport, args.runs, args.messages)
    print(f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {args.transport}, {args.runs} runs x {args.messages}")
    for name, figures in per_run.items():
        runs = " ".join(f"{f:.0f}" for f in figures)
        print(f"{name:36} median {statistics.median(figures):6.0f} ns/send  (runs: {runs})")


if __name__ == "__main__":
    main()
