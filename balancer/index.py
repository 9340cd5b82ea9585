"""Every remembered request in arrival order, for listings paged by key (`zlb requests`, /requests).

A request enters the arrival order when the balancer accepts it (or restores it from a journal)
and leaves it when it is forgotten (balancer/kept.py); it keeps its place whatever its status.
So one order covers waiting, running and finished requests, and a listing that pages by an
arrival number meets each remembered request exactly once, even when requests change status,
are dispatched or re-queued between its pages (a request listed as waiting that finishes
meanwhile is not listed again as finished, and one not yet reached is listed when it is).

Dispatch order is another matter (priority, re-queued first, turns between clients:
balancer/waiting.py): it changes with every arrival, so no key could resume it.
Ids kept past their results (balancer/earlier.py) are not Requests and are not listed.

The order is kept in chunks of up to CHUNK arrivals. A chunk holds its requests (a list), so
a request costs one slot (8 bytes) here and carries no number of its own: its `place` points
at its chunk, which is what forgetting it needs. A request's arrival number is its chunk's
first number plus its index, until the chunk drops its forgotten requests (when half of it
is forgotten: O(1) amortised); from then on the chunk keeps each one's offset (a byte). An
empty chunk is dropped. A page starts after a given number with two bisections, O(log n),
and costs what it reads.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator

from balancer.records import Request

# Arrivals per chunk: the offsets fit in a byte.
CHUNK = 256


class _Chunk:
    """Requests that arrived as numbers base, base + 1, ...; the forgotten ones not yet dropped."""

    __slots__ = ("base", "forgotten", "offsets", "reqs")

    def __init__(self, base: int) -> None:
        self.base = base
        self.reqs: list[Request] = []
        # None while each request's offset is its index; set when forgotten ones are dropped.
        self.offsets: bytearray | None = None
        self.forgotten = 0

    def number(self, at: int) -> int:
        """The arrival number of reqs[at]."""
        return self.base + (at if self.offsets is None else self.offsets[at])

    def start_after(self, number: int) -> int:
        """The index of the first request that arrived after `number`."""
        if self.offsets is None:
            return min(len(self.reqs), max(0, number - self.base + 1))
        return bisect_right(self.offsets, number - self.base)


class Arrivals:
    """The remembered requests in the order they arrived, paged by arrival number."""

    def __init__(self) -> None:
        self._open = _Chunk(0)
        self._chunks: list[_Chunk] = [self._open]
        self._bases: list[int] = [0]

    def add(self, req: Request) -> None:
        """A request the balancer now remembers: after every earlier one."""
        chunk = self._open
        reqs = chunk.reqs
        if len(reqs) >= CHUNK:
            chunk = self._open_at(chunk.base + CHUNK)
            reqs = chunk.reqs
        reqs.append(req)
        req.place = chunk

    def _open_at(self, base: int) -> _Chunk:
        """A new chunk for the arrivals from number `base` on."""
        opened = self._open = _Chunk(base)
        self._chunks.append(opened)
        self._bases.append(base)
        return opened

    def forget(self, req: Request) -> None:
        """A request no longer remembered; its slot is reclaimed with half of its chunk's."""
        chunk = req.place
        if chunk is None:
            return
        req.place = None
        chunk.forgotten += 1
        if chunk.forgotten * 2 >= len(chunk.reqs):
            self._compact(chunk)

    def _compact(self, chunk: _Chunk) -> None:
        """Drop a chunk's forgotten requests, keeping the others' offsets; the open chunk closes first."""
        reqs = chunk.reqs
        if chunk is self._open:  # later arrivals go to a new chunk: this one's offsets stop at its last
            self._open_at(chunk.base + len(reqs))
        offsets = chunk.offsets if chunk.offsets is not None else range(len(reqs))
        kept = [(r, o) for r, o in zip(reqs, offsets) if r.place is chunk]
        chunk.reqs = [r for r, _o in kept]
        chunk.offsets = bytearray(o for _r, o in kept)
        chunk.forgotten = 0
        if not kept:
            at = bisect_right(self._bases, chunk.base) - 1
            del self._chunks[at]
            del self._bases[at]

    def number(self, req: Request) -> int:
        """A request's arrival number (a scan of its chunk: for rare paths, such as a re-queue); -1 if forgotten."""
        chunk = req.place
        if chunk is None:
            return -1
        for at, other in enumerate(chunk.reqs):
            if other is req:
                return chunk.number(at)
        return -1

    def __iter__(self) -> Iterator[Request]:
        """Every remembered request, in arrival order (lazily: read it to the end before anything changes)."""
        for chunk in list(self._chunks):
            yield from (r for r in chunk.reqs if r.place is chunk)

    def page(
        self, after: int, limit: int, scan: int, keep: Callable[[Request], bool] | None = None
    ) -> tuple[list[Request], int | None]:
        """Up to `limit` requests that arrived after number `after` (-1: from the first) and pass `keep`.

        At most `scan` requests are read. Returns the page and the arrival number to pass as `after`
        for the next one, or None when nothing follows: a page that reached its scan bound may hold
        fewer than `limit`, even none, and still have a next.
        """
        chunks = self._chunks
        at = max(0, bisect_right(self._bases, after) - 1)
        start = chunks[at].start_after(after)
        out: list[Request] = []
        if limit <= 0:
            return out, after if self._follows(at, start) else None
        read = 0
        while at < len(chunks):
            chunk = chunks[at]
            reqs = chunk.reqs
            for i in range(start, len(reqs)):
                req = reqs[i]
                read += 1
                if req.place is chunk and (keep is None or keep(req)):
                    out.append(req)
                    if len(out) >= limit:
                        return out, self._next_of(chunk.number(i), at, i + 1)
                if read >= scan:
                    return out, self._next_of(chunk.number(i), at, i + 1)
            at += 1
            start = 0
        return out, None

    def _next_of(self, number: int, at: int, start: int) -> int | None:
        """`number` if any slot follows position (at, start), else None: the listing has ended."""
        return number if self._follows(at, start) else None

    def _follows(self, at: int, start: int) -> bool:
        chunks = self._chunks
        return at < len(chunks) and (start < len(chunks[at].reqs) or at + 1 < len(chunks))


def matching(status: str | None, client_id: int | None) -> Callable[[Request], bool] | None:
    """The filter of a listing: by status, by client, both, or none."""
    if status is None and client_id is None:
        return None
    if client_id is None:
        return lambda r: r.status == status
    if status is None:
        return lambda r: r.client_id == client_id
    return lambda r: r.client_id == client_id and r.status == status
