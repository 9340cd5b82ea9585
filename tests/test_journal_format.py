"""Unit tests of the journal's frames: every kind of damage costs at most the frames it touches."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer import journal_format as jf
from wire import protocol as p

RECORDS = [[1, 1, i, 5, b"route", f"payload {i}".encode() * (i + 1)] for i in range(5)]


def framed(records: list = RECORDS) -> bytes:
    return jf.frame(p.encode_records(records))


def spans(records: list = RECORDS) -> list[tuple[int, int]]:
    """Where each record's frame lies in framed(records)."""
    out, pos = [], 0
    for payload in p.encode_records(records):
        out.append((pos, pos + jf.HEAD_BYTES + len(payload)))
        pos = out[-1][1]
    return out


def decoded(data: bytes) -> list:
    return p.decode_records(jf.scan(data).payloads)


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def test_frames_round_trip_and_end_where_the_data_ends():
    """Undamaged frames give back every record, nothing skipped, nothing torn."""
    data = framed()
    found = jf.scan(data)
    assert p.decode_records(found.payloads) == RECORDS
    assert (found.end, found.skipped, found.frames_lost, found.torn_bytes) == (len(data), [], 0, 0)


def test_an_empty_file_holds_nothing():
    """Zero bytes are zero records and no damage."""
    found = jf.scan(b"")
    assert (found.payloads, found.skipped, found.torn_bytes) == ([], [], 0)


def test_the_frame_layout_is_marker_length_crc_payload():
    """The layout docs/RELIABILITY.md describes: marker, then little-endian length and CRC-32 of the payload."""
    payload = p.encode_records([[7]])[0]
    data = jf.frame([payload])
    assert data == b"\xc1ZJ\x01" + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize("part", ["marker", "length", "crc", "body"])
def test_one_flipped_byte_in_any_part_of_a_middle_frame_costs_that_frame_only(part: str):
    """Whichever part of a frame is hit, the frames before and after it survive."""
    start, end = spans()[2]
    at = {"marker": start + 1, "length": start + 5, "crc": start + 9, "body": (start + 12 + end) // 2}[part]
    found = jf.scan(flipped(framed(), at))
    assert p.decode_records(found.payloads) == RECORDS[:2] + RECORDS[3:]
    assert (found.skipped, found.frames_lost, found.torn_bytes) == ([(start, end)], 1, 0)


def test_every_single_byte_flip_anywhere_costs_at_most_one_record():
    """Exhaustive over the whole file: one flipped byte never costs two records."""
    data = framed()
    for at in range(len(data)):
        survivors = decoded(flipped(data, at))
        assert len(survivors) >= len(RECORDS) - 1, at
        assert all(r in RECORDS for r in survivors), at


def test_a_truncated_file_keeps_every_whole_frame_and_calls_the_rest_torn():
    """A cut at any offset (a crash mid-write) keeps the whole frames before it and is not damage."""
    data, ends = framed(), [end for _start, end in spans()]
    for cut in range(len(data)):
        found = jf.scan(data[:cut])
        whole = sum(1 for end in ends if end <= cut)
        assert p.decode_records(found.payloads) == RECORDS[:whole], cut
        assert (found.skipped, found.torn_bytes) == ([], cut - found.end), cut


def test_a_damaged_last_frame_is_damage_not_a_torn_tail():
    """A complete last frame that fails its CRC is reported as damage, so the file is kept."""
    start, end = spans()[-1]
    found = jf.scan(flipped(framed(), end - 1))
    assert (found.skipped, found.frames_lost, found.torn_bytes) == ([(start, end)], 1, 0)


def test_garbage_between_frames_is_skipped_and_costs_no_record():
    """Bytes that are no frame at all, even ones holding a marker, are skipped; every record survives."""
    start, _end = spans()[3]
    data = framed()
    garbage = b"\x00junk" + jf.MARKER + b"\xff\xff" + jf.MARKER + struct.pack("<II", 3, 0) + b"abc"
    found = jf.scan(data[:start] + garbage + data[start:])
    assert p.decode_records(found.payloads) == RECORDS
    assert found.skipped == [(start, start + len(garbage))]


def test_a_marker_inside_a_payload_is_not_taken_for_a_frame():
    """A payload carrying the marker bytes (and a fake header) reads back whole, damaged or not."""
    trap = jf.MARKER + struct.pack("<II", 4, 0) + b"fake"
    records = [*RECORDS[:2], [1, 1, 99, 5, b"route", trap * 3], *RECORDS[2:]]
    data = framed(records)
    assert decoded(data) == records
    start, _end = spans(records)[2]
    survivors = decoded(flipped(data, start + 14))
    assert survivors == records[:2] + records[3:]


@pytest.mark.parametrize("claim", [0xFFFFFFFF, jf.MAX_RECORD_BYTES + 1, 10_000])
def test_a_huge_claimed_length_costs_that_frame_only(claim: int):
    """A length field claiming more than the file holds (or than any record may) is damage in the middle."""
    start, end = spans()[1]
    data = bytearray(framed())
    data[start + 4 : start + 8] = struct.pack("<I", claim)
    found = jf.scan(bytes(data))
    assert p.decode_records(found.payloads) == RECORDS[:1] + RECORDS[2:]
    assert found.skipped == [(start, end)]


def test_an_impossible_length_at_the_end_is_damage_but_a_plausible_one_is_torn():
    """At the tail, a claim beyond any record is damage; a claim just past the end is a torn write."""
    start, _end = spans()[-1]
    data = bytearray(framed())
    data[start + 4 : start + 8] = struct.pack("<I", 0xFFFFFFFF)
    assert jf.scan(bytes(data)).torn_bytes == 0
    assert jf.scan(bytes(data)).frames_lost == 1
    data[start + 4 : start + 8] = struct.pack("<I", 100_000)
    assert jf.scan(bytes(data)).torn_bytes == len(data) - start


def test_a_payload_that_is_not_one_msgpack_value_decodes_to_none():
    """A frame whose CRC holds but whose payload is not msgpack (a writer bug) is flagged, not raised."""
    assert p.decode_records([b"\xc1", b"\x01\x02", p.encode_records([[1]])[0]]) == [None, None, [1]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=80)), min_size=1, max_size=12),
    st.data(),
)
def test_any_flipped_byte_in_any_journal_costs_at_most_one_record(records, data):
    """Whatever the records (payload bytes may hold the marker), one flipped byte loses at most one of them."""
    records = [[rid, payload] for rid, payload in records]
    raw = framed(records)
    at = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(raw)
    damaged[at] ^= 1 << bit
    survivors = decoded(bytes(damaged))
    assert len(survivors) >= len(records) - 1
    assert all(r in records for r in survivors)


