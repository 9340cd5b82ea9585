"""The zlb wire protocol: the one place that defines a frame.

Every role imports this module; nothing else imports msgpack. A message is a
small msgpack *header* (an array: version, type, epoch, fields...) optionally
followed by one opaque *body* frame (a request's payload or a result) that the
balancer never decodes. docs/PROTOCOL.md describes the same thing in prose, and
wire/limits.py holds the bounds (of a header, a batch, a drain) it checks against.

Exactly-once delivery rests on three rules: a request is named by
(client_id, request_id) and a resubmission of a known one is never run again;
WORK tickets are unique across balancer restarts (they start from the
balancer's start time in microseconds), so a late DONE can never complete a
different request; and a result the balancer has no in-flight ticket for is
dropped. A stopping balancer sends REJECTED [None, REASON_STOPPING] to its
clients (re-send later, to the next balancer) and RECONNECT [REASON_STOPPING]
to its nodes (dial again after one interval); older peers read both as the
plain messages they already were.

The balancer's journal file (balancer/journal.py) holds msgpack arrays too,
each in a checked frame (balancer/journal_format.py); encode_records /
decode_records are the msgpack half of that codec.
"""

from __future__ import annotations

import functools
import itertools
from enum import IntEnum
from typing import Any, NoReturn

import msgpack

from wire import limits
from wire.limits import MAX_BATCH_ITEMS, MAX_HEADER_BYTES  # bound as names: decode() reads both for every message

# Version 2: sessions (incarnations in HELLO and SUBMIT, held tickets in HELLO and
# HEARTBEAT, REFUSED and FENCED, client HELLO/PING/BYE, replay flag in RESULT).
# Version 3: batches (SUBMIT_BATCH, RESULT_BATCH, WORK_BATCH, DONE_BATCH).
# Version 4: an epoch in every header ([version, type, epoch, fields...]), REDIRECT, and the
# replication stream between balancers (FOLLOW, SNAPSHOT, RECORDS, APPLIED).
# Version 5: the work model: services (HELLO lists a node's, SUBMIT and SUBMIT_BATCH may name one),
# deadlines (SUBMIT and SUBMIT_BATCH may carry one), cancellation (CLIENT_CANCEL, CANCEL), and the
# statuses expired, cancelled and dead; the old "result no longer kept" status is now `not_kept`.
# Version 6: credit. CLIENT_WELCOME carries the window a client connection may have outstanding
# (requests, bytes), and CREDIT tells it a new one (docs/PROTOCOL.md, "Credit").
# Version 7: room for a big request. CLIENT_PING names the bytes of a request bigger than the client's
# window (0: none), and CLIENT_WELCOME and CREDIT say how many bytes are reserved for its next request.
PROTOCOL_VERSION = 7

# Liveness: a peer silent for LIVENESS intervals is dead. 3 to 5 is the usual
# range; 3 keeps failover under two seconds at the default interval.
HEARTBEAT_INTERVAL_MS = 500
LIVENESS = 3
# The reason a stopping balancer gives in REJECTED (to clients) and RECONNECT (to nodes).
REASON_STOPPING = "balancer stopping"
# REJECTED [request_id, reason] whose reason starts with this is back-pressure, not a verdict:
# the balancer holds its memory budget (balancer/budget.py); the Client queues the request again and
# sends it when its window (credit) has room. Rare since version 6: the window keeps a Client below it.
REASON_BUSY = "busy"
# A node that lost the balancer retries HELLO with a doubling back-off up to this cap.
RECONNECT_BACKOFF_MAX_S = 4.0


