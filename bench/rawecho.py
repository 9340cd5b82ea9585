"""An echo worker for the zmq.proxy floor: every message goes back unchanged.

python -m bench.rawecho --backend tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq

DRAIN_BATCH = 256


def serve(backend_ep: str) -> None:
    """Echo until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(backend_ep)
    print("ready", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        while not stopping:
            if not sock.poll(200, zmq.POLLIN):
                continue
            for _ in range(DRAIN_BATCH):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                sock.send_multipart(frames, copy=False)
    finally:
        sock.close(linger=0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rawecho", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    serve(parser.parse_args(argv).backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
