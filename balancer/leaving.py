"""Big results on their way out: charged to their client until libzmq is done with them.

A result over limits.LONE_PAYLOAD_BYTES travels in a frame of its own, the very buffer the
node's DONE brought (no copy), which libzmq keeps until the client's connection has taken it,
also after the kept results have forgotten it. So each stays charged to its client as unsent
(balancer/budget.py) until libzmq is known to be done with it, and a slow reader's big results
count against the budget while they wait in its pipe.

Knowing needs a tracked send (pyzmq's zero-copy frame with a MessageTracker), and each one costs
a message to pyzmq's garbage-collector thread: about 30 us of CPU a result, 14 % of the
balancer's CPU with 256 KiB payloads. A connection delivers in order, so one tracked result done
says every result sent before it on that connection is done too. Results to a connection that
said CLIENT_HELLO therefore leave untracked (the frame as received: no copy, no collector), up to
UNTRACKED_RUN_BYTES in a row; the next is tracked. A run that no tracked result has followed for
MARK_AFTER_S is closed by a tracked marker: a CREDIT repeating the window that connection was told,
which a Client takes as it takes any CREDIT. A connection that never said hello (a raw client) is
told nothing, so each of its big results is tracked.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import zmq

from balancer.budget import MemoryBudget
from balancer.credit import Credit
from wire import protocol as p
from wire.protocol import MsgType
from wire.sockets import send_routed

# Untracked bytes in a row to one connection before the next big result is tracked: what a slow
# reader's tail may hold beyond the tracked one it waits behind is counted all the same (charged
# until a tracked result or marker after it is done); this bounds how many entries a pass looks at.
UNTRACKED_RUN_BYTES = 2**20
# An untracked run that long without a tracked result after it gets its marker: a steady stream tracks one
# result in a run and sends no marker; a pause ends the run this long after its last result.
MARK_AFTER_S = 0.005


class _Going:
    """One connection's big results handed to libzmq, oldest first: (client id, bytes, tracker or None)."""

    __slots__ = ("entries", "last_at", "run", "tracked")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int, zmq.MessageTracker | None]] = deque()
        self.tracked = 0  # tracked entries among them
        self.run = 0  # untracked bytes since the last tracked entry
        self.last_at = 0.0  # when the newest entry left


class LeavingResults:
    """The big results libzmq still holds, by connection; the loop asks `any` to know if flush() has work."""

    def __init__(self, sock: zmq.Socket, budget: MemoryBudget, credit: Credit) -> None:
        self._sock = sock
        self._budget = budget
        self._credit = credit
        self._going: dict[bytes, _Going] = {}

    @property
    def any(self) -> bool:
        return bool(self._going)

    def frame(self, route: bytes, body: Any, size: int) -> Any:
        """The frame to send a big result of `size` bytes to `route` in: tracked, or the body as it is."""
        going = self._going.get(route)
        run = 0 if going is None else going.run
        if run + size > UNTRACKED_RUN_BYTES or route not in self._credit.told:
            return zmq.Frame(body, copy=False, track=True)
        return body

    def sent(self, route: bytes, client_id: int, size: int, frame: Any) -> None:
        """A big result left in `frame` (from frame()): charged as unsent until libzmq is known to be done."""
        self._budget.charge(client_id, size, unsent=True)
        self.track(route, client_id, size, frame)

    def track(self, route: bytes, client_id: int, size: int, frame: Any) -> None:
        """As sent(), for a result already charged as unsent (one held for a full pipe, sent now)."""
        self._add(route, client_id, size, getattr(frame, "tracker", None))

    def release(self) -> None:
        """Stop counting what libzmq is done with; close with a marker each run no tracked result follows.

        Each connection's results are checked from the oldest, and the first tracked one still on its
        way ends the check: a client that does not read costs a few looks per pass."""
        now = 0.0
        for route in list(self._going):
            going = self._going[route]
            entries = going.entries
            done = 0
            for i, (_client_id, _size, tracker) in enumerate(entries):
                if tracker is not None:
                    if not tracker.done:
                        break
                    done = i + 1
            self._release(going, done)
            if not entries:
                del self._going[route]
            elif not going.tracked:
                now = now or time.monotonic()
                if now - going.last_at >= MARK_AFTER_S:
                    self._mark(route, going)

    def _release(self, going: _Going, count: int) -> None:
        """The `count` oldest results of a connection are done with: they stop counting."""
        entries, budget = going.entries, self._budget
        for _ in range(count):
            client_id, size, tracker = entries.popleft()
            if tracker is not None:
                going.tracked -= 1
            if size:  # a marker counts nothing
                budget.release(client_id, size, unsent=True)

    def _add(self, route: bytes, client_id: int, size: int, tracker: zmq.MessageTracker | None) -> None:
        going = self._going.get(route)
        if going is None:
            going = self._going[route] = _Going()
        going.entries.append((client_id, size, tracker))
        going.last_at = time.monotonic()
        if tracker is not None:
            going.tracked += 1
            going.run = 0
        else:
            going.run += size

    def _mark(self, route: bytes, going: _Going) -> None:
        """A tracked CREDIT after an untracked run: once it is done, so is the run. Sent again next pass if the
        pipe is full; a connection gone took its queued results with it (libzmq dropped them)."""
        client_id = going.entries[-1][0]
        window = self._credit.told.get(route) or self._credit.window(client_id)
        marker = zmq.Frame(p.encode(MsgType.CREDIT, *window, 0), copy=False, track=True)
        failed = send_routed(self._sock, route, [marker])
        if failed == "unroutable":
            self._release(going, len(going.entries))
            del self._going[route]
        elif not failed:
            self._add(route, client_id, 0, marker.tracker)