class MsgType(IntEnum):
    """Message types; the second element of every header."""

    SUBMIT = 1  # client -> frontend: [client_id, request_id, priority, incarnation] + payload
    RESULT = 2  # frontend -> client: [request_id, status, server_id, attempts, replay] + result
    REJECTED = 3  # frontend -> client: [request_id | None, reason]
    CLIENT_HELLO = 4  # client -> frontend: [client_id, incarnation, pid, host]; answered CLIENT_WELCOME
    # frontend -> client: [lease_ms, max_payload_bytes, window_requests, window_bytes | None, reserved_bytes]; ping
    # at a third of lease_ms; have at most the window outstanding (None: no byte bound), and the next request of
    # at most reserved_bytes besides
    CLIENT_WELCOME = 5
    CLIENT_PING = 6  # client -> frontend: [client_id, incarnation, want_bytes]; answered CLIENT_WELCOME
    CLIENT_BYE = 7  # client -> frontend: [client_id, incarnation]; the connection is done (a client id is a name)
    CLIENT_CANCEL = 9  # client -> frontend: [client_id, incarnation, request_id]; answered by its RESULT
    REFUSED = 8  # backend -> node: [reason, holder_pid, holder_host]; the node id is another live process's
    HELLO = 10  # node -> backend: [node_id | None, capacity, pid, host, incarnation, max_seen] + held tickets
    WELCOME = 11  # backend -> node: [node_id, heartbeat_ms, liveness, max_payload_bytes]
    HEARTBEAT = 12  # node -> backend: [in_flight, handled, dropped, max_seen_ticket] + held tickets
    PING = 13  # backend -> node: []
    WORK = 14  # backend -> node: [ticket, client_id, request_id, priority, attempt] + payload
    DONE = 15  # node -> backend: [ticket, ok] + result
    BYE = 16  # node -> backend: []
    RECONNECT = 17  # backend -> node: [reason]; the node must say HELLO again
    LEAVING = 18  # node -> backend: []; send no more work, in-flight work will finish
    FENCED = 19  # backend -> node: [reason]; another incarnation took this id over: exit
    CANCEL = 25  # backend -> node: [ticket, reason]; stop that work (cancelled, or past its deadline): no DONE
    # frontend -> client: [window_requests, window_bytes | None, reserved_bytes]; the connection's window from now on
    CREDIT = 26
    # Batches: one frame, the payloads inside the header as msgpack bin (see BATCH_TYPES).
    SUBMIT_BATCH = 20  # client -> frontend: [client_id, incarnation, [[request_id, priority, payload], ...]]
    RESULT_BATCH = 21  # frontend -> client: [[[request_id, status, server_id, attempts, replay, result], ...]]
    WORK_BATCH = 22  # backend -> node: [[[ticket, client_id, request_id, priority, attempt, payload], ...]]
    DONE_BATCH = 23  # node -> backend: [[[ticket, ok, result], ...]]
    # A standby balancer (or a leader stepping down) answers a client or node: go to the leader.
    REDIRECT = 24  # frontend or backend -> peer: [leader's endpoint for this peer | None, reason]
    # Replication between the members of an HA group (balancer/replication.py, balancer/standby.py).
    FOLLOW = 30  # standby -> leader's replication socket: [member name]; send me a snapshot, then the stream
    SNAPSHOT = 31  # leader -> standby: [seq, records, keepalive_ms] + journal bytes: the state after batch `seq`
    RECORDS = 32  # leader -> standby: [seq, records] + journal bytes (empty: a keep-alive); batch `seq`
    APPLIED = 33  # standby -> leader: [seq]; everything up to batch `seq` is written to the standby's journal


