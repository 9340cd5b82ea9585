"""The floor: `zmq.proxy` between a client ROUTER and a worker DEALER.

No Python runs per message: libzmq moves frames between the two sockets and
the DEALER deals requests round-robin. zlb nodes cannot serve behind it (a
WORK header never exists here), so `bench.rawecho` workers send each message
back unchanged and the clients accept their own SUBMIT header as the answer.

    python -m bench.proxy --frontend tcp://127.0.0.1:P1 --backend tcp://127.0.0.1:P2
"""

from __future__ import annotations

import signal
import sys

import zmq

from bench.zmqkit import broker_parser, unbounded_socket


def serve(frontend_ep: str, backend_ep: str) -> None:
    """Proxy until SIGTERM or SIGINT."""
    ctx = zmq.Context()
    frontend = unbounded_socket(ctx, zmq.ROUTER, frontend_ep, bind=True)
    backend = unbounded_socket(ctx, zmq.DEALER, backend_ep, bind=True)
    # zmq.proxy blocks in C; a signal ends it by closing the context underneath.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        zmq.proxy(frontend, backend)
    except (zmq.ContextTerminated, KeyboardInterrupt):
        pass
    finally:
        frontend.close(linger=0)
        backend.close(linger=0)


def main(argv: list[str] | None = None) -> int:
    parser = broker_parser("bench.proxy", __doc__)
    args = parser.parse_args(argv)
    serve(args.frontend, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
