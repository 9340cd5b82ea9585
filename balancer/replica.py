"""The standby's half of replication: the leader's journal, written here as it comes.

A standby connects a DEALER to the leader's replication endpoint and says
FOLLOW. The SNAPSHOT it gets is the leader's whole state as journal bytes: it
becomes this member's journal file (written aside, fsynced, renamed over, as
a start writes one). Each RECORDS that follows is appended as it is, with one
write, and answered APPLIED [seq]: the leader answers nobody before that. A
gap in the numbering, another epoch, or a leader silent past SILENT_KEEPALIVES of
its keep-alive interval (it says which in the SNAPSHOT; at least MIN_SILENCE_S) means
the stream is broken: follow again from a fresh snapshot. The file is fsynced
once per tick by a helper thread, off the path of APPLIED (the leader's host
is the one that may fail; this one's page cache survives the loss of that
host and of this process). The file grows until it is compacted here, by a
child process, while the stream goes on (balancer/replica_compaction.py). On
takeover the member replays this file like any journal (balancer/member.py).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import zmq

from balancer import journal as jr
from balancer import journal_format as jf
from balancer.replica_compaction import LocalCompaction
from wire import protocol as p
from wire.protocol import MsgType, ProtocolError
from wire.sockets import Waiter, received

# Following afresh costs a whole snapshot, so silence means at least this long (the default heartbeat's four
# keep-alives): with 1 s, tests' 100 ms heartbeats under 1 MiB payloads on a loaded machine saw a standby
# re-follow a leader that was only slow.
MIN_SILENCE_S = 2.0
SILENT_KEEPALIVES = 4
# The file is compacted as the leader's is (balancer/journal.py): once it holds this many records beyond
# twice its last snapshot, or jr.COMPACT_SLACK_BYTES beyond twice its bytes, by a child process
# (balancer/replica_compaction.py) while the stream goes on.
COMPACT_SLACK_RECORDS = 50_000
# A journal it cannot write (a full disk): no APPLIED, so the leader drops it; it follows again this much later.
WRITE_RETRY_S = 5.0


class Replica:
    """Follows one leader's stream into the journal file at `path`."""

    def __init__(self, context: zmq.Context, path: str, name: str, options: dict[str, Any] | None = None) -> None:
        self._ctx = context
        self.path = path
        self.name = name
        self._options = options or {}  # the Scheduler's, for a compaction (BalancerConfig.scheduler_options)
        self._compaction: LocalCompaction | None = None
        self.compaction_failures = 0
        self.followed_afresh = 0  # the stream broke and was followed again from a snapshot
        self.write_failures = 0
        self._retry_at = 0.0  # after a failed write: when to follow again
        self.why_afresh = ""  # the last time's reason
        self.sock: zmq.Socket | None = None
        self._waiter: Waiter | None = None  # a blocking receive on `sock`
        self.leader: str | None = None  # its replication endpoint
        self.epoch = 0
        self.seq = -1  # the last batch applied; -1 until a snapshot arrived
        self.records = 0  # records in the file
        # The file when it was last written afresh (the leader's snapshot, or our compaction): the next is due
        # once it grew well beyond these.
        self.base_records = self.base_size = 0
        self.compactions = 0
        self.size = 0
        self.snapshots = 0
        self.bad_messages = 0
        self.heard_at = 0.0
        self.caught_up_at: float | None = None  # when the last snapshot was applied
        self.silence_s = MIN_SILENCE_S  # from the leader's keep-alive interval, told in its SNAPSHOT
        self._fd = -1
        self._dirty = False
        # Duplicates of the file's descriptor to fsync, handed to the syncer thread (None stops it).
        self._to_sync: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._syncer = threading.Thread(target=self._sync_loop, name="zlb-replica-fsync", daemon=True)
        self._syncer.start()

    # ---- following --------------------------------------------------------

    def follow(self, endpoint: str, epoch: int, now: float) -> None:
        """Follow the leader of `epoch` at its replication `endpoint`, from a fresh snapshot."""
        self._close_socket()
        self._cancel_compaction()  # the snapshot replaces the file
        self._retry_at = 0.0
        self.leader, self.epoch, self.seq = endpoint, epoch, -1
        self.caught_up_at = None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # the stream must not be cut by a high-water mark
        sock.connect(endpoint)
        sock.send(p.encode(MsgType.FOLLOW, self.name))
        self.sock = sock
        self._waiter = Waiter(sock)
        self.heard_at = now

    def _cannot_write(self, exc: OSError, now: float) -> None:
        """The journal cannot be written (a full or failing disk): stop answering the stream, which makes the
        leader drop this standby (and say so), stay up, and follow afresh WRITE_RETRY_S later."""
        self.write_failures += 1
        self.why_afresh = f"cannot write the journal {self.path}: {exc}"
        self._close_socket()
        self._cancel_compaction()
        self._retry_at = now + WRITE_RETRY_S

    def _follow_afresh(self, why: str, now: float) -> None:
        """The stream broke: follow the same leader again, from a new snapshot; `why` is shown in the status."""
        self.followed_afresh += 1
        self.why_afresh = why
        self.follow(self.leader or "", self.epoch, now)

    def stop_following(self) -> None:
        self._close_socket()
        self.leader = None
        self.caught_up_at = None

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for the stream in a blocking receive, then apply what came; False if nothing.

        The standby waits here, not in a poll, while the stream flows: every answer the leader holds waits for
        the APPLIED this sends, and a blocking receive makes fewer syscalls per wake-up than zmq_poll
        (wire/sockets.py, Waiter). The standby looks at its other sockets between two waits."""
        if self._waiter is None:
            return False
        frames = self._waiter.message(timeout_ms)
        if frames is None:
            return False
        now = time.monotonic()
        if self._take(frames, now):
            self.drain(now)
        return True

    def drain(self, now: float) -> None:
        """Apply what the leader sent; re-follow if the stream broke."""
        sock = self.sock
        if sock is None:
            return
        # received(): a drain that ends on ZMQ_EVENTS, not on a receive raising zmq.Again (about 12 us on a
        # just-woken process, wire/sockets.py), on the path of every answer the leader holds for APPLIED.
        for frames in received(sock):
            if not self._take(frames, now):
                return

    def _take(self, frames: list[Any], now: float) -> bool:
        """Apply one message of the stream; False if the stream broke (followed afresh: a new socket)."""
        try:
            msg_type, epoch, fields = p.decode_with_epoch(frames[0])
            body = p.split_body(msg_type, frames)
        except ProtocolError:
            self.bad_messages += 1
            return True
        if epoch != self.epoch or msg_type not in (MsgType.SNAPSHOT, MsgType.RECORDS):
            self.bad_messages += 1
            return True
        self.heard_at = now
        if msg_type is MsgType.SNAPSHOT:
            self.silence_s = max(MIN_SILENCE_S, SILENT_KEEPALIVES * fields[2] / 1000)
        try:
            applied = self._apply(msg_type, fields[0], fields[1], body, now)
        except OSError as exc:
            self._cannot_write(exc, now)
            return False
        if not applied:
            self._follow_afresh("a gap in the stream", now)
            return False
        if self._compaction is not None and self._outrun():
            # The child replays the whole file: a stream faster than that (~140 MB/s of journal here) made each
            # compaction's file bigger than the last (5.9 GB in 55 s). The leader's snapshot, made from its
            # memory, bounds it, at the price of a moment's silence that may drop this standby.
            self._follow_afresh("the stream outran the compaction", now)
            return False
        if self._compaction is None and self._due_for_compaction():
            try:
                self._compaction = LocalCompaction(self.path, self.size, self.records, self._options)
            except OSError:  # no child process: the leader's snapshot replaces the grown file, as it used to
                self.compaction_failures += 1
                self._follow_afresh("no child process to compact", now)
                return False
        return True

    def _apply(self, msg_type: MsgType, seq: int, count: int, body: bytes, now: float) -> bool:
        if msg_type is MsgType.SNAPSHOT:
            self._restart(body, count)
            self.snapshots += 1
            self.caught_up_at = time.time()
        elif self.seq < 0:
            return True  # the stream before our snapshot: nothing to do yet
        elif seq == self.seq and not body:
            pass  # a keep-alive: answer it, so the leader hears us
        elif seq != self.seq + 1:
            return False
        elif body:
            jf.write_all(self._fd, body)
            self.size += len(body)
            self.records += count
            self._dirty = True
        self.seq = seq
        assert self.sock is not None
        self.sock.send(p.encode(MsgType.APPLIED, seq), zmq.NOBLOCK)
        return True

    def tick(self, now: float) -> None:
        """fsync what was written since the last tick; follow again after a silence."""
        if self._compaction is not None:
            self._step_compaction(now)
        if self._dirty and self._fd >= 0:
            self._to_sync.put(os.dup(self._fd))  # a duplicate: the loop may replace the file meanwhile
            self._dirty = False
        if self.sock is not None and self.leader is not None and now - self.heard_at > self.silence_s:
            self._follow_afresh(f"the leader silent {now - self.heard_at:.1f} s", now)
        elif self.sock is None and self.leader is not None and self._retry_at and now >= self._retry_at:
            self._retry_at = 0.0
            self._follow_afresh(self.why_afresh, now)  # after a failed write: try again

    # ---- the file -----------------------------------------------------------

    def _due_for_compaction(self) -> bool:
        grown = self.size > 2 * self.base_size + jr.COMPACT_SLACK_BYTES
        return grown or self.records > 2 * self.base_records + COMPACT_SLACK_RECORDS

    def _outrun(self) -> bool:
        """The file grew past twice what a compaction would have let it reach: the compaction cannot keep up."""
        return self.size > 2 * (2 * self.base_size + jr.COMPACT_SLACK_BYTES)

    def _step_compaction(self, now: float) -> None:
        """The compaction under way goes on; once the new file holds everything, it replaces the old one.
        A failed one (a damaged file, a full disk) follows afresh: the leader's snapshot replaces the file."""
        run = self._compaction
        assert run is not None
        try:
            if not run.step(self.size):
                return
            fd = run.finish()
        except OSError:
            self.compaction_failures += 1
            if self.leader is not None:
                self._follow_afresh("the compaction failed", now)
            else:
                self._cancel_compaction()  # the next leader's snapshot replaces the file
            return
        self._compaction = None
        # Freeing a large replaced file's blocks takes the kernel 100+ ms at 1 GiB (as in balancer/journal.py).
        threading.Thread(target=os.close, args=(self._fd,), name="zlb-replica-release", daemon=True).start()
        self._fd = fd
        self.records = run.records + self.records - run.records_at_upto
        self.size = run.size
        # The base is the state the child wrote, not what was appended while it ran: counting that too, a
        # fast stream made each compaction's file bigger than the last (1.7 GB after 60 s at 60 MB/s).
        self.base_records, self.base_size = run.records, run.snapshot_size
        self.compactions += 1
        self._dirty = True  # what was copied onto the new file is fsynced at the next tick

    def _cancel_compaction(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
            self._compaction = None

    def _restart(self, data: bytes, count: int) -> None:
        """A snapshot: the new journal, written aside, fsynced and renamed over the old one."""
        self._cancel_compaction()  # a snapshot the leader sent on its own (after its journal's recovery)
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            jf.write_all(fd, data)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            jf.remove_quietly(tmp)  # a full disk should not stay fuller for a half-written copy
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        jf.fsync_dir(self.path)
        self.size = self.base_size = len(data)
        self.records = self.base_records = count

    def mark(self) -> jf.Mark | None:
        """What the file holds, for the lock file's synced mark (call after close or tick)."""
        if self._fd < 0:
            return None
        held = os.fstat(self._fd)
        return jf.Mark(held.st_ino, held.st_dev, self.size, self.records)

    def view(self, now: float) -> dict[str, Any]:
        return {
            "following": self.leader,
            "applied_seq": self.seq,
            "records": self.records,
            "caught_up": self.caught_up_at is not None,
            "heard_ms_ago": None if self.sock is None else round((now - self.heard_at) * 1000, 1),
            "snapshots": self.snapshots,
            "compactions": self.compactions,
            "compacting": self._compaction is not None,
            "compaction_failures": self.compaction_failures,
            "followed_afresh": self.followed_afresh,
            "write_failures": self.write_failures,
            "why_afresh": self.why_afresh or None,
        }

    def close(self) -> jf.Mark | None:
        """fsync and close the file; its mark (None if it never got a snapshot)."""
        self._close_socket()
        self._cancel_compaction()  # the file is whole without it (a member that leads replays it now)
        self._to_sync.put(None)
        self._syncer.join(5)
        if self._fd < 0:
            return None
        try:
            os.fsync(self._fd)
        except OSError:
            pass  # a failing disk: the file is what it is, and a member that leads replays it as it is
        mark = self.mark()
        os.close(self._fd)
        self._fd = -1
        return mark

    def _sync_loop(self) -> None:
        while (fd := self._to_sync.get()) is not None:
            try:
                os.fsync(fd)
            except OSError:
                pass  # the next snapshot or close fsyncs again, and a failing disk fails those loudly
            finally:
                os.close(fd)

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
            self._waiter = None
