"""Many simulated server nodes multiplexed in one process.

Each simulated node is its own DEALER with its own identity: it says HELLO,
heartbeats at the interval it was told, and answers WORK with DONE carrying
the payload back (an instant echo). One poller serves them all, so a few of
these processes give the balancer a thousand real node connections.

    python -m bench.simnodes --backend tcp://127.0.0.1:PORT --count 250 --first-id 0
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

import zmq

from bench.zmqkit import drain
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError

DRAIN_BATCH = 64


class SimNodes:
    """`count` node sockets sharing one poller."""

    def __init__(self, backend_ep: str, count: int, first_id: int, capacity: int, heartbeat_ms: int) -> None:
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.MAX_SOCKETS, count + 64)
        self.heartbeat_s = heartbeat_ms / 1000
        self.capacity = capacity
        self.socks: list[zmq.Socket] = []
        self.poller = zmq.Poller()
        host = socket.gethostname()
        pid = os.getpid()
        for i in range(count):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, f"sim-{pid}-{first_id + i}".encode())
            sock.connect(backend_ep)
            hello = p.encode(MsgType.HELLO, first_id + i, capacity, pid, host, (pid << 20) + first_id + i, 0)
            sock.send_multipart([hello, p.encode_tickets([])])
            self.poller.register(sock, zmq.POLLIN)
            self.socks.append(sock)
        self.handled = 0

    def run(self, stopping: list[int]) -> None:
        """Serve work and heartbeat until `stopping` is non-empty."""
        done_type, done_batch = MsgType.DONE, MsgType.DONE_BATCH
        next_beat = time.monotonic() + self.heartbeat_s
        while not stopping:
            timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000) + 1)
            for sock, _ in self.poller.poll(timeout_ms):
                for frames in drain(sock, DRAIN_BATCH):
                    try:
                        msg_type, fields = p.decode(frames[0])
                    except ProtocolError:
                        continue
                    if msg_type is MsgType.WORK_BATCH:
                        self.handled += len(fields[0])
                        sock.send(p.encode(done_batch, [[item[0], True, item[5]] for item in fields[0]]))
                    elif msg_type is MsgType.WORK:
                        self.handled += 1
                        sock.send_multipart([p.encode(done_type, fields[0], True), frames[1]], copy=False)
            now = time.monotonic()
            if now >= next_beat:
                # Work is answered as it arrives, so a simulated node never holds a ticket.
                # max_seen 0: a simulated node does not track tickets, so only the slow rule applies.
                beat = [p.encode(MsgType.HEARTBEAT, 0, self.handled, 0, 0), p.encode_tickets([])]
                for sock in self.socks:
                    try:
                        sock.send_multipart(beat, zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # not connected yet; HELLO is still queued
                next_beat = now + self.heartbeat_s

    def close(self) -> None:
        bye = p.encode(MsgType.BYE)
        for sock in self.socks:
            try:
                sock.send(bye, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close(linger=0)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simnodes", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--heartbeat-ms", type=int, default=p.HEARTBEAT_INTERVAL_MS)
    args = parser.parse_args(argv)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    nodes = SimNodes(args.backend, args.count, args.first_id, args.capacity, args.heartbeat_ms)
    try:
        nodes.run(stopping)
    finally:
        nodes.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
