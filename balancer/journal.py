"""The balancer's journal: an append-only msgpack log of accepted and finished requests.

Why this shape (docs/RELIABILITY.md has the measurements): the loop packs the
records of one iteration and appends them with a single os.write() before it
sends that iteration's results, so a result a client has seen is always in
the operating system's hands and survives `kill -9` of the balancer. A helper
thread fsyncs at most every `fsync_interval_s` (group commit), which bounds
what a power loss can take without putting a disk flush on the message path.

Records are the scheduler's tuples (see scheduler.ACCEPTED, FINISHED and EARLIER: an id kept
past its result, balancer/kept.py), each
in a checked frame (balancer/journal_format.py). On start the file is replayed
(balancer/journal_replay.py) and then rewritten to just the state it describes
(compaction), and again whenever it has grown to a few times the live state
(balancer/compaction.py), so it stays bounded. The fsync thread also notes what
each fsync covered (`synced`), which the journal's owner keeps beside it as the
synced mark (balancer/journal_keeper.py, journal_lock.py): a later start tells
a journal cut short from a crash by it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from balancer import journal_format as jf
from balancer.compaction import record_of
from balancer.journal_format import MAGIC, JournalError, fsync_dir
from balancer.journal_replay import Recovered, keep_aside, lock_path, read_mark, recover, replay, restore
from balancer.records import EARLIER, RESERVED
from balancer.scheduler import Scheduler
from wire import protocol as p

# Reading at start lives in balancer/journal_replay.py; its names are the journal's too.
__all__ = [
    "MAGIC", "Journal", "JournalError", "Recovered", "keep_aside", "lock_path", "read_mark", "recover", "replay",
    "restore", "snapshot",
]  # fmt: skip
DEFAULT_FSYNC_INTERVAL_S = 0.05
# Compact once this many records were appended beyond twice the live state.
COMPACT_SLACK_RECORDS = 50_000
# Or once the file grew this many bytes beyond twice its size after the last compaction (or start): an ACCEPTED
# holds its payload and a FINISHED its result, so at 1 MiB requests the records' rule alone let the file reach
# ~100 GB between compactions (300 requests made 600 MiB, and nothing was compacted).
COMPACT_SLACK_BYTES = 256 * 1024 * 1024


def snapshot(sched: Scheduler) -> list[tuple[Any, ...]]:
    """The records that describe the scheduler's remembered requests now, the ids kept past their results and
    the request id reservations. Results come in the order they finished, as replay reads them (not in the
    order their requests arrived): a restart keeps the newest."""
    out = [record_of(req, sched) for req in sched.requests() if req.status not in p.FINAL_STATUSES]
    out.extend(record_of(req, sched) for req in sched.kept)
    out.extend((EARLIER, *held) for held in sched.kept.ids)
    out.extend((RESERVED, *reserved) for reserved in sched.sessions.reserved.items())
    return out


class Journal:
    """An open journal file: the loop appends, a helper thread fsyncs.

    A failed write or fsync is kept in `failure` and raised by the next append() or check(); a
    failed fsync cannot be retried safely (the kernel may have dropped the dirty pages and reports
    the error once), so the helper thread stops. problem() also looks at the file itself, once per
    tick: deleted, replaced, its directory gone or unwritable. After any of these the journal's
    owner (balancer/journal_keeper.py) writes nothing more to it and, once it can, reopen()s it: a
    fresh file with the whole state, as open() writes one.
    """

    def __init__(self, path: str, fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        self.appended = 0
        self.bytes_written = 0
        self.compactions = 0
        self.failure: JournalError | None = None  # set by the fsync thread or a failed write, read by the loop
        self.synced: jf.Mark | None = None  # what the last fsync covered, set by the fsync thread
        self._since_compact = 0
        self._fd = -1
        # The current file: (inode, device), and the bytes and frames in it, for the synced mark.
        self._ident = (0, 0)
        self._size = self._frames = 0
        self._base_size = 0  # the file's size when it was last written afresh (start, compaction, recovery)
        self.rewrite_fd = -1  # the new file of an incremental compaction (balancer/compaction.py)
        self._rewrite_size = self._rewrite_frames = 0
        # (inode, device, bytes, frames) of what was appended, for the fsync thread; None stops it.
        self._dirty: queue.SimpleQueue[tuple[int, int, int, int] | None] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None

    def open(self, records: list[tuple[Any, ...]]) -> None:
        """Start the file afresh with `records` (the replayed state) and the fsync thread."""
        self._rewrite(records)
        self._start_syncer()
        self._dirty.put(self._sync_item())  # the new file's mark

    def reopen(self, records: list[tuple[Any, ...]]) -> None:
        """After a failure: a fresh file holding `records` (the state now); raises JournalError if not yet."""
        self.abandon_rewrite()
        self._rewrite(records)
        self.failure = None
        if self._syncer is None or not self._syncer.is_alive():  # it stops after a failed fsync
            self._start_syncer()
        self._dirty.put(self._sync_item())  # the new file's mark

    def _start_syncer(self) -> None:
        self._syncer = threading.Thread(target=self._sync_loop, name="zlb-journal-fsync", daemon=True)
        self._syncer.start()

    def check(self) -> None:
        """Raise the failure of a write or of the fsync thread, if there was one (cheap: one attribute test)."""
        if self.failure is not None:
            raise self.failure

    def problem(self) -> str | None:
        """Why the journal cannot be kept, or None: a failed write or fsync, or the file gone (a few syscalls)."""
        if self.failure is not None:
            return str(self.failure)
        try:
            held = os.fstat(self._fd)
            if held.st_nlink == 0:
                return f"journal {self.path} was deleted (the file or its directory) under the balancer"
            named = os.stat(self.path)
        except FileNotFoundError:
            return f"journal {self.path} is gone: its directory was removed or renamed"
        except OSError as exc:
            return f"cannot stat journal {self.path}: {exc}"
        if (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            return f"journal {self.path} was replaced by another file"
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"the journal's directory {directory} is not writable: no compaction or restart could rewrite it"
        return None

    def append(
        self, records: list[tuple[Any, ...]], before_write: Callable[[bytes, int], None] | None = None
    ) -> bytes:
        """Append one iteration's records with one write (the fsync follows within the interval); the
        bytes written, which a leader ships to its standby as they are (balancer/replication.py), through
        `before_write` (before this write: the standby's copy need not wait for it)."""
        if self.failure is not None:
            raise self.failure
        data = jf.frame(p.encode_records(records))
        if before_write is not None:
            before_write(data, len(records))
        try:
            jf.write_all(self._fd, data)
            if self.rewrite_fd >= 0:
                jf.write_all(self.rewrite_fd, data)  # a compaction under way sees every change after its copy
        except OSError as exc:
            # Part of the batch may be in the file: refuse further appends, and let close() skip the fsync
            # so it cannot raise a second error over this one on the way out.
            self.failure = JournalError(f"cannot append to journal {self.path}: {exc}")
            raise self.failure from None
        count, size = len(records), len(data)
        self.appended += count
        self.bytes_written += size
        self._since_compact += count
        self._size += size
        self._frames += count
        if self.rewrite_fd >= 0:
            self._rewrite_size += size
            self._rewrite_frames += count
        self._dirty.put((*self._ident, self._size, self._frames))
        return data

    def _sync_item(self) -> tuple[int, int, int, int]:
        return (*self._ident, self._size, self._frames)

    def due_for_compaction(self, live_records: int, ids: int = 0) -> bool:
        """True when the file holds far more records than the state it describes.

        `ids`: requests remembered by id past their results (one small EARLIER record each). They count
        once, not twice: every request adds two records (ACCEPTED, FINISHED) and ends as one id for a
        day, so with ids counted like live records the file would never be due while ids pile up, and
        its dead ACCEPTED records, payloads and all, would grow until the ids' cap. Counted once, a
        compaction comes every live_records + COMPACT_SLACK_RECORDS requests or so.
        """
        grown = self._size > 2 * self._base_size + COMPACT_SLACK_BYTES
        return grown or self._since_compact > 2 * live_records + ids + COMPACT_SLACK_RECORDS

    def start_rewrite(self) -> None:
        """Open the new file of an incremental compaction and write its first record."""
        self.check()
        try:
            self.rewrite_fd = os.open(f"{self.path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        self._rewrite_size = self._rewrite_frames = 0
        self.write_rewrite([MAGIC])
        self._since_compact = 0  # appends from here on are in the new file too

    def write_rewrite(self, records: list[tuple[Any, ...]]) -> None:
        """One slice of the live state into the new file."""
        data = jf.frame(p.encode_records(records))
        try:
            jf.write_all(self.rewrite_fd, data)
        except OSError as exc:
            self.end_rewrite(exc)
        self._rewrite_size += len(data)
        self._rewrite_frames += len(records)

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
            self._now_writing(self._rewrite_size, self._rewrite_frames)
            fsync_dir(self.path)
        except OSError as exc:
            jf.remove_quietly(tmp)  # a full disk should not stay fuller for a half-written copy
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        finally:
            os.close(fd)
        self.compactions += 1
        self._dirty.put(self._sync_item())  # the new file's mark, once the fsync thread covers its latest appends

    def abandon_rewrite(self) -> None:
        """Drop a compaction's half-written new file (the journal itself is whole, or failing anyway)."""
        if self.rewrite_fd >= 0:
            os.close(self.rewrite_fd)
            self.rewrite_fd = -1
            jf.remove_quietly(f"{self.path}.tmp")

    def _rewrite(self, records: list[tuple[Any, ...]]) -> None:
        """Write `records` to a new file, fsync it, rename it over the journal, fsync the directory."""
        tmp = f"{self.path}.tmp"
        data = jf.frame(p.encode_records([MAGIC, *records]))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                jf.write_all(fd, data)
                os.fsync(fd)
                os.replace(tmp, self.path)
                if self._fd < 0:
                    self._fd = os.dup(fd)
                else:
                    # Same descriptor number for the fsync thread, now on the new file.
                    os.dup2(fd, self._fd)
            finally:
                os.close(fd)
            self._now_writing(len(data), 1 + len(records))
            fsync_dir(self.path)
        except OSError as exc:
            jf.remove_quietly(tmp)  # a full disk should not stay fuller for a half-written copy
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        self._since_compact = 0

    def _now_writing(self, size: int, frames: int) -> None:
        """The descriptor now holds a new file of `size` bytes and `frames` frames."""
        held = os.fstat(self._fd)
        self._ident, self._size, self._frames = (held.st_ino, held.st_dev), size, frames
        self._base_size = size

    def _sync_loop(self) -> None:
        """Group commit: one fsync for everything appended since the last one; then note what it covered."""
        while True:
            items = [self._dirty.get()]
            while not self._dirty.empty():
                items.append(self._dirty.get_nowait())
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failure = JournalError(f"cannot fsync journal {self.path}: {exc}")
                return
            covered = [item for item in items if item is not None]
            if covered:
                self.synced = jf.Mark(*covered[-1])
            if None in items:
                return
            time.sleep(self.fsync_interval_s)  # wait-ok: the group-commit window, not a synchronisation

    def close(self) -> None:
        """Flush everything to disk and close the file; raise if that failed."""
        if self._fd < 0:
            return
        self.abandon_rewrite()  # a compaction under way: the journal itself is whole, drop the copy
        if self._syncer is not None:
            self._dirty.put(None)
            self._syncer.join(5)
        try:
            if self.failure is None:
                os.fsync(self._fd)
                self.synced = jf.Mark(*self._sync_item())
        except OSError as exc:
            raise JournalError(f"cannot fsync journal {self.path}: {exc}") from None
        finally:
            os.close(self._fd)
            self._fd = -1
