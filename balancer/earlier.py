"""Request ids finished earlier whose results are no longer kept: packed, about 12 bytes an id.

Pure, owned by KeptResults (balancer/kept.py), which hands it each request whose result it lets
go of. Per client id, a dict of pages: a page covers PAGE_SLOTS consecutive request ids and is one
array of 64-bit words, [slots used (a bitmap), newest stamp, oldest stamp, one word per id used in
slot order]; a word packs the payload's digest (60 bits) and three flags. A Client's ids are
consecutive, so its pages fill up: 8 bytes an id plus a page's share of ~220, 11.2 bytes an id
measured; ids scattered over the 64-bit range cost a page each, 230 bytes an id measured
(`python -m tests.reliability.measure_retention`, docs/RELIABILITY.md).

A stamp is the number of results added when the id finished (KeptResults' order of finishing);
pages are let go of in the order they were made, once their newest stamp is older than the
window (a page written to late goes to the back instead), or beyond max_bytes, oldest first.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterator

from wire.protocol import FAILED, PROCESSED

PAGE_BITS = 6
PAGE_SLOTS = 1 << PAGE_BITS
_SLOT_MASK = PAGE_SLOTS - 1
_HEADER = 3  # used-slot bitmap, newest stamp, oldest stamp
# Estimated bytes, from tracemalloc (tests/reliability/measure_retention.py): a page (its array's header
# and three header words, its dict entry and key, its place in the order), each id, a client's dict.
PAGE_BYTES = 224
ID_BYTES = 8
CLIENT_BYTES = 400
# A packed word: the digest's low 60 bits above three flags.
_FAILED_FLAG, _XXH3_DIGEST, _NO_DIGEST = 1, 2, 4
_FLAG_BITS = 3
_DIGEST_MASK = (1 << 60) - 1


def _digest_bits(digest: int) -> int:
    """The 60 bits of a digest that are kept (an XXH3 digest is not negative, an older SHA-256 one is)."""
    return (-1 - digest if digest < 0 else digest) & _DIGEST_MASK


def pack(status: str, digest: int | None) -> int:
    """One word for an id's status and its payload's digest (None: not known, any payload matches).

    One bit of status: processed, or not (failed; expired and cancelled are kept as failed: not run to the end)."""
    flags = _FAILED_FLAG if status != PROCESSED else 0
    if digest is None:
        return flags | _NO_DIGEST
    if digest >= 0:
        flags |= _XXH3_DIGEST
    return _digest_bits(digest) << _FLAG_BITS | flags


def unpack(word: int) -> tuple[str, int | None]:
    """(status, digest) of a word: the digest as payload_digest makes it, cut to 60 bits (sign kept)."""
    status = FAILED if word & _FAILED_FLAG else PROCESSED
    if word & _NO_DIGEST:
        return status, None
    bits = word >> _FLAG_BITS
    return status, bits if word & _XXH3_DIGEST else -1 - bits


def same_digest(kept: int, digest: int) -> bool:
    """Whether a payload's full digest is the one kept (as unpack() gives it)."""
    return _digest_bits(kept) == _digest_bits(digest)


class EarlierIds:
    """Ids past their results, per client id, in pages let go of oldest first."""

    def __init__(self, window_s: float, max_bytes: int) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self.by_client: dict[int, dict[int, array]] = {}  # client id -> page number -> page
        self.count = 0  # ids held
        self.bytes = 0  # estimated from PAGE_BYTES, ID_BYTES, CLIENT_BYTES
        self.left_early = 0  # ids let go of before their time, for max_bytes
        # The pages in the order they were made (a page written to late moves to the back).
        self._order_clients: deque[int] = deque()
        self._order_pages: deque[int] = deque()

    def add(self, client_id: int, request_id: int, status: str, digest: int | None, stamp: int) -> None:
        """Hold an id (its result is gone); `stamp` places it in the order of finishing."""
        if self.window_s <= 0 or self.max_bytes <= 0:
            return
        pages = self.by_client.get(client_id)
        if pages is None:
            pages = self.by_client[client_id] = {}
            self.bytes += CLIENT_BYTES
        number = request_id >> PAGE_BITS
        page = pages.get(number)
        if page is None:
            page = pages[number] = array("Q", (0, stamp, stamp))
            self._order_clients.append(client_id)
            self._order_pages.append(number)
            self.bytes += PAGE_BYTES
        used, bit = page[0], 1 << (request_id & _SLOT_MASK)
        at = _HEADER + (used & (bit - 1)).bit_count()
        if used & bit:
            page[at] = pack(status, digest)
        else:
            page.insert(at, pack(status, digest))
            page[0] = used | bit
            self.count += 1
            self.bytes += ID_BYTES
        page[1] = max(page[1], stamp)

    def find(self, client_id: int, request_id: int) -> tuple[str, int | None] | None:
        """(status, digest) of an id held, else None."""
        pages = self.by_client.get(client_id)
        page = pages.get(request_id >> PAGE_BITS) if pages is not None else None
        if page is None:
            return None
        used, bit = page[0], 1 << (request_id & _SLOT_MASK)
        if not used & bit:
            return None
        return unpack(page[_HEADER + (used & (bit - 1)).bit_count()])

    def expire(self, cutoff: int, budget: int) -> None:
        """Let go of pages whose ids all finished by stamp `cutoff`, then of the oldest beyond max_bytes;
        at most `budget` pages are visited."""
        clients, numbers = self._order_clients, self._order_pages
        while clients and budget > 0:
            budget -= 1
            page = self.by_client[clients[0]][numbers[0]]
            if page[1] <= cutoff or self.bytes > self.max_bytes:
                self.left_early += (page[1] > cutoff) * page[0].bit_count()
                self._drop(clients.popleft(), numbers.popleft())
            elif page[2] <= cutoff:  # made long ago but written to since: judged again from the back
                page[2] = page[1]
                clients.rotate(-1)
                numbers.rotate(-1)
            else:
                return

    def _drop(self, client_id: int, number: int) -> None:
        pages = self.by_client[client_id]
        ids = pages.pop(number)[0].bit_count()
        self.count -= ids
        self.bytes -= PAGE_BYTES + ID_BYTES * ids
        if not pages:
            del self.by_client[client_id]
            self.bytes -= CLIENT_BYTES

    def clients(self) -> list[int]:
        return list(self.by_client)

    def pages_of(self, client_id: int) -> list[int]:
        return list(self.by_client.get(client_id, ()))

    def page_ids(self, client_id: int, number: int) -> list[tuple[int, str, int | None]]:
        """(request_id, status, digest) of every id a page holds now ([] if it is gone)."""
        page = self.by_client.get(client_id, {}).get(number)
        if page is None:
            return []
        used, base, out, at = page[0], number << PAGE_BITS, [], _HEADER
        for slot in range(PAGE_SLOTS):
            if used >> slot & 1:
                out.append((base + slot, *unpack(page[at])))
                at += 1
        return out

    def __iter__(self) -> Iterator[tuple[int, int, str, int | None]]:
        """(client_id, request_id, status, digest) of every id held."""
        for client_id in self.clients():
            for number in self.pages_of(client_id):
                for rid, status, digest in self.page_ids(client_id, number):
                    yield client_id, rid, status, digest