OptInt = (int, type(None))
# Field types of each message, in order. Checked on every decode.
SCHEMAS: dict[MsgType, tuple[Any, ...]] = {
    MsgType.SUBMIT: (int, int, int, int),
    MsgType.RESULT: (int, str, OptInt, int, bool),
    MsgType.REJECTED: (OptInt, str),
    MsgType.CLIENT_HELLO: (int, int, int, str),
    MsgType.CLIENT_WELCOME: (int, int, int, OptInt, int),
    MsgType.CREDIT: (int, OptInt, int),
    MsgType.CLIENT_PING: (int, int, int),
    MsgType.CLIENT_BYE: (int, int),
    MsgType.CLIENT_CANCEL: (int, int, int),
    MsgType.CANCEL: (int, str),
    MsgType.REFUSED: (str, OptInt, (str, type(None))),
    MsgType.HELLO: (OptInt, int, int, str, int, int),
    MsgType.WELCOME: (int, int, int, int),
    MsgType.HEARTBEAT: (int, int, int, int),
    MsgType.PING: (),
    MsgType.WORK: (int, int, int, int, int),
    MsgType.DONE: (int, bool),
    MsgType.BYE: (),
    MsgType.RECONNECT: (str,),
    MsgType.LEAVING: (),
    MsgType.FENCED: (str,),
    MsgType.SUBMIT_BATCH: (int, int, list),
    MsgType.RESULT_BATCH: (list,),
    MsgType.WORK_BATCH: (list,),
    MsgType.DONE_BATCH: (list,),
    MsgType.REDIRECT: ((str, type(None)), str),
    MsgType.FOLLOW: (str,),
    MsgType.SNAPSHOT: (int, int, int),
    MsgType.RECORDS: (int, int),
    MsgType.APPLIED: (int,),
}
# Messages that carry a body frame after the header.
WITH_BODY = frozenset(
    {
        MsgType.SUBMIT, MsgType.RESULT, MsgType.WORK, MsgType.DONE, MsgType.HELLO, MsgType.HEARTBEAT,
        MsgType.SNAPSHOT, MsgType.RECORDS,
    }
)  # fmt: skip
_TYPES = {int(t): t for t in MsgType}
OptStr = (str, type(None))
# Optional trailing fields (version 5), all or none: a message sent without them reads as before.
# SUBMIT and SUBMIT_BATCH: the service (None: `default`) and the deadline in ms from arrival (None: none),
# for the one request or for every item of the batch; HELLO: the services the node offers.
TAILS: dict[MsgType, tuple[Any, ...]] = {
    MsgType.SUBMIT: (OptStr, OptInt),
    MsgType.SUBMIT_BATCH: (OptStr, OptInt),
    MsgType.HELLO: (list,),
}

# Batches carry many requests in one message: a message costs a Python-level send and
# receive on each side (microseconds) where an item of a batch costs a fraction of one.
# Senders batch what is already waiting, never wait to fill a batch: a lone request
# goes as a batch of one, in one frame (cheaper than the two frames of the single forms).
BATCH_TYPES = frozenset({MsgType.SUBMIT_BATCH, MsgType.RESULT_BATCH, MsgType.WORK_BATCH, MsgType.DONE_BATCH})
# A batch frame is unpacked with no size limit of its own: the transport took it whole already
# (the balancer's ZMQ_MAXMSGSIZE), and no item can claim more bytes than the frame holds.
_ANY_SIZE = 2**31 - 1

# Field types of one item of each batch, in order; the last is the payload (bytes).
ITEM_SCHEMAS: dict[MsgType, tuple[type, ...]] = {
    MsgType.SUBMIT_BATCH: (int, int, bytes),
    MsgType.RESULT_BATCH: (int, str, (int, type(None)), int, bool, bytes),
    MsgType.WORK_BATCH: (int, int, int, int, int, bytes),
    MsgType.DONE_BATCH: (int, bool, bytes),
}


def _type_tuples(schema: tuple[Any, ...]) -> frozenset[tuple[type, ...]]:
    """Every exact type tuple a schema allows (a field of (int, None) allows both)."""
    return frozenset(itertools.product(*((f if isinstance(f, tuple) else (f,)) for f in schema)))


