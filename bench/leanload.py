"""The lean load generator: raw pyzmq, `window` requests in flight, nothing decoded.

Each request is a zlb SUBMIT header (wire.protocol.encode, so the bytes are
what a zlb client sends) and a payload frame. It only talks to brokers whose
nodes echo frames unchanged (bench.framerelay, zmq.proxy with bench.rawecho),
so a reply's first frame is the very header it sent: that header is the key
of the request in flight, and no reply is decoded. The harness check in
`zlb bench` proves this client is not what limits the relay.

    python -m bench.leanload --frontend tcp://127.0.0.1:PORT --window 100 --duration 3

Prints `ready` once connected, waits for a line on stdin with --wait-go, and
ends with one JSON line of counts (the same keys as bench.loadgen); raw
latencies go to --latency-file as native int64s.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import time
from array import array
from typing import Any

import zmq

from bench.loadargs import load_parser, wait_for_go, write_latencies
from bench.zmqkit import SNDMORE, drain, unbounded_socket
from wire import protocol as p
from wire.protocol import MsgType

# Replies taken per poll: enough to amortise the poll, small enough to refill the window often.
DRAIN_BATCH = 512
# After the measured window, wait at most this long for the answers still in flight.
DRAIN_S = 10.0


def run(args: argparse.Namespace, sock: zmq.Socket) -> dict[str, Any]:
    """Keep the window full for warm-up plus duration; count and time the replies."""
    payload = b"x" * args.payload_bytes
    incarnation = secrets.randbits(64)
    encode, submit, client_id = p.encode, MsgType.SUBMIT, args.client_id
    clock = time.perf_counter_ns
    sent_at: dict[bytes, int] = {}
    latencies = array("q")
    sent = completed = in_window = duplicates = 0
    next_id = 1
    start = clock()
    measure_from = start + int(args.warmup_s * 1e9)
    end = measure_from + int(args.duration * 1e9)
    send, recv, poll = sock.send, sock.recv_multipart, sock.poll
    now = start
    while now < end:
        while len(sent_at) < args.window:
            header = encode(submit, client_id, next_id, 5, incarnation)
            next_id += 1
            sent_at[header] = clock()
            send(header, SNDMORE)
            send(payload)
            sent += 1
        if not poll(100, zmq.POLLIN):
            now = clock()
            continue
        for frames in drain(sock, DRAIN_BATCH):
            now = clock()
            at = sent_at.pop(frames[0], None)
            if at is None:
                duplicates += 1
                continue
            completed += 1
            if at >= measure_from:
                latencies.append(now - at)
            if measure_from <= now <= end:
                in_window += 1
        now = clock()
    deadline = clock() + int(DRAIN_S * 1e9)
    while sent_at and clock() < deadline:
        if poll(100, zmq.POLLIN):
            frames = recv()
            if sent_at.pop(frames[0], None) is None:
                duplicates += 1
            else:
                completed += 1
    write_latencies(args, latencies)
    return {
        "sent": sent,
        "completed": completed,
        "in_window": in_window,
        "window_s": (end - measure_from) / 1e9,
        "latencies": len(latencies),
        "unanswered": len(sent_at),
        "duplicates": duplicates,
        "rejected": 0,
        "failed": 0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = load_parser("bench.leanload", __doc__, 1001, 0.5, "measured seconds")
    parser.add_argument("--window", type=int, default=100, help="requests in flight")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = zmq.Context()
    sock = unbounded_socket(ctx, zmq.DEALER, args.frontend, bind=False)
    try:
        if not wait_for_go(args):
            return 1
        print(json.dumps(run(args, sock)), flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
