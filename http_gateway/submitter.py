"""The gateway's clients: one thread owns every client socket.

HTTP handlers run on many threads and zmq sockets must not be shared, so
handlers put submissions on a queue and this thread sends them, one
`Client` per client id, then collects (and discards) their results so the
sockets never back up. Retries of unanswered requests happen here too.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import zmq

from client_node.client import Client, ClientIdInUse, Pending

# How long the owner thread waits for a submission before pumping results.
PUMP_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Submission:
    """One request a handler asked to send."""

    client_id: int
    request_id: int
    priority: int
    payload: bytes


class Submitter:
    """A thread that owns the gateway's Client sockets, fed through a queue."""

    def __init__(self, frontend: str, context: zmq.Context | None = None) -> None:
        self.frontend = frontend
        self.sent = 0
        self.answered = 0
        self.refused = 0
        self._ctx = context or zmq.Context.instance()
        self._inbox: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._clients: dict[int, Client] = {}
        self._pending: dict[int, list[Pending]] = {}
        self._thread = threading.Thread(target=self._run, name="zlb-http-submitter", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> None:
        """Queue a request for sending (returns at once; safe from any thread)."""
        self._inbox.put(submission)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close its sockets."""
        self._inbox.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._inbox.get(timeout=PUMP_INTERVAL_S)
                except queue.Empty:
                    item = Submission(-1, -1, 0, b"")  # nothing to send: just pump
                if item is None:
                    return
                if item.client_id >= 0:
                    self._send(item)
                self._collect()
        finally:
            for client in self._clients.values():
                client.close()

    def _send(self, item: Submission) -> None:
        client = self._clients.get(item.client_id)
        if client is None:
            client = self._clients[item.client_id] = Client(self.frontend, item.client_id, context=self._ctx)
            self._pending[item.client_id] = []
        self._pending[item.client_id].append(client.submit(item.payload, item.priority, item.request_id))
        self.sent += 1

    def _collect(self) -> None:
        for client_id, client in self._clients.items():
            pending = self._pending[client_id]
            if not pending:
                continue
            try:
                client.pump(0)
                self._pending[client_id] = self._unanswered(pending)
            except ClientIdInUse:
                # Another process holds this client id: its requests were never queued (/send_request says 503).
                self.refused += len(pending)
                self._pending[client_id] = []

    def _unanswered(self, pending: list[Pending]) -> list[Pending]:
        still = []
        for p in pending:
            if not p.done():
                still.append(p)
                continue
            self.answered += 1
            try:
                p.result(0)
            except KeyError:
                pass  # the same id submitted twice: its one answer was already taken
        return still