_ITEM_TYPES = {t: _type_tuples(schema) for t, schema in ITEM_SCHEMAS.items()}
# Every header this version accepts, keyed by its version, its type and the exact type of each
# of its elements (version, type and epoch included, so neither a bool nor a float passes for an
# int). Each names its type, for a batch the type tuples its items may have (else None), and where a
# batch's items are in the header (before any optional tail).
_ACCEPTED = {
    (PROTOCOL_VERSION, int(t), int, int, int, *types): (t, _ITEM_TYPES.get(t), 2 + len(SCHEMAS[t]))
    for t in MsgType
    for schema in (SCHEMAS[t], SCHEMAS[t] + TAILS.get(t, ()))
    for types in _type_tuples(schema)
}
# The first bytes of a batch header: a fixarray, the version, the type. Only these may
# exceed MAX_HEADER_BYTES, so the check needs no decoding.
_BATCH_PREFIXES = frozenset(
    bytes([0x90 | (len(SCHEMAS[t]) + extra + 3), PROTOCOL_VERSION, int(t)])
    for t in BATCH_TYPES
    for extra in {0, len(TAILS.get(t, ()))}
)

# Request status names as they appear on the wire and in every listing (seed wording).
PENDING = "pending"
ASSIGNED = "assigned"
PROCESSED = "processed"
FAILED = "failed"
# Ended unrun or stopped: its deadline passed (EXPIRED) or someone asked (CANCELLED).
EXPIRED = "expired"
CANCELLED = "cancelled"
# Failed every attempt (its nodes died): kept in the dead letters with its payload until retried or dropped.
DEAD = "dead"
STATUSES = (PENDING, ASSIGNED, PROCESSED, FAILED, EXPIRED, CANCELLED, DEAD)
# What a request ended as: a re-send of its id gets this answer again, never a second run.
FINAL_STATUSES = frozenset({PROCESSED, FAILED, EXPIRED, CANCELLED})
# A RESULT's status for a request id finished earlier whose result the balancer no longer keeps
# (past --keep-finished-s); its body says how it ended. Never a request's own status. (Before
# version 5 this was "expired", which now means a deadline passed.)
NOT_KEPT = "not_kept"

# Services: a node offers some (`default` unless told), a request names one. Bounded and plain, since
# they appear in logs, labels and listings.
DEFAULT_SERVICE = "default"
MAX_SERVICE_CHARS = 64
MAX_NODE_SERVICES = 64
_SERVICE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def service_error(name: Any) -> str:
    """Why `name` is not a service name ('' if it is one): 1 to 64 of A-Z a-z 0-9 . _ : -"""
    if type(name) is not str or not 1 <= len(name) <= MAX_SERVICE_CHARS or not _SERVICE_CHARS.issuperset(name):
        return f"service name {name!r:.80} is not 1 to {MAX_SERVICE_CHARS} characters of A-Z a-z 0-9 . _ : -"
    if name.startswith("mmi."):  # ZeroMQ RFC 8: the broker's own services, answered at once, never queued
        return f"service name {name!r} is reserved: mmi.* names the broker's own services (RFC 8)"
    return ""


# Event topics on the PUB socket; subscribers filter by prefix.
TOPIC_REQUEST = b"zlb.request"
TOPIC_NODE = b"zlb.node"
TOPIC_SYSTEM = b"zlb.system"
TOPIC_STATS = b"zlb.stats"  # periodic counters; not part of the log


class ProtocolError(Exception):
    """A message from a peer that does not follow this protocol.

    `kind` names the counter it is tallied under (malformed, bad_version,
    unknown_type, bad_fields, bad_frames, too_large).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack

_unpackb = msgpack.unpackb
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def _unpack(data: bytes, limit: int, max_items: int = limits.MAX_SMALL_ITEMS) -> Any:
    if len(data) > limit:
        raise ProtocolError("too_large", f"{len(data)} bytes over the {limit}-byte limit")
    try:
        # Tight unpack limits stop a tiny message from claiming huge containers.
        return _unpackb(data, **_unpack_options(limit, max_items))
    except _UNPACK_ERRORS as exc:
        raise _undecodable(exc) from None


def _undecodable(exc: Exception) -> ProtocolError:
    return ProtocolError("malformed", f"undecodable msgpack ({exc.__class__.__name__})")


@functools.lru_cache(maxsize=64)
def _unpack_options(limit: int, max_items: int) -> dict[str, Any]:
    """unpackb's keyword arguments for these limits, built once (a dict per message showed in profiles)."""
    return {
        "raw": False,
        "strict_map_key": True,
        "max_ext_len": 0,
        "max_str_len": limit,
        "max_bin_len": limit,
        "max_array_len": max_items,
        "max_map_len": max_items,
    }


