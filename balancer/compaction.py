"""Journal compaction a slice at a time, so a million live requests never stall the loop.

Rewriting the journal inline took 421 ms at 500,000 waiting requests. Instead
the loop starts a Compaction: it lists the client sessions and then, once
per loop iteration, writes the records of CHUNK requests to a new file beside
the journal. Appends made meanwhile go to both files, in loop order. Each
request's record is taken when its slice is written, from its state then, and
any later change is an append that lands after it; so in the new file, as in
the old, the last record of every request is its current state. A request
forgotten before its slice is skipped.

Finished requests are skipped there: their results follow in the order they
finished, as replay reads them (the newest --keep-finished keep their results
on restart, and the oldest go first when bytes or the budget need room). Written
with their sessions, a result that finished before its slice came after ones
that finished later but were appended earlier, and a restart kept older
results than the balancer that wrote the file (test_compaction.py). They are
read by their place in that order (KeptResults.places), up to the newest,
those that finished meanwhile included: so each result's last record in the
new file follows those of all that finished before it.

Ids kept past their results (balancer/earlier.py) follow, a page at a time,
once every result is written: a request whose result was let go of before its
slice was skipped there, and is in its page by then. Letting go of a result
appends nothing, so this order is what keeps its id in the file.
Request id reservations (RESERVED, balancer/sessions.py) come last, a slice at a
time too; replay keeps the highest per client id, so their order is free.

When every slice is written, a helper thread fsyncs the new file (a disk
flush of the whole state must not sit on the loop) and reports on a queue;
the loop then renames it over the journal. Single owner: only the loop writes
either file; the thread only fsyncs a descriptor it is handed.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING, Any

from balancer.records import ACCEPTED, EARLIER, FINISHED, RESERVED, Request
from wire.protocol import DEAD, FINAL_STATUSES

if TYPE_CHECKING:
    from balancer.journal import Journal
    from balancer.scheduler import Scheduler

# Requests written per loop iteration. At 1 KiB each, 500 keep the longest step under 8 ms;
# 2,000 took up to 27 ms, because the kernel throttles a writer of many dirty pages.
CHUNK = 500


def record_of(req: Request, sched: Scheduler) -> tuple[Any, ...]:
    """The journal record that describes a request's state now."""
    if req.status in FINAL_STATUSES:
        outcome = (req.status, req.server_id, req.attempts, req.body, req.payload_digest)
        return (FINISHED, req.client_id, req.request_id, req.priority, *outcome)
    if req.status == DEAD:
        letter = sched.dead.get(req.client_id, req.request_id)
        if letter is not None:
            return sched.dead_record(letter)
    return (ACCEPTED, req.client_id, req.request_id, req.priority, req.route, req.body, *sched.tail_of(req))


class Compaction:
    """One incremental rewrite of a journal; step() once per loop iteration until it returns True."""

    def __init__(self, journal: Journal, sched: Scheduler) -> None:
        self.journal = journal
        self._sched = sched
        self._sessions = [session for session in sched.sessions.values() if session]
        self._keys: list[int] = []  # request ids of the session being written, copied when it is reached
        self._at = 0
        self._kept = sched.kept
        self._place: int | None = None  # the place of the next result to write, from the oldest when reached
        self._seen_end = 0  # the place after the newest result when the last slice was taken
        self._results_written = False  # every result finished so far: later ones are appended after them
        self._ids = sched.kept.ids
        self._id_clients: list[int] | None = None  # clients with ids past their results, listed when reached
        self._pages: list[int] = []  # page numbers of the client being written
        self._client = 0
        self._reserved = sched.sessions.reserved
        self._reservations: list[tuple[int, int]] | None = None  # listed when reached
        self._synced: queue.SimpleQueue[BaseException | None] | None = None
        journal.start_rewrite()

    def step(self) -> bool:
        """Write the next slice, or finish; True once the new file has replaced the journal."""
        if self._synced is None:
            records = self._next_slice()
            if records is not None:
                if records:
                    self.journal.write_rewrite(records)
                return False
            self._synced = queue.SimpleQueue()
            fd = self.journal.rewrite_fd
            threading.Thread(target=_fsync, args=(fd, self._synced), name="zlb-journal-compact", daemon=True).start()
            return False
        try:
            failure = self._synced.get_nowait()
        except queue.Empty:
            return False
        self.journal.end_rewrite(failure)  # raises JournalError if the fsync failed
        return True

    def _next_slice(self) -> list[tuple[Any, ...]] | None:
        """Records of the next CHUNK requests, each from its state now (forgotten ones are skipped), then
        results and ids; None once everything is written."""
        out: list[tuple[Any, ...]] = []
        seen = 0  # requests looked at: a finished one is skipped, yet costs its share of the slice
        while seen < CHUNK:
            if self._at >= len(self._keys):
                if not self._sessions:
                    if self._next_results(out, CHUNK - seen):
                        self._next_ids(out)
                        self._next_reservations(out)
                        if not out:
                            return None
                    return out
                # Keys, not values: copying a million ints takes 6 ms, a million Requests 20 (each is touched).
                self._session = self._sessions.pop()
                self._keys, self._at = list(self._session), 0
            end = min(len(self._keys), self._at + CHUNK - seen)
            get = self._session.get
            for rid in self._keys[self._at : end]:
                req = get(rid)
                if req is not None and req.status not in FINAL_STATUSES:  # results follow, in order
                    out.append(record_of(req, self._sched))
            seen += end - self._at
            self._at = end
        return out

    def _next_results(self, out: list[tuple[Any, ...]], room: int) -> bool:
        """Records of kept results in the order they finished: `room` of them, and as many more as finished
        since the last slice (so the rest to write shrinks every slice, however fast results come); True once
        they are all written. A result let go of before its place was reached is skipped: its id follows."""
        if self._results_written:
            return True
        kept = self._kept
        places = kept.places
        if self._place is None:
            self._place, self._seen_end = places.start, places.stop
        more = kept.from_place(self._place, room + places.stop - self._seen_end)
        self._seen_end = places.stop
        self._place = max(self._place, places.start) + len(more)
        out.extend(record_of(req, self._sched) for req in more)
        self._results_written = self._place >= places.stop
        return self._results_written

    def _next_ids(self, out: list[tuple[Any, ...]]) -> None:
        """Records of ids past their results, a page at a time, until out holds CHUNK or none are left."""
        ids = self._ids
        if self._id_clients is None:
            self._id_clients = ids.clients()
        while len(out) < CHUNK:
            if not self._pages:
                if not self._id_clients:
                    return
                self._client = self._id_clients.pop()
                self._pages = ids.pages_of(self._client)
                continue
            client_id = self._client
            out.extend((EARLIER, client_id, *held) for held in ids.page_ids(client_id, self._pages.pop()))

    def _next_reservations(self, out: list[tuple[Any, ...]]) -> None:
        """Records of request id reservations, once the ids are written, until out holds CHUNK."""
        if len(out) >= CHUNK:
            return
        if self._reservations is None:
            self._reservations = list(self._reserved.items())
        while self._reservations and len(out) < CHUNK:
            out.append((RESERVED, *self._reservations.pop()))


def _fsync(fd: int, done: queue.SimpleQueue[BaseException | None]) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        done.put(exc)
    else:
        done.put(None)
