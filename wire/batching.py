"""How every sender cuts what waits into batches: by peer, then by the batch limits (wire/limits.py).

The balancer groups an iteration's work by node and its results by client; a node
and a Client send what is queued. All of them send what is already waiting and
never wait to fill a batch (docs/PROTOCOL.md, "Why batches").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from wire.limits import BATCH_BYTES, BATCH_ITEMS, LONE_PAYLOAD_BYTES

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def grouped(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Items by key, each group in arrival order (the order its peer must see)."""
    groups: dict[K, list[T]] = {}
    for item in items:
        k = key(item)
        group = groups.get(k)
        if group is None:
            groups[k] = [item]
        else:
            group.append(item)
    return groups


def batches(items: list[Any], size: Callable[[Any], int]) -> list[list[Any]]:
    """Split items into batches of at most BATCH_ITEMS and about BATCH_BYTES (`size(item)` bytes each).

    An item bigger than LONE_PAYLOAD_BYTES travels alone, and its sender sends it in the single
    form (see lone()). Most calls hold one small batch: returned as is.
    """
    if len(items) <= 1:  # nothing, or one item: alone if big, and its sender checks lone()
        return [items] if items else []
    if len(items) <= BATCH_ITEMS:
        sizes = list(map(size, items))
        if sum(sizes) <= BATCH_BYTES and max(sizes) <= LONE_PAYLOAD_BYTES:
            return [items]
    out: list[list[Any]] = []
    current: list[Any] = []
    held = 0
    for item in items:
        n = size(item)
        if n > LONE_PAYLOAD_BYTES:
            if current:
                out.append(current)
                current, held = [], 0
            out.append([item])
            continue
        if current and (len(current) >= BATCH_ITEMS or held + n > BATCH_BYTES):
            out.append(current)
            current, held = [], 0
        current.append(item)
        held += n
    if current:  # empty when the last item travelled alone
        out.append(current)
    return out


def lone(batch: list[Any], size: Callable[[Any], int]) -> bool:
    """True for a batch of one item too big to ride inside a batch frame: send it in the single form."""
    return len(batch) == 1 and size(batch[0]) > LONE_PAYLOAD_BYTES


def payload_size(item: tuple[Any, Any, bytes]) -> int:
    """The size of an item whose third element is its payload: a Client's queued submission
    (request_id, priority, payload), a node's finished request (ticket, ok, result)."""
    return len(item[2])