# The epoch this process stamps on every header it sends: a leading balancer's leadership (from
# etcd, strictly increasing), 0 everywhere else. Clients and nodes drop what comes with an epoch
# older than the newest they have seen (0 means "no HA" and is always taken).
_epoch = 0


def set_epoch(epoch: int) -> None:
    """Stamp `epoch` on every header this process sends from now on (a balancer taking the lead)."""
    global _epoch
    _epoch = epoch


def encode(msg_type: MsgType, *fields: Any) -> bytes:
    """Encode a header frame."""
    return _pack([PROTOCOL_VERSION, msg_type, _epoch, *fields])


def batch_frames(batch_type: MsgType, single_type: MsgType, items: list[tuple[Any, ...]]) -> list[Any]:
    """The frames of a batch whose items end with their payload: one batch header, or for one item
    too big to ride in it, the single form (its fields, then the payload in a frame of its own).

    Work, results and a node's DONEs are built this way; the single form's fields are the item's.
    wire/batching.py cuts what waits into such batches.
    """
    if len(items) == 1:
        *fields, body = items[0]
        if body is not None and len(body) > limits.LONE_PAYLOAD_BYTES:
            return [encode(single_type, *fields), body]
    return [encode(batch_type, items)]


def decode(frame: bytes) -> tuple[MsgType, list[Any]]:
    """Decode and validate a header frame, as (type, fields); raise ProtocolError on anything off."""
    msg_type, header = _decode_header(frame)
    return msg_type, header[3:]


def decode_with_epoch(frame: bytes) -> tuple[MsgType, int, list[Any]]:
    """As decode(), with the sender's epoch: (type, epoch, fields). Clients and nodes fence by it."""
    msg_type, header = _decode_header(frame)
    return msg_type, header[2], header[3:]


def _decode_header(frame: bytes) -> tuple[MsgType, list[Any]]:
    """Decode and validate a header frame; its type and the whole header.

    Every message on every hop comes through here, so an acceptable header takes
    one lookup: its version, type and the exact type of each element name it in
    _ACCEPTED (msgpack yields exact built-in types). Anything else goes to
    _explain_header, which says what is wrong. A batch's items are checked the
    same way, one lookup each.
    """
    if len(frame) > MAX_HEADER_BYTES:
        header = _unpack_large(frame)
    else:
        try:
            # msgpack's defaults: str keys, no raw strings, and every length bounded by the frame's
            # own size (4 KiB here), so nothing small can claim a huge container; other types fail
            # the type check below. Passing the options costs a third of the unpack.
            header = _unpackb(frame)
        except _UNPACK_ERRORS as exc:
            raise _undecodable(exc) from None
    if type(header) is not list:
        _explain_header(header)
    try:
        msg_type, item_types, items_at = _ACCEPTED[(header[0], header[1], *map(type, header))]
    except (IndexError, TypeError, KeyError):  # under two elements, an unhashable one, or not a message
        _explain_header(header)
    if item_types is not None:
        items = header[items_at]
        if not items or len(items) > MAX_BATCH_ITEMS:
            _explain_items(msg_type, items)
        for item in items:
            if type(item) is not list or tuple(map(type, item)) not in item_types:
                _explain_items(msg_type, items)
    return msg_type, header


def _unpack_large(frame: bytes) -> Any:
    """A header over MAX_HEADER_BYTES: only a batch may be (its first bytes say so, undecoded)."""
    if bytes(frame[:3]) not in _BATCH_PREFIXES:
        raise ProtocolError("too_large", f"{len(frame)} bytes over the {MAX_HEADER_BYTES}-byte limit")
    # Room past MAX_BATCH_ITEMS, so a batch a little too long is refused saying so, not as "malformed".
    return _unpack(frame, _ANY_SIZE, 16 * MAX_BATCH_ITEMS)


