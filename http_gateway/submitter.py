"""The gateway's clients: one thread owns every client socket.

HTTP handlers run on many threads and zmq sockets must not be shared, so
handlers hand submissions to this thread, which sends them with one `Client`
per client id (the gateway's session for that id) and takes their results so
the sockets never back up. Retries of unanswered requests happen here too.

Two lanes: a /send_request goes ahead of everything; /configure's requests are
batches the thread sends a slice at a time, so a large /configure neither holds
up /send_request nor is held in memory as millions of queued messages.
Open clients are bounded: the least recently used idle one is closed first.
Everything here but the queue belongs to the thread: a batch, too, reaches it
through the queue, and only it keeps the list of batches in progress.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zmq

from client_node.client import Client, ClientIdInUse

# How long the owner thread waits for a submission before pumping results.
PUMP_INTERVAL_S = 0.05
# Requests of /configure batches sent per pass, between looks at the /send_request lane.
BATCH_SLICE = 200
# Client sockets kept open at once; idle ones beyond are closed, least recently used first.
MAX_OPEN_CLIENTS = 256


@dataclass(frozen=True)
class Submission:
    """One request a handler asked to send."""

    client_id: int
    request_id: int
    priority: int
    payload: bytes
    service: str | None = None  # None: the default service
    deadline_s: float | None = None


class Submitter:
    """A thread that owns the gateway's Client sockets, fed through a queue."""

    def __init__(self, frontend: str) -> None:
        self.frontend = frontend
        self.sent = 0
        self.answered = 0
        self.refused = 0
        self.errors = 0
        # Its own context: the gateway's control calls never compete with these sockets for slots.
        self._ctx = zmq.Context()
        self._ctx.max_sockets = 4 * MAX_OPEN_CLIENTS
        # Handlers' submissions and batches, in order; None stops the thread.
        self._inbox: queue.SimpleQueue[Submission | Iterator[Submission] | None] = queue.SimpleQueue()
        self._batches: deque[Iterator[Submission]] = deque()  # the thread's own: batches being sent a slice at a time
        self._clients: OrderedDict[int, Client] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="zlb-http-submitter", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> None:
        """Send one request ahead of any batch (returns at once; safe from any thread)."""
        self._inbox.put(submission)

    def submit_batch(self, client_id: int, first_id: int, count: int, payload: Callable[[int], bytes]) -> None:
        """Send requests first_id.. first_id + count - 1 of a client, the n-th with payload(n), in slices."""
        self._inbox.put(Submission(client_id, first_id + n, 5, payload(n)) for n in range(count))

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close its sockets."""
        self._inbox.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while self._pass():
                pass
        finally:
            for client in self._clients.values():
                client.close()
            self._ctx.term()

    def _pass(self) -> bool:
        """Send the submissions that came in and list the batches, send a slice of a batch, collect results;
        False once told to stop."""
        wait_s = PUMP_INTERVAL_S if not self._batches else 0
        while True:
            try:
                item = self._inbox.get(timeout=wait_s) if wait_s else self._inbox.get_nowait()
            except queue.Empty:
                break
            wait_s = 0
            if item is None:
                return False
            if isinstance(item, Submission):
                self._send_guarded(item)
            else:
                self._batches.append(item)
        self._send_slice()
        self._collect()
        return True

    def _send_guarded(self, item: Submission) -> None:
        """Send one; a failure (a refused id, an exhausted socket table) is counted and the thread lives on."""
        try:
            self._send(item)
        except (ClientIdInUse, ValueError, zmq.ZMQError):
            self.errors += 1

    def _send_slice(self) -> None:
        if not self._batches:
            return
        batch = self._batches[0]
        for _ in range(BATCH_SLICE):
            item = next(batch, None)
            if item is None:
                self._batches.popleft()
                return
            self._send_guarded(item)

    def _send(self, item: Submission) -> None:
        client = self._client(item.client_id)
        client.submit(item.payload, item.priority, item.request_id, service=item.service, deadline=item.deadline_s)
        self.sent += 1

    def _client(self, client_id: int) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            self._close_idle()
            client = self._clients[client_id] = Client(self.frontend, client_id, context=self._ctx)
        self._clients.move_to_end(client_id)
        return client

    def _close_idle(self) -> None:
        """Make room for one more client by closing the least recently used idle ones."""
        for client_id in list(self._clients):
            if len(self._clients) < MAX_OPEN_CLIENTS:
                return
            if not self._clients[client_id].unanswered:
                self._clients.pop(client_id).close()

    def _collect(self) -> None:
        for client_id, client in list(self._clients.items()):
            if not client.unanswered:
                continue
            try:
                client.pump(0)
                self.answered += len(client.take_results())
            except ClientIdInUse:
                # Another process holds this client id: its requests were never queued (/send_request says so).
                self.refused += client.unanswered
                self._clients.pop(client_id).close()
