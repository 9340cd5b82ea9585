"""What /configure starts: server nodes and clients, bounded, numbered apart, waited for and reaped.

- Clients are sessions of the gateway itself, not processes: a client id belongs to one
  live process (docs/PROTOCOL.md, Sessions), and /send_request speaks for client ids
  too, so /configure's client j and a /send_request for client j share the gateway's
  one session for j. Their requests go out through the gateway's Submitter.
- Bounded: at most MAX_SERVERS node processes; a /configure asking for more is a 4xx.
- Numbered apart: client j numbers its requests from (j + 1) * REQUEST_ID_BLOCK + 1
  (client 0: 100001, 100002, ...; client 1: 200001, ...), so "Request 200001
  assigned to Server 0" says whose request it is, and the ids people type into
  /send_request (the seed uses 101) never collide with them. A restarted gateway
  continues each block where the balancer's memory of it ends.
- Waited for: /configure answers once every node it asked for is active on the
  balancer, or 504 after JOIN_TIMEOUT_S.
- Reaped: `reap()` (called on every /configure and on each snapshot refresh of the event
  hub, at least every two seconds) collects exited node processes, so none stays a zombie.
- Owned by one thread: the supervisor's process table and the request-id blocks are only
  touched by the `zlb-http-processes` thread. /configure (from a web worker thread) and
  reap (from the event loop) hand it work through a queue, so two /configure calls run one
  after the other, never together.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from client_node.client import json_payload
from http_gateway.validation import HttpError
from process_supervisor.supervisor import Supervisor

MAX_SERVERS = 64
MAX_CLIENTS = 64
REQUEST_ID_BLOCK = 100_000
MAX_REQUESTS_PER_CLIENT = REQUEST_ID_BLOCK - 1
# How long /configure waits for the nodes it started to join before answering 504.
# (plus JOIN_S_PER_SERVER for each: 64 Python start-ups take about 20 s of CPU on 2 cores).
JOIN_TIMEOUT_S = 20.0
JOIN_S_PER_SERVER = 0.5
# Requests one /configure may ask for in all (clients x requests_per_client); the gateway holds
# each until it is answered, so this bounds its memory and the time /send_request may wait behind.
MAX_CONFIGURED_REQUESTS = 100_000
# How long a second /configure waits for the first to finish before answering 409.
CONFIGURE_WAIT_S = 30.0
SHUTTING_DOWN = "the gateway is shutting down"
# How long closing waits for the owner thread to finish what it is doing before stopping the processes itself.
CLOSE_WAIT_S = 1.0


@dataclass
class NodeSettings:
    """How /configure's processes run."""

    cost_ms: float = 500.0
    capacity: int = 1
    heartbeat_ms: int = 500
    liveness: int = 3


