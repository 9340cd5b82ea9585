"""Loop stalls seen from outside: `ping` on the control socket, back to back, each round trip timed.

The balancer answers a control request in its loop, so a ping sent while an
iteration runs waits for that iteration to end: the longest round trip is an
upper bound on the longest iteration (plus this probe's own scheduling delay
on a busy machine). The balancer does not expose its loop timing, so this is
measured from outside.

    python -m bench.stallprobe --control tcp://127.0.0.1:PORT --out probe.bin

Runs until a line (or end of file) on stdin, then writes (sent monotonic ns,
round trip ns) pairs as native int64s to --out and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time
from array import array

import zmq

from wire import protocol as p
from wire.security import secure_client_socket

# Pause between pings: about 1,000 probes a second without taking a core from the balancer.
INTERVAL_S = 0.001
# A ping unanswered this long counts as a stall of at least this long; a fresh socket follows.
TIMEOUT_S = 30.0


def probe(control: str, out_path: str) -> dict[str, float | int]:
    """Ping until stdin says stop; record every round trip."""
    ctx = zmq.Context()
    request = p.encode_map({"cmd": "ping"})
    samples = array("q")
    timeouts = 0
    sock = _socket(ctx, control)
    try:
        while not select.select([sys.stdin], [], [], 0)[0]:
            sent = time.monotonic_ns()
            sock.send(request)
            if sock.poll(int(TIMEOUT_S * 1000), zmq.POLLIN):
                sock.recv()
                samples.extend((sent, time.monotonic_ns() - sent))
            else:
                timeouts += 1
                samples.extend((sent, int(TIMEOUT_S * 1e9)))
                sock.close(linger=0)
                sock = _socket(ctx, control)
            time.sleep(INTERVAL_S)  # wait-ok: the probe's sampling interval
    finally:
        sock.close(linger=0)
        ctx.term()
    with open(out_path, "wb") as fh:
        samples.tofile(fh)
    rtts = samples[1::2]
    return {"pings": len(rtts), "timeouts": timeouts, "max_us": round(max(rtts, default=0) / 1000, 1)}


def _socket(ctx: zmq.Context, control: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client_socket(sock)
    sock.connect(control)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stallprobe", description=__doc__.splitlines()[0])
    parser.add_argument("--control", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print("ready", flush=True)
    print(json.dumps(probe(args.control, args.out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
