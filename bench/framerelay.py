"""The baseline: a least-loaded relay that only moves frames and decodes nothing.

    clients (DEALER) -> frontend ROUTER [client, header, payload]
    relay -> backend ROUTER [node, client, header, payload]   (its own envelope)
    node (bench.rawecho, DEALER) echoes [client, header, payload] back unchanged
    relay -> frontend ROUTER [client, header, payload]

The client's zlb header is opaque bytes here: the relay routes by ZeroMQ
identities alone. A node announces itself with one frame, b"HELLO" followed by
its capacity as ASCII digits; each request goes to the node with the fewest in
flight (a plain count, nothing else). While every node is full the frontend is
not read, so back-pressure is structural. No msgpack, no priorities, no
liveness, no events: whatever zlb costs beyond this is the price of those.

    python -m bench.framerelay --frontend tcp://127.0.0.1:P1 --backend tcp://127.0.0.1:P2 --announce
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq

HELLO = b"HELLO"
# Plain ints: pyzmq ORs Flag enums per frame in send_multipart, which costs more than the send.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
# Messages taken from a socket per poll; bounded so neither side starves the other.
DRAIN_BATCH = 256


def serve(frontend_ep: str, backend_ep: str, announce: bool) -> None:
    """Relay until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    for sock, ep in ((frontend, frontend_ep), (backend, backend_ep)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(ep)
    if announce:
        print("ready", flush=True)
    in_flight: dict[bytes, int] = {}
    capacity: dict[bytes, int] = {}
    free_slots = 0
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    reading_front = False
    try:
        while not stopping:
            # Read clients only while some node has room: zguide's ppqueue idea.
            if free_slots and not reading_front:
                poller.register(frontend, zmq.POLLIN)
                reading_front = True
            elif not free_slots and reading_front:
                poller.unregister(frontend)
                reading_front = False
            events = dict(poller.poll(200))
            if backend in events:
                for _ in range(DRAIN_BATCH):
                    try:
                        frames = backend.recv_multipart(NOBLOCK)
                    except zmq.Again:
                        break
                    node = frames[0]
                    if len(frames) == 2 and frames[1].startswith(HELLO):
                        if node in capacity:
                            continue  # a repeated HELLO must not add its slots twice
                        capacity[node] = int(frames[1][len(HELLO) :] or b"1")
                        in_flight[node] = 0
                        free_slots += capacity[node]
                        if announce:
                            print("node", flush=True)
                        continue
                    in_flight[node] -= 1
                    free_slots += 1
                    _send(frontend, frames, 1)
            if frontend in events:
                for _ in range(DRAIN_BATCH):
                    if not free_slots:
                        break
                    try:
                        frames = frontend.recv_multipart(NOBLOCK)
                    except zmq.Again:
                        break
                    # Least loaded by count (most free slots; with equal capacities, fewest in flight).
                    # A linear scan is the cheapest choice for a handful of nodes.
                    node = min(in_flight, key=lambda n: in_flight[n] - capacity[n])
                    in_flight[node] += 1
                    free_slots -= 1
                    backend.send(node, SNDMORE)
                    _send(backend, frames, 0)
    finally:
        frontend.close(linger=0)
        backend.close(linger=0)
        ctx.term()


def _send(sock: zmq.Socket, frames: list[bytes], first: int) -> None:
    """Send frames[first:] as one message."""
    last = len(frames) - 1
    for i in range(first, last):
        sock.send(frames[i], SNDMORE)
    sock.send(frames[last])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.framerelay", description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--announce", action="store_true", help="print ready, then one line per node HELLO")
    args = parser.parse_args(argv)
    serve(args.frontend, args.backend, args.announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