def _explain_header(header: Any) -> NoReturn:
    """Raise the ProtocolError that says what is wrong with a decoded header."""
    if type(header) is not list or len(header) < 2:
        raise ProtocolError("malformed", "header is not an array of [version, type, ...]")
    version, raw_type = header[0], header[1]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError("bad_version", f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    msg_type = _TYPES.get(raw_type) if type(raw_type) is int else None
    if msg_type is None:
        raise ProtocolError("unknown_type", f"unknown message type {raw_type!r}")
    if len(header) < 3 or type(header[2]) is not int:
        raise ProtocolError("bad_fields", f"{msg_type.name} has no epoch (an integer after its type)")
    _explain_fields(msg_type, header[3:])


def _explain_fields(msg_type: MsgType, fields: list[Any]) -> NoReturn:
    """Raise the ProtocolError that says which field of a header is off."""
    schema = SCHEMAS[msg_type]
    if msg_type in TAILS and len(fields) == len(schema) + len(TAILS[msg_type]):
        schema = schema + TAILS[msg_type]
    if len(fields) != len(schema):
        also = f" (or {len(schema) + len(TAILS[msg_type])})" if msg_type in TAILS else ""
        raise ProtocolError("bad_fields", f"{msg_type.name} takes {len(schema)} fields{also}, got {len(fields)}")
    for value, expected in zip(fields, schema):
        if not isinstance(value, expected) or (expected is int and type(value) is bool):
            raise ProtocolError("bad_fields", f"{msg_type.name} field {value!r:.80} is not {expected}")
    raise ProtocolError("bad_fields", f"{msg_type.name} fields {fields!r:.80} do not match {schema}")


def _explain_items(msg_type: MsgType, items: list[Any]) -> NoReturn:
    """Raise the ProtocolError that says what is wrong with a batch's items (one bad item refuses it all)."""
    if not items or len(items) > MAX_BATCH_ITEMS:
        raise ProtocolError("bad_fields", f"{msg_type.name} with {len(items)} items (1 to {MAX_BATCH_ITEMS})")
    allowed = _ITEM_TYPES[msg_type]
    for item in items:
        if type(item) is not list or tuple(map(type, item)) not in allowed:
            schema = ITEM_SCHEMAS[msg_type]
            raise ProtocolError("bad_fields", f"{msg_type.name} item {item!r:.80} does not match {schema}")
    raise ProtocolError("bad_fields", f"{msg_type.name} items do not match {ITEM_SCHEMAS[msg_type]}")


def decode_routed(frames: list[Any]) -> tuple[MsgType, list[Any], Any]:
    """A message received on a ROUTER, [route, header, body?], as (type, fields, body or None)."""
    if len(frames) == 2:  # the common case: a header alone (every batch)
        msg_type, fields = decode(frames[1])
        if msg_type in WITH_BODY:
            split_body(msg_type, frames[1:])  # raises: says which frame is missing
        return msg_type, fields, None
    if len(frames) < 2:
        raise ProtocolError("bad_frames", "empty message")
    msg_type, fields = decode(frames[1])
    return msg_type, fields, split_body(msg_type, frames[1:])


def split_body(msg_type: MsgType, frames: list[Any]) -> Any:
    """Return the body frame of a decoded message, checking the frame count."""
    if msg_type in WITH_BODY:
        if len(frames) != 2:
            raise ProtocolError("bad_frames", f"{msg_type.name} takes header and body, got {len(frames)} frames")
        return frames[1]
    if len(frames) != 1:
        raise ProtocolError("bad_frames", f"{msg_type.name} takes one frame, got {len(frames)}")
    return None


def encode_tickets(tickets: Any) -> bytes:
    """The body of HELLO and HEARTBEAT: the WORK tickets a node holds (received, DONE not yet sent)."""
    return _pack(list(tickets))


def decode_tickets(body: Any) -> list[int]:
    """Decode and check a held-tickets body; raise ProtocolError on anything off."""
    data = bytes(body)
    value = _unpack(data, max(len(data), 1), limits.MAX_HELD_TICKETS)
    if type(value) is not list or any(type(t) is not int for t in value):
        raise ProtocolError("bad_fields", "held tickets are not an array of integers")
    return value


def pack_frames(frames: list[Any]) -> bytes:
    """Several frames as one payload or result (a msgpack array of bin): a Majordomo body of other than one
    frame crossing zlb (wire/majordomo.py, balancer/majordomo.py)."""
    return _pack([bytes(f) for f in frames])


def unpack_frames(blob: Any) -> list[bytes]:
    """The frames pack_frames packed; ProtocolError if `blob` is not such an array."""
    data = bytes(blob)
    value = _unpack(data, max(len(data), 1), max(len(data), limits.MAX_SMALL_ITEMS))
    if type(value) is not list or any(type(f) is not bytes for f in value):
        raise ProtocolError("malformed", "packed frames are not an array of bin")
    return value


def encode_map(value: dict[str, Any]) -> bytes:
    """Encode a control request or reply, or an event body."""
    return _pack(value)


def decode_map(frame: bytes, limit: int = limits.MAX_CONTROL_BYTES) -> dict[str, Any]:
    """Decode a control request or reply; it must be a map with string keys.

    Requests (the default limit) may hold small containers only; a reply, read
    with a larger limit, may list as many items as its bytes can hold.
    """
    max_items = limits.MAX_SMALL_ITEMS if limit <= limits.MAX_CONTROL_BYTES else max(len(frame), limits.MAX_SMALL_ITEMS)
    value = _unpack(frame, limit, max_items)
    if type(value) is not dict:
        raise ProtocolError("malformed", "control message is not a map")
    return value


def encode_events(events: list[Any]) -> bytes:
    """Encode a batch of event records for the PUB socket."""
    return _pack(events)


def decode_events(frame: bytes) -> list[Any]:
    """Decode a batch of event records published by the balancer.

    One busy loop iteration can publish thousands of events in a batch; no
    container can hold more items than the frame has bytes.
    """
    value = _unpack(frame, limits.DEFAULT_MAX_MESSAGE_BYTES, max(len(frame), limits.MAX_SMALL_ITEMS))
    if type(value) is not list:
        raise ProtocolError("malformed", "event batch is not an array")
    return value


def _buffer(value: Any) -> memoryview:
    """A payload or result held as a zmq.Frame (received without a copy), packed as the bytes it holds."""
    try:
        return memoryview(value)
    except TypeError:
        raise TypeError(f"cannot serialize {type(value).__name__!r}") from None


_record_pack = msgpack.Packer(use_bin_type=True, default=_buffer).pack


def encode_records(records: list[Any]) -> list[bytes]:
    """Journal records (tuples of msgpack-able values, payloads as bytes or zmq.Frame), each as its
    own msgpack byte string."""
    return [_record_pack(record) for record in records]


def decode_records(payloads: list[Any], consume: bool = False) -> list[Any]:
    """Journal record payloads back into values: None for one that is not exactly one msgpack value.

    Frames were checked by CRC before this (balancer/journal_format.py), so a
    None here means a writer bug rather than disk damage; journal records are
    never None, so the caller can count and skip it. `consume`: each payload is
    let go (None in `payloads`) once decoded, so a big journal is not held twice.
    """
    out: list[Any] = []
    for at, payload in enumerate(payloads):
        try:
            out.append(msgpack.unpackb(payload, raw=False, strict_map_key=True))
        except (ValueError, TypeError, msgpack.UnpackException):
            out.append(None)
        if consume:
            payloads[at] = None
    return out
