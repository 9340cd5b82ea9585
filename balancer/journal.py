"""The balancer's journal: an append-only msgpack log of accepted and finished requests.

Why this shape (docs/RELIABILITY.md has the measurements): the loop packs the
records of one iteration and appends them with a single os.write() before it
sends that iteration's results, so a result a client has seen is always in
the operating system's hands and survives `kill -9` of the balancer. A helper
thread fsyncs at most every `fsync_interval_s` (group commit), which bounds
what a power loss can take without putting a disk flush on the message path.

Records are the scheduler's tuples (see scheduler.ACCEPTED, FINISHED and EARLIER).
On start the file is replayed: the last record per (client_id, request_id) wins;
unfinished requests are queued again and finished ones are remembered (with
their results, or as ids past their results: EARLIER), so resubmissions get
their one result or "processed earlier", never a second run. The file is then
rewritten to just that (compaction), and again whenever it has grown to a few
times the live state, so it stays bounded.

Each record sits in a checked frame (balancer/journal_format.py), so a damaged
record costs that record only; recover() keeps a damaged file aside before the
rewrite, and the counts of what was lost travel in Recovered to the loop.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from balancer import journal_format as jf
from balancer.records import EARLIER
from balancer.scheduler import ACCEPTED, FINISHED, Scheduler
from wire import protocol as p

# Version 2: every record in a checked frame (balancer/journal_format.py).
MAGIC = (0, "zlb-journal", 2)
_MAGIC_DECODED = list(MAGIC)  # as msgpack gives it back
DEFAULT_FSYNC_INTERVAL_S = 0.05
# Compact once this many records were appended beyond twice the live state.
COMPACT_SLACK_RECORDS = 50_000


class JournalError(OSError):
    """A journal file that cannot be opened, read or written."""


@dataclass
class Recovered:
    """What a replay found."""

    pending: list[list[Any]] = field(default_factory=list)  # ACCEPTED records, oldest first
    finished: list[list[Any]] = field(default_factory=list)  # FINISHED and EARLIER records, oldest first
    records: int = 0
    torn_bytes: int = 0  # an incomplete tail cut off (a crash mid-write)
    records_lost: int = 0  # damaged frames skipped (an estimate) plus good frames that held no valid record
    bytes_skipped: int = 0  # damaged bytes skipped
    kept_as: str = ""  # where the damaged file was kept, by recover()

    @property
    def damaged(self) -> bool:
        return self.records_lost > 0 or self.bytes_skipped > 0


def replay(path: str, keep_finished: int | None = None) -> Recovered:
    """Read a journal file (missing is empty) into the requests it describes; never writes.

    Finished requests beyond the newest `keep_finished` keep their ids, not their results (EARLIER).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Recovered()
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None
    found = jf.scan(data)
    records = p.decode_records(found.payloads)
    _check_is_journal(path, data, found, records)
    latest: dict[tuple[int, int], list[Any]] = {}
    invalid = 0
    for rec in records:
        if _valid(rec):
            key = (rec[1], rec[2])
            latest.pop(key, None)  # re-inserting keeps dict order = order of last record
            latest[key] = rec
        elif rec != _MAGIC_DECODED:
            invalid += 1
    out = Recovered(records=len(records), torn_bytes=found.torn_bytes)
    out.records_lost, out.bytes_skipped = found.frames_lost + invalid, found.skipped_bytes
    for rec in latest.values():
        (out.pending if rec[0] == ACCEPTED else out.finished).append(rec)
    if keep_finished is not None and len(out.finished) > keep_finished:
        beyond = len(out.finished) - keep_finished
        out.finished[:beyond] = [_without_result(rec) for rec in out.finished[:beyond]]
    return out


def _without_result(rec: list[Any]) -> list[Any]:
    """A FINISHED record as EARLIER: the id, its status and its payload's digest."""
    if rec[0] != FINISHED:
        return rec
    return [EARLIER, rec[1], rec[2], rec[4], rec[8] if len(rec) > 8 else None]