def test_a_zeroed_block_is_estimated_from_the_average_frame_not_counted_as_one():
    """4 KiB of zeros hold no marker; the frames they cost are estimated from the size of the frames read."""
    records = [[1, 1, i, 5, b"route", b"payload %05d" % i] for i in range(400)]
    data = bytearray(framed(records))
    start = len(data) // 2
    data[start : start + 4096] = bytes(4096)
    found = jf.scan(bytes(data))
    lost = len(records) - len(found.payloads)
    assert lost > 50
    assert abs(found.frames_lost - lost) <= 2


def test_frames_within_count_the_good_frames_up_to_a_synced_mark():
    """scan(upto=...) counts the good frames that end within the bytes a mark covers, and the losses after it."""
    data, ends = framed(), [end for _start, end in spans()]
    assert jf.scan(data, upto=ends[2]).frames_within == 3
    assert jf.scan(data, upto=ends[2] - 1).frames_within == 2
    assert jf.scan(data).frames_within == 0
    start, _end = spans()[3]
    found = jf.scan(flipped(data, start + 1), upto=ends[1])
    assert (found.frames_within, found.frames_lost, found.lost_after) == (2, 1, 1)


def test_the_synced_mark_reads_back_and_a_damaged_one_reads_as_none():
    """The mark is one fixed-width line; any change to it is caught by its CRC, and no mark is None."""
    mark = jf.Mark(ino=123456, dev=2049, bytes=987654321, records=4242)
    line = jf.encode_mark(mark)
    assert len(line) == jf.MARK_BYTES and line.endswith(b"\n")
    assert jf.decode_mark(line + b'{"pid": 1}\n') == mark
    assert jf.decode_mark(line.replace(b"4242", b"4243")) is None
    assert jf.decode_mark(b" " * 127 + b"\n") is None
    assert jf.decode_mark(b"") is None
