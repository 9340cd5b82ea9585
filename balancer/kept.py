"""Finished requests the balancer remembers, so that a re-sent request id is never run again silently.

Two windows, both counted from when a request finished (docs/RELIABILITY.md, "How long a request id
is remembered"):

- **Results** (KeptResults): the request with its result and its payload's digest, for
  --keep-finished-s (default 300 s). A re-sent id gets its stored result. The memory budget
  (balancer/budget.py), --keep-finished-mb and --keep-finished (a count, none by default) bound them
  too: when one needs room, the oldest results go first, before their time.
- **Ids** (EarlierIds): past its result, the id, its status and its payload's digest, packed (about
  12 bytes an id), for --remember-s (default a day) within --remember-mb. A re-sent id with its
  payload is answered "processed earlier; the result is no longer kept" (status `not_kept`), with
  another payload it is a conflict. Past both windows (or beyond --remember-mb, oldest first) an id is
  forgotten and a re-send runs again.

Time is an argument: tick(now) takes a mark (now, results added so far) at most once per
window / MARK_STEPS and lets go of what a mark at least a window old covers; so an entry stays at
least its window and at most about 1/256 of it longer (plus a tick). Each tick moves at most SLICE
results or pages: a burst is worked off over several ticks, never in one long pass of the loop.
Adding a result is O(1) amortised and touches no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import xxhash

from balancer.budget import REQUEST_OVERHEAD_BYTES, MemoryBudget
from balancer.earlier import EarlierIds, same_digest
from balancer.records import Outbox, Request, Submitted
from balancer.sessions import ClientSessions
from wire.protocol import FINAL_STATUSES, NOT_KEPT

DEFAULT_KEEP_FINISHED_S = 300.0
DEFAULT_KEEP_FINISHED: int | None = None  # no count: results are kept for a time, within bytes and the budget
# Kept results are also bounded in bytes: 10,000 results of 256 KiB would be 2.5 GiB.
DEFAULT_KEEP_FINISHED_BYTES = 64 * 1024 * 1024
DEFAULT_REMEMBER_S = 86_400.0
DEFAULT_REMEMBER_BYTES = 64 * 1024 * 1024
# Results moved to the ids, or pages of ids visited, per tick() at most (about 1.5 ms of the loop).
SLICE = 1000
# Marks per window: how much longer than its window an entry may stay (1/256 of it).
MARK_STEPS = 256


def payload_digest(payload: Any, like: int | None = None) -> int:
    """A stable 63-bit digest of a payload (stable across processes, unlike hash()).

    XXH3 (64 bits, halved to 63), not negative: 4.6 us for a 256 KiB payload where SHA-256 took 152
    (README, "Dependencies and why"), and a digest only has to catch a client reusing its own request id
    with another payload, not an adversary. Journals of format 2 kept SHA-256 digests, which are negative:
    `like` such a digest, the payload is digested that way, so a resubmission after an upgrade is still
    recognised (their older BLAKE2b digests are dropped on restore: balancer/journal_replay.py).
    """
    if like is not None and like < 0:
        return -1 - (int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1)
    return _xxh3(payload) >> 1


_xxh3 = xxhash.xxh3_64_intdigest


# Connections of other processes remembered per unfinished request, to answer them too when it finishes.
MAX_ALSO_WAITING = 64


def resubmitted(
    req: Request, route: Any, body: Any, counters: dict[str, int], outbox: Outbox, also: dict[Request, list[Any]]
) -> Submitted:
    """A known request id again: the same request (answer it), or a conflicting reuse.

    Unfinished and submitted from another connection (another process under the client id, or the same
    one restarted), the result will go to the new connection and, as a replay, to those that asked before
    (`also`, at most MAX_ALSO_WAITING of them; the rest fetch it with their next re-send)."""
    finished = req.status in FINAL_STATUSES
    if finished:
        same = req.payload_digest is None or req.payload_digest == payload_digest(body, like=req.payload_digest)
    else:
        same = same_payload(req.body, body)
    if not same:
        counters["conflicts"] += 1
        return Submitted.CONFLICT
    counters["duplicates"] += 1
    replay = finished and req.route != route  # another process asks for a result it did not see made
    if not finished:
        if req.route is not None and req.route != route:
            waiting = also.setdefault(req, [])
            if req.route not in waiting and len(waiting) < MAX_ALSO_WAITING:
                waiting.append(req.route)
        req.route = route  # answered here, and where it was asked before
        return Submitted.DUPLICATE
    req.route = route  # answer wherever the client is now
    if replay:
        counters["replays"] += 1
        outbox.replays.append(req)
    else:
        outbox.replies.append(req)
    return Submitted.FINISHED


def same_payload(held: Any, body: Any) -> bool:
    """Whether two payloads hold the same bytes. A big one is a zmq.Frame (received without a copy):
    compared in place, as bytes() would copy both (16 MiB each for 16 MiB payloads)."""
    if type(body) is bytes:
        return bytes(held) == body
    return len(held) == len(body) and hmac.compare_digest(memoryview(held), memoryview(body))


def body_size(body: Any) -> int:
    """Bytes of a payload or kept result (bytes or a zmq frame); 0 when there is none."""
    return len(body) if body is not None else 0


class Marks:
    """(time, results added by then), oldest first, at most one per window / MARK_STEPS."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._marks: deque[tuple[float, int]] = deque()

    def note(self, now: float, added: int) -> None:
        marks = self._marks
        if not marks or (added != marks[-1][1] and now - marks[-1][0] >= self.window_s / MARK_STEPS):
            marks.append((now, added))

    def cutoff(self, now: float) -> int:
        """How many of the first results added finished at least a window ago (by the marks); -1: not known."""
        marks, oldest = self._marks, now - self.window_s
        while len(marks) > 1 and marks[1][0] <= oldest:
            marks.popleft()
        return marks[0][1] if marks and marks[0][0] <= oldest else -1


