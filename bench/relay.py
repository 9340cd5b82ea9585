"""The minimal relay: the least a Python ZeroMQ load-balancing broker can do.

ROUTER for clients, ROUTER for nodes, one poller, batch draining, a deque of
free node slots used least-recently-used first. It speaks the zlb protocol
(so the bench's clients and real `zlb server` echo nodes work unchanged) but
keeps no bookkeeping: no priorities, no retries, no events, no node table,
no liveness. Per request it does the irreducible work of any broker speaking
this protocol: decode the SUBMIT header, encode a WORK header, decode the
DONE header, encode a RESULT header. Payloads pass through as opaque frames.

    python -m bench.relay --frontend tcp://127.0.0.1:P1 --backend tcp://127.0.0.1:P2
"""

from __future__ import annotations

import signal
import sys
import time
from collections import deque

import zmq

from bench.zmqkit import broker_parser, close_all, drain, unbounded_socket
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError

DRAIN_BATCH = 256


def serve(frontend_ep: str, backend_ep: str, heartbeat_s: float, announce: bool = False) -> None:
    """Relay until SIGTERM or SIGINT; with `announce`, print `ready` and a line per new node."""
    ctx = zmq.Context()
    frontend = unbounded_socket(ctx, zmq.ROUTER, frontend_ep, bind=True)
    backend = unbounded_socket(ctx, zmq.ROUTER, backend_ep, bind=True)
    if announce:
        print("ready", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    free_slots: deque[bytes] = deque()  # one entry per free slot of a node
    waiting: dict[int, tuple[bytes, int]] = {}  # ticket -> (client route, request id)
    nodes: set[bytes] = set()
    ticket = 0
    both = zmq.Poller()
    both.register(frontend, zmq.POLLIN)
    both.register(backend, zmq.POLLIN)
    nodes_only = zmq.Poller()
    nodes_only.register(backend, zmq.POLLIN)
    ping = p.encode(MsgType.PING)
    next_ping = time.monotonic() + heartbeat_s
    encode, decode = p.encode, p.decode
    work_type, result_type, processed = MsgType.WORK, MsgType.RESULT, p.PROCESSED
    try:
        while not stopping:
            # Back-pressure as in the zguide's LRU queue: read clients only while a node slot is free.
            poller = both if free_slots else nodes_only
            ready = dict(poller.poll(int(heartbeat_s * 1000)))
            if backend in ready:
                for frames in drain(backend, DRAIN_BATCH):
                    try:
                        msg_type, fields = decode(frames[1])
                    except ProtocolError:
                        continue
                    route = frames[0]
                    # zlb nodes answer in batches since protocol 3, and a big result alone (LONE_PAYLOAD_BYTES)
                    if msg_type is MsgType.DONE_BATCH or msg_type is MsgType.DONE:
                        done = fields[0] if msg_type is MsgType.DONE_BATCH else [(fields[0], fields[1], frames[2])]
                        for done_ticket, _ok, result in done:
                            client_route, request_id = waiting.pop(done_ticket)
                            free_slots.append(route)
                            frontend.send_multipart(
                                [client_route, encode(result_type, request_id, processed, None, 1, False), result]
                            )
                    elif msg_type is MsgType.HELLO and route not in nodes:
                        nodes.add(route)
                        free_slots.extend([route] * fields[1])
                        if announce:
                            print(f"node {len(nodes)}", flush=True)
            if frontend in ready:
                # Clients are polled only while a slot is free and nodes only free slots, so the loop
                # starts with room; it stops reading once the last slot is given out.
                for frames in drain(frontend, DRAIN_BATCH):
                    try:
                        _type, (client_id, request_id, priority, _incarnation) = decode(frames[1])
                    except (ProtocolError, ValueError):
                        continue
                    ticket += 1
                    waiting[ticket] = (frames[0], request_id)
                    header = encode(work_type, ticket, client_id, request_id, priority, 1)
                    backend.send_multipart([free_slots.popleft(), header, frames[2]], copy=False)
                    if not free_slots:
                        break
            now = time.monotonic()
            if now >= next_ping:
                # Nodes that hear nothing reconnect; a ping per interval keeps them.
                for route in nodes:
                    backend.send_multipart([route, ping])
                next_ping = now + heartbeat_s
    finally:
        close_all(ctx, frontend, backend)


def main(argv: list[str] | None = None) -> int:
    parser = broker_parser("bench.relay", __doc__)
    parser.add_argument("--heartbeat-ms", type=int, default=p.HEARTBEAT_INTERVAL_MS)
    parser.add_argument("--announce", action="store_true", help="print ready and one line per new node")
    args = parser.parse_args(argv)
    serve(args.frontend, args.backend, args.heartbeat_ms / 1000, args.announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