class Processes:
    """The nodes and clients /configure started, through a `Supervisor` that only its owner thread touches."""

    def __init__(
        self,
        sup: Supervisor,
        settings: NodeSettings,
        servers: Callable[[], list[dict[str, Any]]],
        send_batch: Callable[[int, int, int, Callable[[int], bytes]], None],
        known: Callable[[int, int], bool] = lambda client_id, request_id: False,
    ) -> None:
        self.sup = sup
        self._send_batch = send_batch
        self.settings = settings
        self._servers = servers
        self._known = known
        self._used: dict[int, int] = {}  # client id -> request ids used from its block
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closing = threading.Event()  # set once: queued /configure calls give up, a running one stops waiting
        self._owner = threading.Thread(target=self._run, name="zlb-http-processes", daemon=True)
        self._owner.start()

    def reap(self) -> None:
        """Have the owner collect exited node processes (no zombies); returns at once, from any thread."""
        self._jobs.put(self._reap)

    def configure(self, servers: int, clients: int, per_client: int, announce: Callable[[], None]) -> None:
        """Reach `servers` nodes, wait for them to join, then send `per_client` requests for each of `clients`.

        Runs on the owner thread after any /configure queued before it, and blocks until it is done.
        One that could not start within CONFIGURE_WAIT_S is withdrawn (it never runs) and answered 409.
        """
        done: Future[None] = Future()
        self._jobs.put(lambda: _settle(done, lambda: self._configure(servers, clients, per_client, announce)))
        wait([done], timeout=CONFIGURE_WAIT_S)
        if done.cancel():  # still queued: withdrawn before the owner took it
            raise HttpError(409, "another /configure is still running; try again")
        done.result()

    def close(self, timeout_s: float) -> None:
        """Stop every process started here (SIGKILL after `timeout_s`), on the owner thread.

        Queued /configure calls answer 503 instead of running; a running one stops waiting for
        joins. An owner still busy after CLOSE_WAIT_S (stopping a node of a shrinking /configure
        can take seconds) is not waited for: the processes are stopped from this thread then,
        because no node may outlive the gateway, and `zlb cluster` allows the gateway 5 s.
        """
        self._closing.set()
        stopped: Future[None] = Future()
        self._jobs.put(lambda: _settle(stopped, lambda: self.sup.stop_all(timeout_s)))
        self._jobs.put(None)
        wait([stopped], timeout=CLOSE_WAIT_S)
        if stopped.cancel():  # the owner never got to it
            self.sup.stop_all(timeout_s)
        else:
            stopped.result()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _reap(self) -> None:
        finished = [name for name, proc in self.sup.procs.items() if proc.poll() is not None]
        for name in finished:
            self.sup.procs.pop(name, None)

    def _configure(self, servers: int, clients: int, per_client: int, announce: Callable[[], None]) -> None:
        if self._closing.is_set():
            raise HttpError(503, SHUTTING_DOWN)
        self._reap()
        self._check_limits(servers, clients, per_client)
        announce()
        self._scale_servers(servers)
        self._await_joined(servers)
        for client_id in range(clients):
            self._start_client(client_id, per_client)

    def _check_limits(self, servers: int, clients: int, per_client: int) -> None:
        if clients * per_client > MAX_CONFIGURED_REQUESTS:
            raise HttpError(400, f"{clients} clients x {per_client} requests pass the {MAX_CONFIGURED_REQUESTS} limit")
        for client_id in range(clients):
            if client_id not in self._used:
                self._used[client_id] = self._used_before(client_id)
            if self._used[client_id] + per_client > MAX_REQUESTS_PER_CLIENT:
                raise HttpError(409, f"client {client_id} has used its {MAX_REQUESTS_PER_CLIENT} request ids")

    def _scale_servers(self, count: int) -> None:
        s = self.settings
        for name in self.sup.running("server-"):
            if int(name.split("-", 1)[1]) >= count:
                self.sup.stop(name)
        running = set(self.sup.running("server-"))
        for node_id in range(count):
            if f"server-{node_id}" not in running:
                self.sup.start_server(node_id, s.capacity, s.heartbeat_ms, s.liveness)

    def _await_joined(self, count: int) -> None:
        """Block until nodes 0..count-1 are live on the balancer (an admin's `down` is kept), or raise 504."""
        want = set(range(count))
        wait_s = JOIN_TIMEOUT_S + JOIN_S_PER_SERVER * count
        deadline = time.monotonic() + wait_s
        while True:
            live = {s["server_id"] for s in self._servers() if s["state"] != "dead"}
            if want <= live:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(str(i) for i in sorted(want - live))
                raise HttpError(504, f"servers {missing} did not join within {wait_s:g} s")
            if self._closing.wait(0.05):  # wait-ok: a deadline-bounded poll of the balancer for joins
                raise HttpError(503, SHUTTING_DOWN)

    def _used_before(self, client_id: int) -> int:
        """Ids of this client's block a previous gateway already sent to this balancer.

        A gateway restarted in front of a long-lived balancer must not send 100001 again: the
        balancer would answer it from memory. Ids are used in order from the block's start, so
        the known ones form a prefix and a binary search over `request` lookups finds its end.
        """
        start = (client_id + 1) * REQUEST_ID_BLOCK + 1
        if not self._known(client_id, start):
            return 0
        low, high = 1, MAX_REQUESTS_PER_CLIENT  # ids start .. start+low-1 are known
        while low < high:
            mid = (low + high + 1) // 2
            if self._known(client_id, start + mid - 1):
                low = mid
            else:
                high = mid - 1
        return low

    def _start_client(self, client_id: int, count: int) -> None:
        if client_id not in self._used:
            self._used[client_id] = self._used_before(client_id)
        first = (client_id + 1) * REQUEST_ID_BLOCK + 1 + self._used[client_id]
        self._used[client_id] += count
        cost_ms = self.settings.cost_ms
        self._send_batch(client_id, first, count, lambda n: json_payload(cost_ms, {"n": n}))


def _settle(future: Future[None], work: Callable[[], None]) -> None:
    """Run `work` for `future`'s waiter, unless the waiter withdrew it; its outcome goes to the waiter."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(work())
    except Exception as exc:  # noqa: BLE001 - not swallowed: the waiting /configure raises it
        future.set_exception(exc)
