"""A raw echo node for the frame-only relay and the zmq.proxy floor: every message goes back unchanged.

It first sends one frame, b"HELLO" and its capacity in ASCII digits, which the
frame relay (bench.framerelay) takes as a join and zmq.proxy forwards to its
ROUTER, which drops it (no such identity). Nothing is decoded.

python -m bench.rawecho --backend tcp://127.0.0.1:PORT --capacity 50
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq

from bench.zmqkit import drain, send_frames, unbounded_socket

# Copied bytes, sent frame by frame: for small frames pyzmq's Frame objects cost more than they save.
DRAIN_BATCH = 256


def serve(backend_ep: str, capacity: int) -> None:
    """Echo until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    sock = unbounded_socket(ctx, zmq.DEALER, backend_ep, bind=False)
    sock.send(b"HELLO%d" % capacity)
    print("ready", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        while not stopping:
            if not sock.poll(200, zmq.POLLIN):
                continue
            for frames in drain(sock, DRAIN_BATCH):
                send_frames(sock, frames)
    finally:
        sock.close(linger=0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rawecho", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--capacity", type=int, default=50, help="requests the relay may give it at once")
    args = parser.parse_args(argv)
    serve(args.backend, args.capacity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
