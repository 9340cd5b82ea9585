"""The bounds of the zlb wire: how big a header, a message, a batch, a drain or a field may be.

wire/protocol.py defines the frames and checks what it decodes against these;
wire/batching.py cuts batches by them, and the roles drain and size their
sockets by them. docs/PROTOCOL.md gives the same figures in prose.
"""

from __future__ import annotations

# A header is tiny; anything bigger is garbage or an attack.
MAX_HEADER_BYTES = 4096
# The largest payload or result a request may carry (`zlb balancer --max-message-bytes`). The
# balancer's sockets let libzmq drop anything bigger than socket_limit() of it before Python
# sees it, checks each payload against it, and tells peers in WELCOME and CLIENT_WELCOME.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Control requests carry small maps only.
MAX_CONTROL_BYTES = 64 * 1024
# Containers in headers and control requests are tiny; a claim of more is an attack.
MAX_SMALL_ITEMS = 1024

# A sender closes a batch at this many items or this many payload bytes (a larger
# payload travels alone); a receiver refuses a batch of more than MAX_BATCH_ITEMS.
BATCH_ITEMS = 256
BATCH_BYTES = 1024 * 1024
MAX_BATCH_ITEMS = 1024
# Requests a loop takes from one socket per iteration, counted by item, not by message: 256
# messages of 1,024 items held one iteration for 0.75-2.2 s, long enough for nodes to be
# declared dead. At a few microseconds an item, this is a few milliseconds.
DRAIN_ITEMS = 2048
# ... and at most this many payload or result bytes: a burst of 60 MiB payloads took 3.9 s of one
# iteration (each copied out of its frame, and again into WORK) and a node was declared dead.
# The first message of a drain is always taken, whatever its size.
DRAIN_BYTES = 32 * 1024 * 1024
# A payload or result bigger than this travels alone, in the single form (SUBMIT, WORK, DONE,
# RESULT) with its own body frame: inside a batch it is copied into the msgpack frame and out
# again on every hop, which at 256 KiB cost a third of the throughput (190 MiB/s against 300).
# A frame costs a send and a receive of its own (a microsecond or two); a copy of 32 KiB about as much.
LONE_PAYLOAD_BYTES = 32 * 1024
# Room for the item headers of a batch beyond its payload bytes (256 items of about 50 bytes).
BATCH_OVERHEAD_BYTES = 64 * 1024
# What one request costs a balancer beyond its payload bytes (the Request, its session entry, the
# bytes object's header), measured with tracemalloc: ~330 bytes for a million queued requests; rounded
# up so the memory budget errs towards less. A client's window in bytes counts each outstanding
# request as request_cost() does (docs/PROTOCOL.md, "Credit"), as the balancer's budget does.
REQUEST_OVERHEAD_BYTES = 400


def request_cost(payload_bytes: int) -> int:
    """What a request takes of a memory budget and of a client's byte window: its payload and
    REQUEST_OVERHEAD_BYTES, and for a payload over LONE_PAYLOAD_BYTES room for its result as big again.

    A big result arrives while its payload is still held, so both are in memory at once. Charged from
    admission (not from the WORK that sends it, as until protocol version 7), the room is there whenever
    the result comes: a budget full of waiting big requests, dispatched together, cannot count twice its
    limit. Small results come in batches the drain bounds (DRAIN_BYTES)."""
    if payload_bytes > LONE_PAYLOAD_BYTES:
        return 2 * payload_bytes + REQUEST_OVERHEAD_BYTES
    return payload_bytes + REQUEST_OVERHEAD_BYTES


def too_large(what: str, size: int, limit: int) -> bytes:
    """Why a payload or result was refused for its size (a failed result's text, or a REJECTED reason)."""
    return f"{what} of {size} bytes is over the balancer's --max-message-bytes {limit}".encode()


def socket_limit(max_payload_bytes: int) -> int:
    """ZMQ_MAXMSGSIZE for a socket whose requests carry at most `max_payload_bytes`: a lone
    item of that size, or a full batch (BATCH_BYTES of payload), plus the item headers."""
    return max(max_payload_bytes, BATCH_BYTES) + BATCH_OVERHEAD_BYTES


# A host name longer than this in a HELLO is garbage (DNS names stop at 253).
MAX_HOST_CHARS = 255
# Process ids fit in 31 bits everywhere zlb runs (Linux caps them at 2**22).
MAX_PID = 2**31 - 1


def bad_host(host: str) -> bool:
    """A host name no real peer sends: too long, or with control characters (a forged log line)."""
    return len(host) > MAX_HOST_CHARS or not host.isprintable()


# A node holds at most --capacity (10,000) tickets; a claim of more is garbage.
MAX_HELD_TICKETS = 10_000


# A request's deadline is at most a year away (`--deadline-ms`); beyond is a typo, not a deadline.
MAX_DEADLINE_MS = 365 * 86_400_000
