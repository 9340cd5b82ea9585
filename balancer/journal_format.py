"""The journal's frames: each record behind a sync marker, its length and a CRC32.

    offset 0   4 bytes  marker  C1 5A 4A 01  (0xC1 is never used by msgpack; "ZJ"; frame version 1)
    offset 4   4 bytes  length  of the payload, unsigned little-endian
    offset 8   4 bytes  crc     CRC-32 (zlib) of the payload, unsigned little-endian
    offset 12  length   payload one msgpack record (wire.protocol.encode_records)

Why: with bare msgpack one damaged byte made everything after it unreadable.
A frame is accepted only when its marker, a plausible length and its CRC all
check out; a frame that does not is skipped by searching forward for the next
marker that starts a frame that does, so one damaged record costs that record.
A damaged length is caught by the same check: the CRC is then taken over the
wrong bytes (and a claim past the end of the file or over 1 GiB is refused
before any CRC). Leaving the length out of the CRC saves one crc32 call per
record, the larger part of what framing costs the loop.

What follows the last good frame is a *torn tail* (a crash in the middle of a
write: the start of a frame whose claimed end lies beyond the file) or, when
it does not look like that, damage like any other.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

MARKER = b"\xc1ZJ\x01"
HEAD = struct.Struct("<4sII")
HEAD_BYTES = HEAD.size
# No record comes near this (a message is at most --max-message-bytes, 64 MiB by default);
# a claim beyond it is damage, found without reading that far.
MAX_RECORD_BYTES = 1 << 30


def frame(payloads: list[bytes]) -> bytes:
    """The frames of `payloads`, back to back, ready for one write."""
    pack, crc32 = HEAD.pack, zlib.crc32
    return b"".join([pack(MARKER, len(payload), crc32(payload)) + payload for payload in payloads])


@dataclass
class Scan:
    """What a scan of a journal's bytes found."""

    payloads: list[bytes] = field(default_factory=list)
    end: int = 0  # just past the last good frame
    skipped: list[tuple[int, int]] = field(default_factory=list)  # damaged stretches [start, end)
    frames_lost: int = 0  # an estimate: the frames that began in skipped stretches, at least one each
    torn_bytes: int = 0  # an incomplete last frame

    @property
    def skipped_bytes(self) -> int:
        return sum(end - start for start, end in self.skipped)


def scan(data: bytes) -> Scan:
    """Every good frame's payload in `data`, skipping damage and noting a torn tail."""
    out = Scan()
    payloads, unpack_from, crc32 = out.payloads, HEAD.unpack_from, zlib.crc32
    pos, size = 0, len(data)
    while pos < size:
        # The common case inline (a restart reads every record through here);
        # payloads are bytes copies, not memoryviews, which the GC would have to track.
        if size - pos >= HEAD_BYTES:
            marker, length, crc = unpack_from(data, pos)
            end = pos + HEAD_BYTES + length
            if marker == MARKER and end <= size:
                payload = data[pos + HEAD_BYTES : end]
                if crc32(payload) == crc:
                    payloads.append(payload)
                    pos = out.end = end
                    continue
        following = _next_frame(data, pos + 1)
        if following < 0:
            _tail(data, pos, out)
            break
        _skip(data, pos, following, out)
        pos = following
    return out


def _frame_end(data: bytes, pos: int) -> int:
    """The end of a good frame starting at `pos`, or -1."""
    if not data.startswith(MARKER, pos) or pos + HEAD_BYTES > len(data):
        return -1
    _marker, length, crc = HEAD.unpack_from(data, pos)
    end = pos + HEAD_BYTES + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return -1
    if zlib.crc32(memoryview(data)[pos + HEAD_BYTES : end]) != crc:
        return -1
    return end


def _next_frame(data: bytes, start: int) -> int:
    """The offset of the first good frame at or after `start`, or -1."""
    while True:
        found = data.find(MARKER, start)
        if found < 0 or _frame_end(data, found) > 0:
            return found
        start = found + 1


def _skip(data: bytes, start: int, end: int, out: Scan) -> None:
    out.skipped.append((start, end))
    out.frames_lost += max(1, data.count(MARKER, start, end))


def _tail(data: bytes, pos: int, out: Scan) -> None:
    """Bytes after the last good frame: torn if they are the start of one frame, else damage."""
    if _is_torn(data[pos:]):
        out.torn_bytes = len(data) - pos
    else:
        _skip(data, pos, len(data), out)


def _is_torn(tail: bytes) -> bool:
    if len(tail) < len(MARKER):
        return MARKER.startswith(tail)
    if not tail.startswith(MARKER):
        return False
    if len(tail) < HEAD_BYTES:
        return True
    _marker, length, _crc = HEAD.unpack_from(tail)
    return length <= MAX_RECORD_BYTES and HEAD_BYTES + length > len(tail)
