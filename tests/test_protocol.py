"""The wire protocol: round trips, and every kind of bad header rejected with a ProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import endpoints, limits
from wire import protocol as p
from wire.batching import batches, grouped, lone
from wire.protocol import MsgType, ProtocolError

V = p.PROTOCOL_VERSION


def test_round_trip_of_every_message_type():
    """What encode writes, decode reads back with the same type and fields."""
    samples = {
        MsgType.SUBMIT: (0, 101, 1, 2**64 - 1),
        MsgType.RESULT: (101, "processed", 2, 1, False),
        MsgType.REJECTED: (None, "queue full"),
        MsgType.CLIENT_HELLO: (5, 2**63, 4321, "host"),
        MsgType.CLIENT_WELCOME: (10_000, 64 * 1024 * 1024, 2048, 100 * 1024 * 1024, 0),
        MsgType.CREDIT: (1024, None, 16 * 1024 * 1024),
        MsgType.CLIENT_PING: (5, 7, 0),
        MsgType.CLIENT_BYE: (5, 7),
        MsgType.CLIENT_CANCEL: (5, 7, 101),
        MsgType.CANCEL: (7, "cancelled"),
        MsgType.REFUSED: ("server id 1 is in use", 77, "host"),
        MsgType.FENCED: ("server id 1 was taken over",),
        MsgType.HELLO: (None, 4, 1234, "host", 12345, 0),
        MsgType.WELCOME: (3, 500, 3, 64 * 1024 * 1024),
        MsgType.HEARTBEAT: (2, 10, 0, 12345),
        MsgType.PING: (),
        MsgType.WORK: (7, 0, 101, 1, 1),
        MsgType.DONE: (7, True),
        MsgType.BYE: (),
        MsgType.RECONNECT: ("unknown node",),
        MsgType.LEAVING: (),
        MsgType.SUBMIT_BATCH: (5, 7, [[101, 1, b"a"], [102, 9, b""]]),
        MsgType.RESULT_BATCH: ([[101, "processed", 2, 1, False, b"r"], [102, "failed", None, 3, True, b""]],),
        MsgType.WORK_BATCH: ([[7, 0, 101, 1, 1, b"a"]],),
        MsgType.DONE_BATCH: ([[7, True, b"r"], [8, False, b"boom"]],),
        MsgType.REDIRECT: ("tcp://127.0.0.1:5555", "standby"),
        MsgType.FOLLOW: ("tcp://127.0.0.1:5559",),
        MsgType.SNAPSHOT: (12, 3, 500),
        MsgType.RECORDS: (13, 2),
        MsgType.APPLIED: (13,),
    }
    assert set(samples) == set(MsgType)
    for msg_type, fields in samples.items():
        assert p.decode(p.encode(msg_type, *fields)) == (msg_type, list(fields))
    assert p.decode(p.encode(MsgType.REDIRECT, None, "no leader")) == (MsgType.REDIRECT, [None, "no leader"])


def test_optional_tails_of_version_5():
    """SUBMIT and SUBMIT_BATCH may end in [service, deadline_ms] and HELLO in its services; all or none."""
    tails = {
        MsgType.SUBMIT: ((0, 101, 1, 7, "resize", 500), (0, 101, 1, 7, None, None)),
        MsgType.SUBMIT_BATCH: ((5, 7, [[101, 1, b"a"]], "thumb", None), (5, 7, [[101, 1, b"a"]], None, 250)),
        MsgType.HELLO: ((None, 4, 1234, "host", 12345, 0, ["resize", "default"]),),
    }
    for msg_type, samples in tails.items():
        for fields in samples:
            assert p.decode(p.encode(msg_type, *fields)) == (msg_type, list(fields))
    with pytest.raises(ProtocolError, match=r"SUBMIT takes 4 fields \(or 6\), got 5"):
        p.decode(p.encode(MsgType.SUBMIT, 0, 101, 1, 7, "resize"))
    with pytest.raises(ProtocolError, match="is not"):
        p.decode(p.encode(MsgType.SUBMIT_BATCH, 5, 7, [[101, 1, b"a"]], 3, None))
    big = [[i, 1, b"x" * 64] for i in range(100)]  # over MAX_HEADER_BYTES: recognised by its first bytes
    assert p.decode(p.encode(MsgType.SUBMIT_BATCH, 5, 7, big, "thumb", 9))[1][3:] == ["thumb", 9]


def test_service_names_are_bounded_and_plain():
    """1 to 64 of A-Z a-z 0-9 . _ : -; anything else says what a name may be."""
    for good in ("default", "resize", "a", "img.v2:thumb-small_1", "x" * 64):
        assert p.service_error(good) == ""
    for bad in ("", "x" * 65, "has space", "ünï", "new\nline", None, 3):
        assert "is not 1 to 64 characters" in p.service_error(bad)
    assert "reserved" in p.service_error("mmi.service")  # RFC 8's broker services are never queued


def test_every_header_carries_the_senders_epoch():
    """A leading balancer stamps its epoch on everything it sends; the default is 0 (no HA)."""
    assert p.decode_with_epoch(p.encode(MsgType.PING)) == (MsgType.PING, 0, [])
    p.set_epoch(2**40 + 7)
    try:
        frame = p.encode(MsgType.WORK_BATCH, [[7, 0, 101, 1, 1, b"a"]])
        assert p.decode_with_epoch(frame) == (MsgType.WORK_BATCH, 2**40 + 7, [[[7, 0, 101, 1, 1, b"a"]]])
        assert p.decode(frame) == (MsgType.WORK_BATCH, [[[7, 0, 101, 1, 1, b"a"]]])
    finally:
        p.set_epoch(0)
    with pytest.raises(ProtocolError, match="epoch"):
        p.decode(msgpack.packb([V, int(MsgType.PING), "one"]))


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"\xc1", "malformed"),
        (b"", "malformed"),
        (msgpack.packb({"a": 1}), "malformed"),
        (msgpack.packb([1]), "malformed"),
        (msgpack.packb([9, 1, 0, 1, 1]), "bad_version"),
        (msgpack.packb([True, 1, 0, 1, 1]), "bad_version"),
        (msgpack.packb([V, 99]), "unknown_type"),
        (msgpack.packb([V, "SUBMIT", 0, 1, 1]), "unknown_type"),
        (msgpack.packb([V, 1, 0, 1]), "bad_fields"),
        (msgpack.packb([V, 1, 0, "101", 1]), "bad_fields"),
        (msgpack.packb([V, 1, 0, True, 1]), "bad_fields"),
        (msgpack.packb([V, 15, 7, 1]), "bad_fields"),
        (b"\x91" * 5000, "too_large"),
        (msgpack.packb([V, 1, 0, 1, 1])[:-1], "malformed"),
        (b"\xdd\xff\xff\xff\xff", "malformed"),
    ],
)
def test_bad_headers_are_protocol_errors_of_the_right_kind(frame, kind):
    """Garbage, truncation, huge claimed lengths, wrong versions, types and fields each raise their kind."""
    with pytest.raises(ProtocolError) as info:
        p.decode(frame)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    "items",
    [
        [],  # a batch of nothing
        [[101, 1]],  # an item one field short
        [[101, 1, "text"]],  # a payload that is not bytes
        [[101, True, b"a"]],  # a bool where an int goes
        [[101, 1, b"a"], 5],  # an item that is not an array
        [[101, 1, b"a"]] * (limits.MAX_BATCH_ITEMS + 1),  # more items than any sender may put in one batch
    ],
)
def test_a_batch_with_one_bad_item_is_refused_whole(items):
    """A batch is checked item by item; any bad item makes the whole message a ProtocolError."""
    with pytest.raises(ProtocolError):
        p.decode(p.encode(MsgType.SUBMIT_BATCH, 5, 7, items))


def test_only_batches_may_exceed_the_header_limit():
    """A 2 MiB SUBMIT_BATCH decodes; a header of another type over MAX_HEADER_BYTES is too_large."""
    big = [[i, 1, b"x" * 4096] for i in range(512)]
    msg_type, fields = p.decode(p.encode(MsgType.SUBMIT_BATCH, 5, 7, big))
    assert msg_type is MsgType.SUBMIT_BATCH and len(fields[2]) == 512
    with pytest.raises(ProtocolError, match="too_large"):
        p.decode(p.encode(MsgType.REJECTED, 1, "x" * (limits.MAX_HEADER_BYTES + 1)))


def test_batches_close_at_the_item_and_byte_limits():
    """batches() keeps order, closes a batch at BATCH_ITEMS or BATCH_BYTES, and sends an item over
    LONE_PAYLOAD_BYTES alone, which lone() tells its sender to send in the single form."""
    small = list(range(limits.BATCH_ITEMS * 2 + 3))
    split = batches(small, lambda _i: 1)
    assert [len(b) for b in split] == [limits.BATCH_ITEMS, limits.BATCH_ITEMS, 3]
    assert [i for b in split for i in b] == small
    lone_max = limits.LONE_PAYLOAD_BYTES
    sizes = {0: 10, 1: lone_max + 1, 2: lone_max, 3: lone_max, 4: 1}
    assert batches(list(sizes), sizes.__getitem__) == [[0], [1], [2, 3, 4]]
    assert [lone(b, sizes.__getitem__) for b in batches(list(sizes), sizes.__getitem__)] == [False, True, False]
    per_batch = limits.BATCH_BYTES // lone_max
    split = batches(list(range(per_batch + 8)), lambda _i: lone_max)
    assert [len(b) for b in split] == [per_batch, 8]
    assert batches([7], lambda _i: 0) == [[7]] and not lone([7, 8], lambda _i: lone_max + 1)
    assert batches([1, 2], lambda _i: lone_max + 1) == [[1], [2]]  # no empty batch after a lone last item


def test_deeply_nested_header_is_rejected():
    """A header nested thousands deep is refused without a crash."""
    nested = b"\x91" * 3000 + b"\x00"
    with pytest.raises(ProtocolError):
        p.decode(nested)


def test_body_frame_count_is_checked():
    """Messages with a body need exactly two frames; others exactly one."""
    assert p.split_body(MsgType.SUBMIT, [b"h", b"body"]) == b"body"
    assert p.split_body(MsgType.PING, [b"h"]) is None
    with pytest.raises(ProtocolError, match="bad_frames"):
        p.split_body(MsgType.SUBMIT, [b"h"])
    with pytest.raises(ProtocolError, match="bad_frames"):
        p.split_body(MsgType.PING, [b"h", b"extra"])


def test_control_maps_must_be_maps_with_string_keys():
    """Control messages decode to dicts; lists and non-string keys are refused."""
    assert p.decode_map(p.encode_map({"cmd": "ping"})) == {"cmd": "ping"}
    with pytest.raises(ProtocolError):
        p.decode_map(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError):
        p.decode_map(msgpack.packb({1: 2}))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(frame):
    """No byte string makes decode raise anything but ProtocolError."""
    try:
        msg_type, fields = p.decode(frame)
    except ProtocolError as exc:
        assert exc.kind in {"malformed", "bad_version", "unknown_type", "bad_fields", "too_large"}
    else:
        assert len(fields) == len(p.SCHEMAS[msg_type])


def test_endpoint_reads_environment(monkeypatch):
    """ZLB_* variables override the default endpoints."""
    monkeypatch.setenv("ZLB_BACKEND", "tcp://127.0.0.1:7000")
    assert endpoints.endpoint("backend") == "tcp://127.0.0.1:7000"
    monkeypatch.delenv("ZLB_FRONTEND", raising=False)
    assert endpoints.endpoint("frontend") == endpoints.DEFAULT_FRONTEND


def test_large_event_batches_and_replies_decode():
    """A batch of thousands of events and a reply listing thousands of items are not refused."""
    batch = [1.0, [["request.added", 0, i, 5] for i in range(5000)]]
    assert p.decode_events(p.encode_events(batch))[1][4999] == ["request.added", 0, 4999, 5]
    reply = {"ok": True, "result": [{"request_id": i} for i in range(3000)]}
    assert len(p.decode_map(p.encode_map(reply), limit=limits.DEFAULT_MAX_MESSAGE_BYTES)["result"]) == 3000
    with pytest.raises(ProtocolError):
        p.decode_map(p.encode_map({"cmd": "x", "items": list(range(3000))}))


def test_held_tickets_round_trip_and_garbage_is_a_protocol_error():
    """HELLO and HEARTBEAT bodies list held tickets; anything but an array of ints is refused."""
    assert p.decode_tickets(p.encode_tickets({2**60: None, 7: None})) == [2**60, 7]
    assert p.decode_tickets(p.encode_tickets([])) == []
    for bad in (b"", b"\xc1", p.encode_map({"a": 1}), p.encode_tickets(["x"]), p.encode_tickets([1.5])):
        with pytest.raises(ProtocolError):
            p.decode_tickets(bad)


def test_events_parse_into_named_records_and_unknown_shapes_into_none():
    """Consumers read events by field name; another version's kind or arity is None, never a crash."""
    from wire import events as ev

    record = ev.parse([12.5, ev.REQUEST_ASSIGNED, 3, 101, 2, 1])
    assert (record.kind, record.ts, record.client_id, record.request_id, record.server_id, record.attempt) == (
        ev.REQUEST_ASSIGNED, 12.5, 3, 101, 2, 1,
    )  # fmt: skip
    assert set(ev.RECORDS) == set(ev.FIELDS)
    assert ev.parse([1.0, ev.REQUEST_ASSIGNED, 3]) is None
    assert ev.parse([1.0, "request.from_the_future", 1, 2]) is None
    assert ev.parse([1.0]) is None


def test_grouped_keeps_arrival_order_within_each_group():
    """grouped() collects items by key, first-seen keys first, each group in the order items came."""
    items = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)]
    assert grouped(items, lambda i: i[0]) == {"b": [("b", 1), ("b", 3)], "a": [("a", 2), ("a", 5)], "c": [("c", 4)]}
    assert list(grouped(items, lambda i: i[0])) == ["b", "a", "c"] and grouped([], len) == {}
