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

import signal
import sys

import zmq

from bench.zmqkit import SNDMORE, broker_parser, close_all, drain, send_frames, unbounded_socket

HELLO = b"HELLO"
# Messages taken from a socket per poll; bounded so neither side starves the other.
DRAIN_BATCH = 256


def serve(frontend_ep: str, backend_ep: str, announce: bool) -> None:
    """Relay until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    frontend = unbounded_socket(ctx, zmq.ROUTER, frontend_ep, bind=True)
    backend = unbounded_socket(ctx, zmq.ROUTER, backend_ep, bind=True)
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
                for frames in drain(backend, DRAIN_BATCH):
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
                    send_frames(frontend, frames, 1)
            if frontend in events:
                # The frontend is polled only while free_slots > 0, and reading the backend only adds
                # slots, so the loop starts with room; it stops reading once the last slot is taken.
                for frames in drain(frontend, DRAIN_BATCH):
                    # Least loaded by count (most free slots; with equal capacities, fewest in flight).
                    # A linear scan is the cheapest choice for a handful of nodes.
                    node = min(in_flight, key=lambda n: in_flight[n] - capacity[n])
                    in_flight[node] += 1
                    free_slots -= 1
                    backend.send(node, SNDMORE)
                    send_frames(backend, frames)
                    if not free_slots:
                        break
    finally:
        close_all(ctx, frontend, backend)


def main(argv: list[str] | None = None) -> int:
    parser = broker_parser("bench.framerelay", __doc__)
    parser.add_argument("--announce", action="store_true", help="print ready, then one line per node HELLO")
    args = parser.parse_args(argv)
    serve(args.frontend, args.backend, args.announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
