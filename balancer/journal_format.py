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

How many records a damaged stretch held is estimated from its length and the
average frame of what was read (a zeroed 4 KiB block holds no marker, yet
took ~63 records). A cut-off tail cannot be told from a crash by the bytes
alone, so the balancer also keeps a *synced mark* beside the journal (in its
lock file, balancer/journal_lock.py): which file (inode), how many bytes and
frames of it the last fsync covered. A file shorter than its mark was cut;
the frames the mark counts and the scan did not find are lost, exactly.

    zlb-journal-synced ino=<inode> dev=<device> bytes=<n> records=<n> crc=<crc32 of the fields, hex>
    (one line, padded with spaces to MARK_BYTES)
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

# The first record of every journal file. Version 2: every record in a checked frame. Version 3: payload
# digests are XXH3 (not negative) where they were SHA-256 (negative) or, earlier, BLAKE2b (not negative).
MAGIC = (0, "zlb-journal", 3)
MARKER = b"\xc1ZJ\x01"
HEAD = struct.Struct("<4sII")
HEAD_BYTES = HEAD.size
# No record comes near this (a message is at most --max-message-bytes, 64 MiB by default);
# a claim beyond it is damage, found without reading that far.
MAX_RECORD_BYTES = 1 << 30


class JournalError(OSError):
    """A journal file that cannot be opened, read or written."""


def remove_quietly(path: str) -> None:
    """Remove a half-written or abandoned file if it is there; a failure to is not worth the caller's error."""
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    """Make a rename or a new link in `path`'s directory reach the disk, or a power loss could undo it."""
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write comes on a full disk or a signal)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written} with {len(view)} bytes left")
        view = view[written:]


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
    frames_lost: int = 0  # an estimate: the frames the skipped stretches held, at least one each
    torn_bytes: int = 0  # an incomplete last frame
    frames_within: int = 0  # good frames that end at or before scan()'s `upto`
    lost_after: int = 0  # of frames_lost, those in stretches that start at or after `upto`

    @property
    def skipped_bytes(self) -> int:
        return sum(end - start for start, end in self.skipped)


def scan(data: bytes, upto: int = -1) -> Scan:
    """Every good frame's payload in `data`, skipping damage and noting a torn tail.

    `upto`: a synced mark's byte count; the good frames ending within it are counted in frames_within.
    """
    out = Scan()
    payloads, unpack_from, crc32 = out.payloads, HEAD.unpack_from, zlib.crc32
    pos, size, within = 0, len(data), 0
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
                    if end <= upto:
                        within += 1
                    continue
        following = _next_frame(data, pos + 1)
        if following < 0:
            _tail(data, pos, out)
            break
        out.skipped.append((pos, following))
        pos = following
    out.frames_within = within
    if out.skipped:
        _estimate_lost(data, out, upto)
    return out


def _estimate_lost(data: bytes, out: Scan, upto: int) -> None:
    """Frames each skipped stretch held: its markers, or its length over the average good frame, at least 1."""
    good = len(out.payloads)
    average = (sum(map(len, out.payloads)) / good + HEAD_BYTES) if good else HEAD_BYTES + 64.0
    for start, end in out.skipped:
        lost = max(1, data.count(MARKER, start, end), round((end - start) / average))
        out.frames_lost += lost
        if 0 <= upto <= start:
            out.lost_after += lost


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


def _tail(data: bytes, pos: int, out: Scan) -> None:
    """Bytes after the last good frame: torn if they are the start of one frame, else damage."""
    if _is_torn(data[pos:]):
        out.torn_bytes = len(data) - pos
    else:
        out.skipped.append((pos, len(data)))


def _is_torn(tail: bytes) -> bool:
    if len(tail) < len(MARKER):
        return MARKER.startswith(tail)
    if not tail.startswith(MARKER):
        return False
    if len(tail) < HEAD_BYTES:
        return True
    _marker, length, _crc = HEAD.unpack_from(tail)
    return length <= MAX_RECORD_BYTES and HEAD_BYTES + length > len(tail)


# ---- the synced mark ----------------------------------------------------------------------------

MARK_BYTES = 128
_MARK_PREFIX = "zlb-journal-synced"


class Mark(NamedTuple):
    """How much of which journal file the last fsync covered."""

    ino: int
    dev: int
    bytes: int
    records: int  # frames in those bytes, the magic record's included


def encode_mark(mark: Mark) -> bytes:
    """The mark as one fixed-width line (rewritten in place, so always the same length)."""
    fields = f"ino={mark.ino} dev={mark.dev} bytes={mark.bytes} records={mark.records}"
    line = f"{_MARK_PREFIX} {fields} crc={zlib.crc32(fields.encode()):08x}"
    return line.encode().ljust(MARK_BYTES - 1) + b"\n"


def decode_mark(data: bytes) -> Mark | None:
    """The mark at the start of `data`, or None when there is none or it does not check out."""
    words = data[:MARK_BYTES].decode("ascii", "replace").split()
    if len(words) != 6 or words[0] != _MARK_PREFIX:
        return None
    fields, crc = " ".join(words[1:5]), words[5]
    if crc != f"crc={zlib.crc32(fields.encode()):08x}":
        return None
    try:
        values = dict(word.split("=", 1) for word in words[1:5])
        return Mark(*(int(values[name]) for name in Mark._fields))
    except (KeyError, ValueError):
        return None