def _check_is_journal(path: str, data: bytes, found: jf.Scan, records: list[Any]) -> None:
    """Refuse a file that is not ours, so it is never rewritten; a damaged first frame is still ours."""
    if not data:
        return
    starts_well = bool(records) and records[0] == _MAGIC_DECODED
    if starts_well or (records and found.skipped and found.skipped[0][0] == 0):
        return
    if data.startswith(p.encode_records([(0, "zlb-journal", 1)])[0]):
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
        _fsync_dir(path)
    except OSError as exc:
        raise JournalError(f"cannot keep the damaged journal {path} as {aside}: {exc}") from None
    return aside


def _valid(rec: Any) -> bool:
    """A record of a known kind and length with integer ids (anything else is skipped)."""
    if type(rec) is not list or not rec:
        return False
    sizes = {ACCEPTED: (6,), FINISHED: (8, 9), EARLIER: (5,)}.get(rec[0], ())  # FINISHED 8: before digests were kept
    if len(rec) not in sizes or type(rec[1]) is not int or type(rec[2]) is not int:
        return False
    return rec[0] != EARLIER or (rec[3] in (p.PROCESSED, p.FAILED) and type(rec[4]) in (int, type(None)))


def restore(sched: Scheduler, recovered: Recovered) -> None:
    """Load replayed requests into a fresh scheduler."""
    for rec in recovered.finished:
        if rec[0] == EARLIER:  # (EARLIER, client_id, request_id, status, payload_digest)
            sched.restore_earlier(*rec[1:])
        else:  # (FINISHED, client_id, request_id, priority, status, server_id, attempts, result[, payload_digest])
            sched.restore_finished(*rec[1:])
    for _kind, cid, rid, priority, route, payload in recovered.pending:
        sched.restore_pending(cid, rid, priority, route, payload)


def snapshot(sched: Scheduler) -> list[tuple[Any, ...]]:
    """The records that describe the scheduler's remembered requests now."""
    out: list[tuple[Any, ...]] = []
    for req in sched.requests():
        if req.status in (p.PROCESSED, p.FAILED):
            out.append(
                (
                    FINISHED,
                    req.client_id,
                    req.request_id,
                    req.priority,
                    req.status,
                    req.server_id,
                    req.attempts,
                    req.body,
                    req.payload_digest,
                )
            )
        else:
            out.append((ACCEPTED, req.client_id, req.request_id, req.priority, req.route, req.body))
    out.extend((EARLIER, *held) for held in sched.kept.ids)
    return out


