"""Reading a journal at start: replay it, keep a damaged file aside, restore the scheduler from it.

On start the file is replayed: the last record per (client_id, request_id)
wins; unfinished requests are queued again and finished ones are remembered
(with their results, or as ids past their results: EARLIER), so resubmissions
get their one result or "processed earlier", never a second run. Each
record sits in a checked frame (balancer/journal_format.py), so a damaged
record costs that record only; recover() keeps a damaged file aside before the
rewrite, and the counts of what was lost travel in Recovered to the loop. What
was lost is counted against the synced mark the previous owner left in the
lock file (balancer/journal_lock.py) when it describes this very file: a cut
or damage within the bytes the last fsync covered is counted exactly, never as
"lost 0".
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from balancer import journal_format as jf
from balancer.journal_format import MAGIC, JournalError, fsync_dir
from balancer.records import DEAD_LETTER, EARLIER, RESERVED
from balancer.scheduler import ACCEPTED, FINISHED, Scheduler
from wire import protocol as p

_MAGIC_DECODED = list(MAGIC)  # as msgpack gives it back
# Format 2 (before XXH3 digests) is read too: its SHA-256 digests are negative and still compared, its older
# BLAKE2b ones (not negative) are dropped, as XXH3 ones are not negative either (balancer/kept.py).
_MAGIC_2 = [0, "zlb-journal", 2]
# The unframed format 1 began with this record's bytes: refused with a word of its own.
_FORMAT_1_HEAD = p.encode_records([(0, "zlb-journal", 1)])[0]
_FORMAT_1_HEAD_BYTES = len(_FORMAT_1_HEAD)


@dataclass
class Recovered:
    """What a replay found."""

    pending: list[list[Any]] = field(default_factory=list)  # ACCEPTED records, oldest first
    finished: list[list[Any]] = field(default_factory=list)  # FINISHED and EARLIER records, oldest first
    records: int = 0
    torn_bytes: int = 0  # an incomplete tail cut off (a crash mid-write)
    records_lost: int = 0  # damaged or missing frames (exact against a synced mark, else an estimate),
    # plus good frames that held no valid record
    bytes_skipped: int = 0  # damaged bytes skipped
    bytes_missing: int = 0  # the file ends this much short of its synced mark: it was cut
    kept_as: str = ""  # where the damaged file was kept, by recover()
    reserved: dict[int, int] = field(default_factory=dict)  # RESERVED records: client id -> the highest `beyond`

    @property
    def damaged(self) -> bool:
        return self.records_lost > 0 or self.bytes_skipped > 0 or self.bytes_missing > 0


def replay(path: str, keep_finished: int | None = None, upto: int = -1) -> Recovered:
    """Read a journal file (missing is empty) into the requests it describes; never writes.

    Finished requests beyond the newest `keep_finished` keep their ids, not their results (EARLIER).

    With a synced mark beside it (journal_format.py) for this very file, what the mark counts and the
    scan did not find is lost, exactly, and a file shorter than its mark was cut; else losses are estimated.
    `upto`: only the file's first `upto` bytes (a frame's end; a standby's compaction: balancer/replica_compaction.py),
    without the mark, which counts the whole file.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(upto)
            held = os.fstat(fh.fileno())
    except FileNotFoundError:
        return Recovered()
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None
    mark = read_mark(path) if upto < 0 else None
    if mark is not None and (mark.ino, mark.dev) != (held.st_ino, held.st_dev):
        mark = None  # the mark of another file (an earlier one, or this one is a copy)
    found = jf.scan(data, mark.bytes if mark else -1)
    size, head = len(data), data[:_FORMAT_1_HEAD_BYTES]
    # The file, its frames' copies and their records, held at once, came to 3 x a big journal (1.1 GB for
    # 377 MB): the file goes once scanned, each frame once decoded.
    del data
    records = p.decode_records(found.payloads, consume=True)
    _check_is_journal(path, size, head, found, records)
    latest: dict[tuple[int, int], list[Any]] = {}
    reserved: dict[int, int] = {}
    invalid = 0
    format_2 = False
    for rec in records:
        if _valid(rec):
            if format_2:
                rec = _from_format_2(rec)
            if rec[0] == RESERVED:  # (RESERVED, client_id, beyond): the highest wins
                reserved[rec[1]] = max(rec[2], reserved.get(rec[1], 0))
                continue
            key = (rec[1], rec[2])
            latest.pop(key, None)  # re-inserting keeps dict order = order of last record
            latest[key] = rec
        elif rec == _MAGIC_DECODED or rec == _MAGIC_2:
            format_2 = rec == _MAGIC_2
        else:
            invalid += 1
    out = Recovered(records=len(records), torn_bytes=found.torn_bytes, reserved=reserved)
    out.records_lost, out.bytes_skipped = found.frames_lost + invalid, found.skipped_bytes
    if mark is not None:
        _apply_mark(out, found, mark, size, invalid)
    for rec in latest.values():
        (out.pending if rec[0] in (ACCEPTED, DEAD_LETTER) else out.finished).append(rec)
    if keep_finished is not None:
        # Only results count: ids already past theirs (EARLIER) follow every result in a compacted file,
        # and counted they took the newest results' places (keep_finished=50 and 50 ids kept none).
        results = [at for at, rec in enumerate(out.finished) if rec[0] == FINISHED]
        for at in results[: max(0, len(results) - keep_finished)]:
            out.finished[at] = _without_result(out.finished[at])
    return out