class KeptResults:
    """The finished requests whose results are still kept, oldest first; EarlierIds past them."""

    def __init__(
        self,
        keep: int | None,
        keep_bytes: int,
        budget: MemoryBudget,
        sessions: ClientSessions,
        keep_s: float = DEFAULT_KEEP_FINISHED_S,
        remember_s: float = DEFAULT_REMEMBER_S,
        remember_bytes: int = DEFAULT_REMEMBER_BYTES,
        forgotten: Callable[[Request], None] = lambda req: None,
    ) -> None:
        self.keep = keep
        self._forgotten = forgotten  # told of each request forgotten (the listing's arrival order lets go)
        self.keep_bytes = keep_bytes
        self.keep_s = keep_s
        self.ids = EarlierIds(remember_s, remember_bytes)
        self._budget = budget
        self._sessions = sessions
        # Oldest first, from _head (None before it): a list, so any run of them is a slice, O(its length) (a
        # deque walks to the middle: 14 ms to skip a million, which the journal's compaction would pay every
        # slice). The head's slots go once they are half the list: amortised O(1) a result.
        self._requests: list[Any] = []
        self._head = 0
        self._bytes = 0
        self._added = 0  # results ever added: the next one's place in the order of finishing
        self._gone = 0  # results let go of, oldest first: the place of the oldest still kept
        self._marks = Marks(keep_s)
        self._id_marks = Marks(remember_s)
        self.left_early = 0  # results let go of before their time, for the budget, bytes or count

    def __len__(self) -> int:
        return self._added - self._gone

    def __iter__(self) -> Iterator[Request]:
        return islice(self._requests, self._head, None)

    @property
    def places(self) -> range:
        """The kept results' places in the order of finishing: the oldest's, up to the next one's."""
        return range(self._gone, self._added)

    def from_place(self, place: int, count: int) -> list[Request]:
        """Up to `count` kept results, oldest first, from `place` on (or from the oldest kept, if it is later)."""
        first = self._head + max(place - self._gone, 0)
        return self._requests[first : first + count]

    def add(self, req: Request, result: Any) -> None:
        """Remember a request just finished with `result`: its payload's digest (for conflicting resubmissions)
        instead of the payload, whose bytes the budget stops counting; let go of the oldest beyond any bound."""
        payload = req.body
        self.digest(req)
        self._budget.release(req.client_id, body_size(payload))
        req.body = result
        self.remember(req)

    @staticmethod
    def digest(req: Request) -> None:
        """Digest the payload of a request about to finish (its record holds the digest), if not done yet."""
        if req.payload_digest is None:
            req.payload_digest = payload_digest(req.body)

    def remember(self, req: Request) -> None:
        """Keep a finished request as it is (one restored from a journal holds its result and digest)."""
        self._requests.append(req)
        self._added += 1
        self._bytes += body_size(req.body)
        self.trim()

    def trim(self) -> None:
        """Let go of the oldest results beyond the count, the bytes or the memory budget (their ids stay)."""
        budget, count = self._budget, self._added - self._gone
        budget.kept = self._bytes + REQUEST_OVERHEAD_BYTES * count
        keep = count if self.keep is None else self.keep
        while count and (count > keep or self._bytes > self.keep_bytes or budget.over()):
            self._let_go()
            self.left_early += 1
            count -= 1
            budget.kept = self._bytes + REQUEST_OVERHEAD_BYTES * count

    def _let_go(self) -> None:
        """The oldest result goes; its id, status and digest stay with the ids (if its session still has it)."""
        kept, head = self._requests, self._head
        old = kept[head]
        kept[head] = None
        head += 1
        if head >= 1024 and 2 * head >= len(kept):
            del kept[:head]
            head = 0
        self._head = head
        self._forgotten(old)
        self._gone += 1
        self._bytes -= body_size(old.body)
        session = self._sessions.get(old.client_id)
        if session is not None and session.get(old.request_id) is old:
            del session[old.request_id]
            self.ids.add(old.client_id, old.request_id, old.status, old.payload_digest, self._gone)
            if not session:
                del self._sessions[old.client_id]

    def restore_id(self, client_id: int, request_id: int, status: str, digest: int | None) -> None:
        """An id a previous balancer remembered past its result: it finished before anything added from now on."""
        self.ids.add(client_id, request_id, status, digest, self._added)

    def tick(self, now: float) -> None:
        """Take a mark; let go of the results past their window, and the ids past theirs (SLICE of each at most)."""
        self._marks.note(now, self._added)
        self._id_marks.note(now, self._added)
        cutoff = self._marks.cutoff(now)
        moved = 0
        while self._gone < min(cutoff, self._added) and moved < SLICE:
            self._let_go()
            moved += 1
        if moved:
            self._budget.kept = self._bytes + REQUEST_OVERHEAD_BYTES * len(self)
        self.ids.expire(self._id_marks.cutoff(now), SLICE)

    def earlier(
        self, client_id: int, request_id: int, route: Any, body: Any, counters: dict[str, int], outbox: Outbox
    ) -> Submitted | None:
        """A re-sent id past its result: answered "processed earlier" (FINISHED) or a CONFLICT; None if unknown."""
        found = self.ids.find(client_id, request_id)
        if found is None:
            return None
        status, digest = found
        if digest is not None and not same_digest(digest, payload_digest(body, like=digest)):
            counters["conflicts"] += 1
            return Submitted.CONFLICT
        counters["duplicates"] += 1
        counters["answered_expired"] += 1
        note = (
            f"{status} earlier; the result is no longer kept (results are kept up to {self.keep_s:g} s,"
            " fewer when the result bytes or the memory budget need room)"
        )
        outbox.replays.append(Request(client_id, request_id, 0, None, route, note.encode(), NOT_KEPT))
        return Submitted.FINISHED

    def stand_in(self, client_id: int, request_id: int) -> Request | None:
        """For an id kept past its result: a Request with its status and digest, no result; else None."""
        found = self.ids.find(client_id, request_id)
        if found is None:
            return None
        status, digest = found
        return Request(client_id, request_id, 0, None, None, None, status, payload_digest=digest)

    def view(self) -> dict[str, Any]:
        """What `zlb status` shows of the windows, under "retention"."""
        ids = self.ids
        return {
            "results_for_s": self.keep_s,
            "results_max": self.keep,
            "results_max_bytes": self.keep_bytes,
            "results_kept": len(self),
            "results_bytes": self._bytes,
            "results_left_early": self.left_early,
            "ids_for_s": ids.window_s,
            "ids_max_bytes": ids.max_bytes,
            "ids_kept": ids.count,
            "ids_bytes": ids.bytes,
            "ids_left_early": ids.left_early,
            "past_results": "a re-sent id is answered 'processed earlier; the result is no longer kept' (status"
            " not_kept), or refused as a conflict if its payload differs",
            "past_ids": "the id is forgotten: a re-send runs again",
        }
