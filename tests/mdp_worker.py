"""A Majordomo (MDP/0.2) worker made of the `majortomo` package's own Worker, run as a process by the tests.

    python tests/mdp_worker.py ENDPOINT SERVICE MODE

MODE `echo` answers every request with its body; `parts` answers with two PARTIAL replies and an empty
FINAL; `hold` prints "running N" on stdout when it takes request N and then never answers (a test kills
it); `once` answers one request and leaves with DISCONNECT. Nothing here is zlb's: it stands for a worker
written for another Majordomo broker.
"""

from __future__ import annotations

import sys
import threading

from majortomo import Worker


def main(endpoint: str, service: str, mode: str) -> None:
    # The heartbeat majortomo uses by default (2.5 s); the balancer heartbeats it faster, which it takes.
    worker = Worker(endpoint, service.encode(), zmq_linger=0)
    worker.connect()
    taken = 0
    while True:
        client, body = worker.wait_for_request()
        taken += 1
        if mode == "hold":
            print(f"running {taken}", flush=True)
            threading.Event().wait()  # never answers: the test kills this process mid-request
        elif mode == "parts":
            worker.send_reply_partial(client, [b"part-1"])
            worker.send_reply_partial(client, [b"part-2", *body])
            worker.send_reply_final(client, [])
        else:
            worker.send_reply_final(client, body)
        if mode == "once":
            worker.close()  # DISCONNECT
            print("left", flush=True)
            return


if __name__ == "__main__":
    main(*sys.argv[1:4])
