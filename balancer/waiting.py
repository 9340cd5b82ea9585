"""The queue of waiting requests: strict priority; within a priority, re-queued requests first, then
fresh ones in turns between clients.

A bucket per priority, under a heap of the priorities that have waiting requests:

- `retry`: a heap of re-queued requests (dispatched and lost) by arrival number; they go ahead
  of every fresh request of their priority, whoever sent them;
- `turns`: a deque holding the oldest fresh request of each client with fresh requests waiting,
  in turn order. pop() takes the head and puts that client's next request at the tail, so
  clients take turns (round-robin): a request waits behind at most one request of each other
  client waiting at its priority, however long their backlogs, where a single FIFO made a
  client's 10 requests wait 26.9 s behind another's million;
- `later`: per client, its fresh requests behind the one in `turns`, in arrival order (None
  while there are none, a list while short, a deque once long: a deque costs 760 B even empty,
  and a list's del [0] is a memmove).

push and pop are O(1) plus O(log P) for P distinct priorities. A waiting request costs one slot
(8 B) of a deque or list, as in a single FIFO; a client costs a dict entry per priority it has
requests waiting at, and a list or deque when it has more than one.

A paused client (one whose results pile up unread, see balancer/clients.py) has its requests set
aside when pop() meets its turn, with all its later ones, in O(1); its arrivals meanwhile go
straight aside. resume() gives it the first turn of each priority again, so others go on
meanwhile and the paused client loses no place.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from balancer.records import Request
from wire.protocol import PENDING

# A client's later requests move from a list to a deque at this many.
LONG_LATER = 64
_ABSENT: Any = object()


def _append_later(later: Any, req: Request) -> Any:
    """`later` with `req` behind the rest: a new list, the same list or deque, or a deque once long."""
    if later is None:
        return [req]
    later.append(req)
    if len(later) >= LONG_LATER and type(later) is list:
        return deque(later)
    return later


def _without(entries: list, reqs: set[Request], found: set[Request]) -> tuple[list, int]:
    """`entries` ((arrival, Request) pairs) without those of `reqs`, which are added to `found`; and how many."""
    kept = [entry for entry in entries if entry[1] not in reqs]
    found.update(entry[1] for entry in entries if entry[1] in reqs)
    return kept, len(entries) - len(kept)


def _waits(req: Request) -> bool:
    return req.status == PENDING


def _purge_bucket(bucket: _Bucket) -> int:
    """Drop a bucket's requests that no longer wait; how many."""
    before = bucket.size
    bucket.retry = [entry for entry in bucket.retry if _waits(entry[1])]
    heapq.heapify(bucket.retry)
    turns: deque = deque()
    for head in bucket.turns:
        rest = [req for req in bucket.later.get(head.client_id) or () if _waits(req)]
        if not _waits(head):
            if not rest:
                del bucket.later[head.client_id]
                continue
            head = rest.pop(0)
        turns.append(head)
        bucket.later[head.client_id] = (deque(rest) if len(rest) >= LONG_LATER else rest) or None
    bucket.turns = turns
    bucket.size = len(bucket.retry) + sum(1 + len(later or ()) for later in bucket.later.values())
    return before - bucket.size


def _purge_aside(aside: _SetAside) -> int:
    """Drop a paused client's set-aside requests that no longer wait; how many."""
    before = aside.count
    aside.retry = [entry for entry in aside.retry if _waits(entry[1])]
    for priority, (head, later) in list(aside.fresh.items()):
        rest = [req for req in (head, *(later or ())) if _waits(req)]
        if rest:
            aside.fresh[priority] = [rest[0], rest[1:] or None]
        else:
            del aside.fresh[priority]
    count = len(aside.retry) + sum(1 + len(later or ()) for _head, later in aside.fresh.values())
    return before - count


@dataclass(slots=True)
class _Bucket:
    """Waiting requests of one priority."""

    turns: deque = field(default_factory=deque)  # each waiting client's oldest fresh request
    later: dict = field(default_factory=dict)  # client id -> None | list | deque of its other fresh ones
    retry: list = field(default_factory=list)  # heap of (arrival number, Request)
    size: int = 0
    in_heap: bool = False


