"""A lean load generator: one DEALER keeping `window` requests in flight.

It speaks the real zlb client protocol (the SUBMIT header from
wire.protocol, then the payload frame, exactly as client_node.client
frames it) and times every round trip with time.perf_counter_ns. It is
purpose-built rather than the Client class so that the client side is not the
bottleneck: no retry bookkeeping, no Result objects.

Run by `zlb bench`, never by hand:

    python -m bench.loadgen --frontend tcp://127.0.0.1:PORT --window 100 --duration 3

It prints `ready` once connected, waits for `go` on stdin when --wait-go is
set (so every client starts together), and ends by printing one JSON line
with its counts; raw latencies go to --latency-file as native int64s.
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
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError

# Payloads at least this big are received without a copy into Python bytes.
ZERO_COPY_BYTES = 64 * 1024
# After the last send, wait this long at most for the answers still in flight.
DEFAULT_DRAIN_S = 10.0


class LoadGen:
    """Sends SUBMITs, matches their answers and records round-trip times."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Unlimited queues: the queue scenario sends a million requests at once.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(args.frontend)
        self.incarnation = secrets.randbits(64)
        self.payload = args.payload.encode() if args.payload is not None else b"x" * args.payload_bytes
        self.copy = len(self.payload) < ZERO_COPY_BYTES
        self.sent_at: dict[int, int] = {}
        self.next_id = 1
        self.sent = 0
        self.completed = 0
        self.in_window = 0
        self.duplicates = 0
        self.rejected = 0
        self.failed = 0
        self.latencies = array("q")
        self.replies: list[list[int]] = []
        self.first_reply_ns: int | None = None
        self.last_reply_ns: int | None = None

    def send_one(self) -> None:
        request_id = self.next_id
        self.next_id += 1
        header = p.encode(MsgType.SUBMIT, self.args.client_id, request_id, self.args.priority, self.incarnation)
        self.sent_at[request_id] = time.perf_counter_ns()
        self.sock.send_multipart([header, self.payload], copy=False)
        self.sent += 1

    def receive(self, measure_from_ns: int, window_end_ns: int) -> None:
        """Take every reply waiting on the socket."""
        recv = self.sock.recv_multipart
        while True:
            try:
                frames = recv(zmq.NOBLOCK, copy=self.copy)
            except zmq.Again:
                return
            now = time.perf_counter_ns()
            header = frames[0] if self.copy else frames[0].bytes
            self.on_reply(header, now, measure_from_ns, window_end_ns)

    def on_reply(self, header: bytes, now: int, measure_from_ns: int, window_end_ns: int) -> None:
        try:
            msg_type, fields = p.decode(header)
        except ProtocolError:
            self.failed += 1
            return
        if msg_type is MsgType.RESULT_BATCH:
            for request_id, status, server_id, attempts, _replay, _body in fields[0]:
                if status != p.PROCESSED:
                    self.failed += 1
                self.on_answer(request_id, server_id, attempts, now, measure_from_ns, window_end_ns)
            return
        if msg_type is MsgType.RESULT:
            request_id, status, server_id, attempts, _replay = fields
            if status != p.PROCESSED:
                self.failed += 1
        elif msg_type is MsgType.SUBMIT:
            # zmq.proxy with a raw echo worker hands our own SUBMIT header back.
            request_id, server_id, attempts = fields[1], None, 1
        elif msg_type is MsgType.REJECTED:
            self.rejected += 1
            request_id, server_id, attempts = fields[0], None, 0
        else:
            self.failed += 1
            return
        self.on_answer(request_id, server_id, attempts, now, measure_from_ns, window_end_ns)

    def on_answer(
        self, request_id: int, server_id: int | None, attempts: int, now: int, measure_from_ns: int, window_end_ns: int
    ) -> None:
        sent = self.sent_at.pop(request_id, None)
        if sent is None:
            self.duplicates += 1
            return
        self.completed += 1
        if self.first_reply_ns is None:
            self.first_reply_ns = now
        self.last_reply_ns = now
        if sent >= measure_from_ns:
            self.latencies.append(now - sent)
        if measure_from_ns <= now <= window_end_ns:
            self.in_window += 1
        if self.args.record_replies:
            self.replies.append([request_id, -1 if server_id is None else server_id, attempts, time.monotonic_ns()])

    def run(self) -> dict[str, Any]:
        """Drive the load until the duration or the request count is done."""
        args = self.args
        start = time.perf_counter_ns()
        measure_from = start + int(args.warmup_s * 1e9)
        end = measure_from + int(args.duration * 1e9) if args.requests is None else None
        limit = None if args.requests is None else args.requests
        interval_ns = int(1e9 / args.rate) if args.rate else 0
        next_send = start
        measured_sent = 0
        poll = self.sock.poll
        while True:
            now = time.perf_counter_ns()
            sending = now < end if end is not None else measured_sent < limit or now < measure_from
            if not sending:
                break
            while len(self.sent_at) < args.window and now >= next_send:
                if limit is not None and now >= measure_from and measured_sent >= limit:
                    break
                self.send_one()
                if now >= measure_from:
                    measured_sent += 1
                if interval_ns:
                    next_send += interval_ns
                    break
            wait_ms = max(0, (next_send - now) // 1_000_000) if interval_ns else 100
            if poll(min(wait_ms, 100), zmq.POLLIN):
                self.receive(measure_from, end or 2**63)
        window_end = time.perf_counter_ns() if end is None else end
        drain_deadline = time.perf_counter_ns() + int(args.drain_s * 1e9)
        while self.sent_at and time.perf_counter_ns() < drain_deadline:
            if poll(100, zmq.POLLIN):
                self.receive(measure_from, window_end)
        if end is None:
            # A fixed count: the window closes with the last answer.
            window_end = self.last_reply_ns or window_end
            self.in_window = len(self.latencies)
        return self.summary(measure_from, window_end)

    def summary(self, measure_from: int, window_end: int) -> dict[str, Any]:
        write_latencies(self.args, self.latencies)
        out: dict[str, Any] = {
            "sent": self.sent,
            "completed": self.completed,
            "in_window": self.in_window,
            "window_s": max(0, window_end - measure_from) / 1e9,
            "latencies": len(self.latencies),
            "unanswered": len(self.sent_at),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "failed": self.failed,
            "first_reply_mono_ns": _to_monotonic(self.first_reply_ns),
            "last_reply_mono_ns": _to_monotonic(self.last_reply_ns),
        }
        if self.args.record_replies:
            out["replies"] = self.replies
        return out

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _to_monotonic(perf_ns: int | None) -> int | None:
    # perf_counter and monotonic share a clock on Linux, but say so explicitly.
    if perf_ns is None:
        return None
    return perf_ns - time.perf_counter_ns() + time.monotonic_ns()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = load_parser("bench.loadgen", __doc__, 1, 0.0, "measured seconds (unless --requests)")
    parser.add_argument("--window", type=int, default=100, help="requests in flight")
    parser.add_argument("--requests", type=int, default=None, help="measured requests instead of a duration")
    parser.add_argument("--drain-s", type=float, default=DEFAULT_DRAIN_S)
    parser.add_argument("--payload", default=None, help="literal payload text (overrides --payload-bytes)")
    parser.add_argument("--priority", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (0: as fast as the window allows)")
    parser.add_argument("--record-replies", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The bench stops us with SIGTERM; leave through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gen = LoadGen(args)
    try:
        if not wait_for_go(args):
            return 1
        result = gen.run()
        print(json.dumps(result), flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        gen.close()


if __name__ == "__main__":
    sys.exit(main())
