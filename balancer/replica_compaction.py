"""A standby compacts its own journal, in a child process, instead of asking the leader for a snapshot.

A leader compacts by writing its live state (balancer/compaction.py); a standby holds no state, only the
leader's records. It used to follow afresh for a new snapshot, and a state holding big payloads kept it
silent long enough to be dropped from the synchronous path: with 1 MiB payloads the leader ran alone for
~2.5 s at every such compaction. Now a child process (`python -m balancer.replica_compaction`) does with the
file's first `upto` bytes what a start does with a journal (replay, restore, snapshot) and writes the result
to PATH.compacting, fsynced; the standby meanwhile appends and answers APPLIED as before. Then it copies
what it appended since `upto` onto the new file and renames that over its journal. Until the rename the old
file stays whole (the child only reads it), so a takeover or a new snapshot at any moment simply drops the
compaction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from balancer import journal as jr
from balancer import journal_format as jf
from balancer.scheduler import Scheduler
from wire import protocol as p

# What the standby copies onto the new file per tick once the child is done: it reads and writes the page
# cache, ~20-60 ms at this size, a pause its APPLIED can afford (max lag 1 s).
COPY_SLICE_BYTES = 32 * 1024 * 1024


def compact(src: str, upto: int, dst: str, options: dict[str, Any]) -> int:
    """Write to `dst` (fsynced) the live state that the first `upto` bytes of the journal `src` describe,
    as a start with these Scheduler `options` would rewrite it; the records written."""
    recovered = jr.replay(src, options.get("keep_finished"), upto=upto)
    if recovered.damaged:
        raise jr.JournalError(f"journal {src} is damaged before byte {upto}: not compacted")
    sched = Scheduler(**options, wall_offset=time.time() - time.monotonic())
    jr.restore(sched, recovered)
    records = [jf.MAGIC, *jr.snapshot(sched)]
    data = jf.frame(p.encode_records(records))
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        jf.write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(records)


class LocalCompaction:
    """One compaction under way: the child writing the state up to `upto`, then the copy of what followed."""

    def __init__(self, path: str, upto: int, records_at_upto: int, options: dict[str, Any]) -> None:
        self.path, self.records_at_upto = path, records_at_upto
        self.tmp = f"{path}.compacting"
        command = [sys.executable, "-m", "balancer.replica_compaction", path, str(upto), self.tmp, json.dumps(options)]
        self._child: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.records = 0  # the child wrote (the new file holds these and the old one's after records_at_upto)
        self.size = self.snapshot_size = 0  # of the new file; of the child's part of it
        self.fd = -1  # the new file, appended to, once the child is done
        self._src = -1
        self._copied = upto  # the old file's bytes the new one holds (or stands for)

    def step(self, size: int) -> bool:
        """Go on, given the old file's `size` now: True once the new file holds everything (rename it then).
        Raises jr.JournalError if the child failed."""
        if self._child is not None:
            if self._child.poll() is None:
                return False
            self._took_child()
        end = min(size, self._copied + COPY_SLICE_BYTES)
        while self._copied < end:
            chunk = os.pread(self._src, end - self._copied, self._copied)
            if not chunk:
                raise jr.JournalError(f"journal {self.path} ended at byte {self._copied} of {size}")
            jf.write_all(self.fd, chunk)
            self._copied += len(chunk)
            self.size += len(chunk)
        return self._copied >= size

    def _took_child(self) -> None:
        child, self._child = self._child, None
        assert child is not None
        out, err = child.communicate()
        if child.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {child.returncode}"]
            raise jr.JournalError(f"compacting journal {self.path} failed: {reason[0]}")
        self.records = int(out)
        self.size = self.snapshot_size = os.path.getsize(self.tmp)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_APPEND)
        self._src = os.open(self.path, os.O_RDONLY)

    def finish(self) -> int:
        """Rename the new file over the journal; its descriptor (the caller's to close)."""
        os.replace(self.tmp, self.path)
        jf.fsync_dir(self.path)
        fd, self.fd = self.fd, -1
        self._close_source()
        return fd

    def cancel(self) -> None:
        """Stop the child, close and remove the new file: the old one is whole."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.communicate()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._close_source()
        jf.remove_quietly(self.tmp)

    def _close_source(self) -> None:
        if self._src >= 0:
            os.close(self._src)
            self._src = -1


def main(argv: list[str]) -> int:
    """`python -m balancer.replica_compaction SRC UPTO DST OPTIONS_JSON`: prints the records written."""
    src, upto, dst, options = argv
    try:
        print(compact(src, int(upto), dst, json.loads(options)))
    except (OSError, ValueError) as exc:
        print(f"zlb replica compaction: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