class Journal:
    """An open journal file: the loop appends, a helper thread fsyncs.

    A failed fsync cannot be retried safely (the kernel may have dropped the
    dirty pages and reports the error once), so the helper thread records it
    in `failure` and stops; the next append() or check() raises it and the
    balancer stops rather than answer clients from a journal it cannot keep.
    """

    def __init__(self, path: str, fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        self.appended = 0
        self.bytes_written = 0
        self.compactions = 0
        self.failure: JournalError | None = None  # set once by the fsync thread, read by the loop
        self._since_compact = 0
        self._fd = -1
        self.rewrite_fd = -1  # the new file of an incremental compaction (balancer/compaction.py)
        self._dirty: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None

    def open(self, records: list[tuple[Any, ...]]) -> None:
        """Start the file afresh with `records` (the replayed state) and the fsync thread."""
        self._rewrite(records)
        self._syncer = threading.Thread(target=self._sync_loop, name="zlb-journal-fsync", daemon=True)
        self._syncer.start()

    def check(self) -> None:
        """Raise the fsync thread's failure, if it had one (cheap: one attribute test)."""
        if self.failure is not None:
            raise self.failure

    def append(self, records: list[tuple[Any, ...]]) -> None:
        """Append one iteration's records with one write (the fsync follows within the interval)."""
        if self.failure is not None:
            raise self.failure
        data = jf.frame(p.encode_records(records))
        try:
            _write_all(self._fd, data)
            if self.rewrite_fd >= 0:
                _write_all(self.rewrite_fd, data)  # a compaction under way sees every change after its copy
        except OSError as exc:
            # Part of the batch may be in the file: refuse further appends, and let close() skip the fsync
            # so it cannot raise a second error over this one on the way out.
            self.failure = JournalError(f"cannot append to journal {self.path}: {exc}")
            raise self.failure from None
        self.appended += len(records)
        self.bytes_written += len(data)
        self._since_compact += len(records)
        self._dirty.put(True)

    def due_for_compaction(self, live_records: int) -> bool:
        """True when the file holds far more records than the state it describes."""
        return self._since_compact > 2 * live_records + COMPACT_SLACK_RECORDS

    def start_rewrite(self) -> None:
        """Open the new file of an incremental compaction and write its first record."""
        self.check()
        try:
            self.rewrite_fd = os.open(f"{self.path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        self.write_rewrite([MAGIC])
        self._since_compact = 0  # appends from here on are in the new file too

    def write_rewrite(self, records: list[tuple[Any, ...]]) -> None:
        """One slice of the live state into the new file."""
        try:
            _write_all(self.rewrite_fd, jf.frame(p.encode_records(records)))
        except OSError as exc:
            self.end_rewrite(exc)

    def end_rewrite(self, failure: BaseException | None) -> None:
        """The new file is on disk (or failed): rename it over the journal, or remove it and raise."""
        tmp, fd, self.rewrite_fd = f"{self.path}.tmp", self.rewrite_fd, -1
        try:
            if failure is not None:
                raise failure
            old = os.dup(self._fd)  # the replaced file's last reference, dropped off the loop below
            os.replace(tmp, self.path)
            os.dup2(fd, self._fd)  # same descriptor number for the fsync thread, now on the new file
            # Freeing a large replaced file's blocks takes the kernel 100+ ms at 1 GiB: let a thread wait.
            threading.Thread(target=os.close, args=(old,), name="zlb-journal-release", daemon=True).start()
            _fsync_dir(self.path)
        except OSError as exc:
            _remove_quietly(tmp)  # a full disk should not stay fuller for a half-written copy
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        finally:
            os.close(fd)
        self.compactions += 1

    def _rewrite(self, records: list[tuple[Any, ...]]) -> None:
        """Write `records` to a new file, fsync it, rename it over the journal, fsync the directory."""
        tmp = f"{self.path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                _write_all(fd, jf.frame(p.encode_records([MAGIC, *records])))
                os.fsync(fd)
                os.replace(tmp, self.path)
                if self._fd < 0:
                    self._fd = os.dup(fd)
                else:
                    # Same descriptor number for the fsync thread, now on the new file.
                    os.dup2(fd, self._fd)
            finally:
                os.close(fd)
            _fsync_dir(self.path)
        except OSError as exc:
            _remove_quietly(tmp)  # a full disk should not stay fuller for a half-written copy
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        self._since_compact = 0

    def _sync_loop(self) -> None:
        """Group commit: one fsync for everything appended since the last one."""
        while True:
            more = self._dirty.get()
            while not self._dirty.empty():
                more = self._dirty.get_nowait() and more
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failure = JournalError(f"cannot fsync journal {self.path}: {exc}")
                return
            if not more:
                return
            time.sleep(self.fsync_interval_s)  # wait-ok: the group-commit window, not a synchronisation

    def close(self) -> None:
        """Flush everything to disk and close the file; raise if that failed."""
        if self._fd < 0:
            return
        if self.rewrite_fd >= 0:  # a compaction under way: the journal itself is whole, drop the copy
            os.close(self.rewrite_fd)
            self.rewrite_fd = -1
            _remove_quietly(f"{self.path}.tmp")
        if self._syncer is not None:
            self._dirty.put(False)
            self._syncer.join(5)
        try:
            if self.failure is None:
                os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot fsync journal {self.path}: {exc}") from None
        finally:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write comes on a full disk or a signal)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written} with {len(view)} bytes left")
        view = view[written:]


def _fsync_dir(path: str) -> None:
    # A rename or a new link must itself reach the disk, or a power loss could undo it.
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