def _from_format_2(rec: list[Any]) -> list[Any]:
    """A record of a format-2 journal without its BLAKE2b digest, if it had one (any payload matches then)."""
    at = 8 if rec[0] == FINISHED else 4 if rec[0] == EARLIER else 0
    if at and len(rec) > at and type(rec[at]) is int and rec[at] >= 0:
        return [*rec[:at], None, *rec[at + 1 :]]
    return rec


def _without_result(rec: list[Any]) -> list[Any]:
    """A FINISHED record as EARLIER: the id, its status and its payload's digest."""
    if rec[0] != FINISHED:
        return rec
    return [EARLIER, rec[1], rec[2], rec[4], rec[8] if len(rec) > 8 else None]


def _apply_mark(out: Recovered, found: jf.Scan, mark: jf.Mark, size: int, invalid: int) -> None:
    """Losses counted against the mark: exact within the synced bytes, estimated beyond them."""
    missing_frames = max(0, mark.records - found.frames_within)
    out.records_lost = missing_frames + found.lost_after + invalid
    if size < mark.bytes:  # cut short: what looked like a torn write lies within synced bytes
        out.bytes_missing = mark.bytes - size
        out.bytes_skipped += out.torn_bytes
        out.torn_bytes = 0
        out.records_lost = max(out.records_lost, 1)


def read_mark(path: str) -> jf.Mark | None:
    """The synced mark kept in the journal's lock file (balancer/journal_lock.py), if there is one."""
    try:
        with open(lock_path(path), "rb") as fh:
            return jf.decode_mark(fh.read(jf.MARK_BYTES))
    except OSError:
        return None


def lock_path(path: str) -> str:
    """The lock file beside a journal: one owner per journal, and the synced mark."""
    return f"{path}.lock"


def _check_is_journal(path: str, size: int, head: bytes, found: jf.Scan, records: list[Any]) -> None:
    """Refuse a file that is not ours, so it is never rewritten; a damaged first frame is still ours.
    `head`: the file's first bytes."""
    if not size:
        return
    starts_well = bool(records) and records[0] in (_MAGIC_DECODED, _MAGIC_2)
    if starts_well or (records and found.skipped and found.skipped[0][0] == 0):
        return
    if head.startswith(_FORMAT_1_HEAD):
        raise JournalError(f"{path} is a zlb journal of the unframed format 1; move it aside to start afresh")
    raise JournalError(f"{path} is not a zlb journal")


def recover(path: str, keep_finished: int | None = None) -> Recovered:
    """replay(), and when the file is damaged keep it as `<path>.damaged-<UTC time>` before it is rewritten."""
    out = replay(path, keep_finished)
    if out.damaged:
        out.kept_as = keep_aside(path)
    return out


def keep_aside(path: str) -> str:
    """A second name for the file as it is now (a hard link, or a copy where links fail)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.damaged-{stamp}"
    suffix = 1
    while os.path.exists(aside):
        aside, suffix = f"{path}.damaged-{stamp}-{suffix}", suffix + 1
    try:
        # A link, not a rename: until the rewrite replaces it, the journal must stay where it is.
        try:
            os.link(path, aside)
        except OSError:
            shutil.copyfile(path, aside)
        fsync_dir(path)
    except OSError as exc:
        raise JournalError(f"cannot keep the damaged journal {path} as {aside}: {exc}") from None
    return aside


def _valid(rec: Any) -> bool:
    """A record of a known kind and length with integer ids (anything else is skipped)."""
    if type(rec) is not list or not rec:
        return False
    # FINISHED 8: before digests were kept; ACCEPTED 8: with a service and a deadline (protocol version 5).
    sizes = {ACCEPTED: (6, 8), FINISHED: (8, 9), EARLIER: (5,), RESERVED: (3,), DEAD_LETTER: (10,)}.get(rec[0], ())
    if len(rec) not in sizes or type(rec[1]) is not int or type(rec[2]) is not int:
        return False
    if rec[0] == ACCEPTED and len(rec) == 8:
        return not p.service_error(rec[6]) and type(rec[7]) in (float, int, type(None))
    if rec[0] == DEAD_LETTER:
        return not p.service_error(rec[6]) and type(rec[7]) is int and type(rec[8]) is str
    return rec[0] != EARLIER or (rec[3] in (p.PROCESSED, p.FAILED) and type(rec[4]) in (int, type(None)))


def restore(sched: Scheduler, recovered: Recovered) -> None:
    """Load replayed requests into a fresh scheduler."""
    for rec in recovered.finished:
        if rec[0] == EARLIER:  # (EARLIER, client_id, request_id, status, payload_digest)
            sched.restore_earlier(*rec[1:])
        else:  # (FINISHED, client_id, request_id, priority, status, server_id, attempts, result[, payload_digest])
            sched.restore_finished(*rec[1:])
    for kind, *rec in recovered.pending:  # (kind, client_id, request_id, priority, route, payload, ...)
        if kind == DEAD_LETTER:
            sched.restore_dead(*rec)
        else:
            sched.restore_pending(*rec)
    for cid, beyond in recovered.reserved.items():
        sched.sessions.reserve(cid, beyond)