@dataclass(slots=True)
class _SetAside:
    """A paused client's waiting requests: per priority [its oldest fresh one, the rest], and re-queued ones."""

    fresh: dict = field(default_factory=dict)
    retry: list = field(default_factory=list)  # (arrival number, Request)
    count: int = 0


class WaitingQueue:
    """Priority buckets under a heap of the priorities that have waiting requests."""

    def __init__(self, paused: set[int] | None = None) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._priorities: list[int] = []
        self.count = 0  # requests in the queue proper; an attribute, read on every dispatch
        # Client ids whose requests are not dispatched; one set shared by the queues of every service.
        self.paused: set[int] = set() if paused is None else paused
        self._aside: dict[int, _SetAside] = {}
        self.parked = 0  # requests set aside for paused clients

    def __len__(self) -> int:
        """Requests in the queue proper (the set-aside ones of paused clients are not)."""
        return self.count

    # ---- arrivals ----------------------------------------------------------

    def push_fresh(self, req: Request, _absent: Any = _ABSENT) -> None:
        """A new arrival: behind its client's earlier requests of its priority; its first takes a turn."""
        cid = req.client_id
        bucket = self._buckets.get(req.priority)
        if bucket is None or not bucket.in_heap:
            bucket = self._bucket(req.priority)
        later = bucket.later.get(cid, _absent)
        if later is None:
            bucket.later[cid] = [req]
        elif later is _absent:
            if self.paused and cid in self.paused:
                self._set_aside_fresh(req)
                return
            bucket.turns.append(req)
            bucket.later[cid] = None
        else:
            later.append(req)
            if type(later) is list and len(later) >= LONG_LATER:
                bucket.later[cid] = deque(later)
        bucket.size += 1
        self.count += 1

    def push_retry(self, req: Request, arrival: int) -> None:
        """A request that was dispatched and lost: ahead of the fresh ones of its priority, by arrival."""
        bucket = self._bucket(req.priority)
        heapq.heappush(bucket.retry, (arrival, req))
        bucket.size += 1
        self.count += 1

    # ---- dispatch ------------------------------------------------------------

    def pop(self) -> Request | None:
        """The next request to dispatch, of a client not paused; None if only paused ones wait."""
        paused = self.paused
        while self.count:
            bucket = self._buckets[self._priorities[0]]
            if not bucket.size:
                bucket = self._top()
            if bucket.retry:
                req = self._pop_retry(bucket)
                if req is None:
                    continue
                return req
            turns = bucket.turns
            req = turns.popleft()
            cid = req.client_id
            later = bucket.later[cid]
            if paused and cid in paused:
                self._set_aside_turn(bucket, req, later)
                continue
            if not later:
                del bucket.later[cid]
            elif type(later) is deque:
                turns.append(later.popleft())
            else:
                turns.append(later.pop(0))
            bucket.size -= 1
            self.count -= 1
            return req
        return None

    def _pop_retry(self, bucket: _Bucket) -> Request | None:
        """The bucket's first re-queued request; None if it was a paused client's (set aside)."""
        entry = heapq.heappop(bucket.retry)
        bucket.size -= 1
        self.count -= 1
        req = entry[1]
        if self.paused and req.client_id in self.paused:
            aside = self._aside_of(req.client_id)
            aside.retry.append(entry)
            aside.count += 1
            self.parked += 1
            return None
        return req

    def _top(self) -> _Bucket:
        """The most urgent bucket with requests (the caller checks that one waits)."""
        priorities = self._priorities
        while True:
            bucket = self._buckets[priorities[0]]
            if bucket.size:
                return bucket
            bucket.in_heap = False
            heapq.heappop(priorities)

    def _bucket(self, priority: int) -> _Bucket:
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._buckets[priority] = _Bucket()
        if not bucket.in_heap:
            bucket.in_heap = True
            heapq.heappush(self._priorities, priority)
        return bucket

    def take_back(self, reqs: set[Request]) -> set[Request]:
        """Take these re-queued requests out of the queue again; return those found.

        For a node declared dead that came back holding them (Scheduler.hello): rare, so a pass over
        the re-queued requests of their priorities (and of their paused clients), not an index.
        """
        found: set[Request] = set()
        for priority in {req.priority for req in reqs}:
            bucket = self._buckets.get(priority)
            if bucket is not None and bucket.retry:
                bucket.retry, taken = _without(bucket.retry, reqs, found)
                heapq.heapify(bucket.retry)
                bucket.size -= taken
                self.count -= taken
        for client_id in {req.client_id for req in reqs if req not in found}:
            aside = self._aside.get(client_id)
            if aside is not None and aside.retry:
                aside.retry, taken = _without(aside.retry, reqs, found)
                aside.count -= taken
                self.parked -= taken
        return found

    def purge(self) -> int:
        """Drop the requests that no longer wait (cancelled or expired in place, status no longer pending);
        how many. O(waiting): the scheduler calls it only once such requests are a good share of the queue,
        and pop() skips them meanwhile. Order is kept: a client whose turn was a dropped request takes it
        with its next one."""
        removed = 0
        for bucket in self._buckets.values():
            removed += _purge_bucket(bucket)
        for aside in self._aside.values():
            gone = _purge_aside(aside)
            aside.count -= gone
            self.parked -= gone
        self.count -= removed
        return removed

    # ---- paused clients ------------------------------------------------------

    def pause(self, client_id: int) -> None:
        """Dispatch none of this client's requests until resume()."""
        self.paused.add(client_id)

    def resume(self, client_id: int) -> None:
        """Dispatch this client's requests again: its set-aside ones take the first turn of their priority."""
        self.paused.discard(client_id)
        aside = self._aside.pop(client_id, None)
        if aside is None:
            return
        self.parked -= aside.count
        for priority, (head, later) in aside.fresh.items():
            bucket = self._bucket(priority)
            bucket.turns.appendleft(head)
            bucket.later[client_id] = later
            moved = 1 + (len(later) if later else 0)
            bucket.size += moved
            self.count += moved
        for arrival, req in aside.retry:
            self.push_retry(req, arrival)

    def _aside_of(self, client_id: int) -> _SetAside:
        aside = self._aside.get(client_id)
        if aside is None:
            aside = self._aside[client_id] = _SetAside()
        return aside

    def _set_aside_turn(self, bucket: _Bucket, head: Request, later: Any) -> None:
        """A paused client's turn came: its oldest request of this priority and all behind it go aside."""
        del bucket.later[head.client_id]
        moved = 1 + (len(later) if later else 0)
        bucket.size -= moved
        self.count -= moved
        aside = self._aside_of(head.client_id)
        aside.fresh[head.priority] = [head, later]
        aside.count += moved
        self.parked += moved

    def _set_aside_fresh(self, req: Request) -> None:
        """An arrival of a paused client with no turn at its priority: straight aside, behind its others."""
        aside = self._aside_of(req.client_id)
        entry = aside.fresh.get(req.priority)
        if entry is None:
            aside.fresh[req.priority] = [req, None]
        else:
            entry[1] = _append_later(entry[1], req)
        aside.count += 1
        self.parked += 1

    # ---- reading ---------------------------------------------------------------

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request, set-aside ones included, in no particular order."""
        for bucket in self._buckets.values():
            yield from (req for _arrival, req in bucket.retry)
            yield from bucket.turns
            for later in bucket.later.values():
                yield from later or ()
        for aside in self._aside.values():
            yield from (req for _arrival, req in aside.retry)
            for head, later in aside.fresh.values():
                yield head
                yield from later or ()

    def by_priority(self) -> dict[int, int]:
        """Queue depth per priority, most urgent first (set-aside requests not counted)."""
        return {p: b.size for p, b in sorted(self._buckets.items()) if b.size}
