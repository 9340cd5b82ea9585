"""The balancer's memory of recent events and its log file.

The loop hands over one batch of event tuples per iteration with a single
wall-clock stamp. Batches are kept in a bounded ring for `zlb logs`, formatted
only when read. The log file is written by a child process
(balancer/logwriter.py): formatting ~2 µs a line in a thread here held the GIL
the loop needs, so the loop's thread only packs each batch (msgpack, a few
tenths of a µs an event) and writes it to the child's pipe without blocking.
The file stays plain text for people to read.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from balancer import logwriter
from wire import events as ev
from wire import protocol as p

DEFAULT_KEEP_EVENTS = 100_000
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 3
# A log file that failed is tried again this often (a full disk may be freed).
LOG_RETRY_INTERVAL_S = 5.0
# Events waiting for room in the writer's pipe beyond this are dropped and counted,
# so a stuck writer or disk cannot grow the balancer's memory (as many as the ring keeps).
MAX_QUEUED_EVENTS = DEFAULT_KEEP_EVENTS
# The pipe to the writer is widened to this (Linux's default cap for a user), so a
# burst waits in the kernel rather than here; 64 KiB is a few thousand events.
PIPE_BYTES = 1 << 20
# close() waits this long for the writer to write what it has, then kills it.
CLOSE_WAIT_S = 5.0
# The writer is handed what waits at most this often, and at once past HANDOVER_EVENTS: each
# hand-over wakes the child, which then competes for a core with the request path. One every
# 10 ms (each publish) cost one-at-a-time requests 10-40 us of their p50 (docs/PERFORMANCE.md).
# A quiet balancer hands the rest over at its next tick (every heartbeat interval).
HANDOVER_S = 0.1
HANDOVER_EVENTS = 4096
# Linux takes at most this many buffers in one writev.
IOV_MAX = 1024


class EventLog:
    """Bounded in-memory ring of stamped event batches plus a log-file writer."""

    def __init__(
        self,
        path: str | None,
        keep: int = DEFAULT_KEEP_EVENTS,
        max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        backups: int = DEFAULT_LOG_BACKUPS,
    ) -> None:
        self.keep = keep
        self.path = path
        self._ring: deque[tuple[float, list[tuple[Any, ...]]]] = deque()
        self._count = 0
        self._writer_args = (max_bytes, backups)
        self._writer = _LogProcess(path, max_bytes, backups) if path else None
        self._problem_told: str | None = None
        self._dropped_before = 0  # lines dropped by writers that died (a restarted one counts from 0)
        self._restart_at: float | None = None

    def add(self, ts: float, batch: list[tuple[Any, ...]]) -> None:
        """Remember a batch stamped `ts` and queue it for the log file."""
        self._ring.append((ts, batch))
        self._count += len(batch)
        while self._count - len(self._ring[0][1]) >= self.keep:
            self._count -= len(self._ring.popleft()[1])
        if self._writer is not None:
            self._writer.put(ts, batch)

    def __iter__(self) -> Iterator[list[Any]]:
        """Stamped events `[ts, kind, *args]`, oldest first."""
        for ts, batch in self._ring:
            for event in batch:
                yield [ts, *event]

    def recent(self, limit: int | None = None) -> list[list[Any]]:
        """The newest `limit` stamped events (all kept ones when None), oldest first.

        Walks batches from the newest, so `logs --limit 100` costs about 100 events, not the ring.
        """
        if limit is None:
            return list(self)
        newest: list[list[Any]] = []
        for ts, batch in reversed(self._ring):
            for event in reversed(batch):
                if len(newest) >= limit:
                    return newest[::-1]
                newest.append([ts, *event])
        return newest[::-1]

    def page(self, offset: int, limit: int) -> list[list[Any]]:
        """Up to `limit` stamped events from the `offset`-th kept one on, skipping whole batches:
        `logs --download` pages through 100,000 events without re-reading each page's prefix."""
        out: list[list[Any]] = []
        for ts, batch in self._ring:
            if offset >= len(batch):
                offset -= len(batch)
                continue
            for event in batch[offset : offset + limit - len(out)]:
                out.append([ts, *event])
            offset = 0
            if len(out) >= limit:
                break
        return out

    @property
    def problem(self) -> str | None:
        """Why the log file is not being written now (None: it is, or there is no file)."""
        return None if self._writer is None else self._writer.problem

    @property
    def dropped_lines(self) -> int:
        """Log lines that never reached the file (a failing file, a full pipe, a writer gone)."""
        writer = self._writer
        if writer is None:
            return 0
        writer.poll()
        return self._dropped_before + writer.dropped_writing + writer.dropped_queueing

    def health_events(self) -> list[tuple[Any, ...]]:
        """An event when the log file went degraded or came back since the last call (cheap; per tick)."""
        writer = self._writer
        if writer is None:
            return []
        writer.poll()
        if writer.gone:
            writer = self._restart_writer(writer)
        if writer.problem == self._problem_told:
            return []
        self._problem_told = writer.problem
        if writer.problem is None:
            return [(ev.SYSTEM_LOG_RESUMED, self.path, self.dropped_lines)]
        return [(ev.SYSTEM_LOG_DEGRADED, self.path, writer.problem)]

    def close(self) -> None:
        """Hand the writer what is left, let it finish (CLOSE_WAIT_S at most) and reap it."""
        if self._writer is not None:
            self._writer.close()

    def _restart_writer(self, dead: _LogProcess) -> _LogProcess:
        """A writer that died is started again LOG_RETRY_INTERVAL_S later (each time it dies)."""
        now = time.monotonic()
        if self._restart_at is None:
            self._restart_at = now + LOG_RETRY_INTERVAL_S
        if now < self._restart_at or self.path is None:
            return dead
        self._restart_at = None
        self._dropped_before += dead.dropped_writing + dead.dropped_queueing
        self._writer = _LogProcess(self.path, *self._writer_args)
        return self._writer


class _LogProcess:
    """The balancer's end of the log-writer child: frames in on its stdin, health out on its stdout.

    The loop must never wait for the log. A frame the pipe cannot take now waits
    here, whole, for the next add() or tick; beyond MAX_QUEUED_EVENTS waiting
    (or one batch, if that is more) batches are dropped and counted. A frame
    partly in the pipe goes on before anything else: the stream must stay in step.

    The child reports (problem, lines it dropped) when that changes; it is read
    without blocking, once per tick. A child that exited, or never started, is a
    problem like a full disk: said once, every later line dropped and counted.
    Lines a dead child held unwritten are not counted: no one is left to say how many.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.problem: str | None = None
        self.dropped_writing = 0  # as the child last reported
        self.dropped_queueing = 0  # refused or lost on this side of the pipe
        self.queued_events = 0  # in frames not yet wholly in the pipe
        self._frames: deque[tuple[bytes, int]] = deque()  # (frame, events), oldest first
        self._offset = 0  # bytes of the oldest frame already in the pipe
        self._handover_at = 0.0  # frames wait for the writer until then (see HANDOVER_S)
        self._health = logwriter.FrameReader()
        self._closed = False  # close() began: an exit is expected, not a problem
        self._gone = False  # the writer is lost: said once, nothing more to notice
        self._proc: subprocess.Popen[bytes] | None = None
        # Used by number; closed through Popen's file objects, which would close a reused number again.
        self._stdin: Any = None
        self._stdout: Any = None
        self._fd_in: int | None = None
        self._fd_out: int | None = None
        try:
            self._proc = _spawn(path, max_bytes, backups)
        except OSError as exc:
            self._lost(f"cannot start log writer: {exc}")
            return
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        self._fd_in, self._fd_out = self._stdin.fileno(), self._stdout.fileno()
        for fd in (self._fd_in, self._fd_out):
            os.set_blocking(fd, False)
        _widen(self._fd_in)

    @property
    def gone(self) -> bool:
        """The writer exited or never started (not by close()): it may be started again."""
        return self._gone

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def put(self, ts: float, batch: list[tuple[Any, ...]]) -> None:
        if self._fd_in is None:
            self.dropped_queueing += len(batch)
            return
        if self._frames and self.queued_events + len(batch) > MAX_QUEUED_EVENTS:
            # Behind: keep what an operator must see (warnings and errors), drop the routine lines.
            kept = [event for event in batch if event[0] in ev.LEVELS]
            self.dropped_queueing += len(batch) - len(kept)
            if not kept or self.queued_events + len(kept) > 2 * MAX_QUEUED_EVENTS:
                self.dropped_queueing += len(kept)
                return
            batch = kept
        self._frames.append((logwriter.frame([ts, batch]), len(batch)))
        self.queued_events += len(batch)
        now = time.monotonic()
        if now >= self._handover_at or self.queued_events >= HANDOVER_EVENTS:
            self._handover_at = now + HANDOVER_S
            self._flush()

    def poll(self) -> None:
        """Flush what waits, read the child's health, notice its exit (non-blocking)."""
        if self._frames:
            self._flush()
        self._read_health()
        proc = self._proc
        if proc is not None and not (self._closed or self._gone) and proc.poll() is not None:
            self._read_health()  # its last report is in the pipe already
            code = proc.returncode
            self._lost(f"log writer exited ({f'code {code}' if code >= 0 else f'killed by signal {-code}'})")

    def close(self) -> None:
        proc = self._proc
        if proc is None or self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + CLOSE_WAIT_S
        while self._frames and self._fd_in is not None and _wait_fd(self._fd_in, select.POLLOUT, deadline):
            self._flush()
        self._close_in()
        while self._fd_out is not None and _wait_fd(self._fd_out, select.POLLIN, deadline):
            self._read_health()
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            _say(f"zlb balancer: error: the log writer did not finish within {CLOSE_WAIT_S:g} s; killed it")
        self._close_out()

    def _flush(self) -> None:
        """Write waiting frames until the pipe is full (one writev, as a rule)."""
        frames = self._frames
        while frames and self._fd_in is not None:
            bufs: list[Any] = [data for data, _ in itertools.islice(frames, IOV_MAX)]
            bufs[0] = memoryview(bufs[0])[self._offset :]
            want = sum(map(len, bufs))
            try:
                written = os.writev(self._fd_in, bufs)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: the child is gone; poll() says how
                self._close_in()
                return
            self._consume(written)
            if written < want:
                return

    def _consume(self, written: int) -> None:
        self._offset += written
        frames = self._frames
        while frames and self._offset >= len(frames[0][0]):
            data, events = frames.popleft()
            self._offset -= len(data)
            self.queued_events -= events

    def _read_health(self) -> None:
        while self._fd_out is not None:
            try:
                data = os.read(self._fd_out, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_out()
                return
            try:
                for problem, dropped in self._health.feed(data):
                    self.problem, self.dropped_writing = problem, int(dropped)
            except (ValueError, TypeError, p.ProtocolError) as exc:  # a writer bug: stop trusting it
                if self._proc is not None:
                    self._proc.kill()
                self._lost(f"log writer sent garbage ({exc})")

    def _close_in(self) -> None:
        """No more frames: count what waits as dropped and close the child's stdin (its EOF)."""
        self.dropped_queueing += self.queued_events
        self.queued_events = 0
        self._frames.clear()
        self._offset = 0
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass  # EPIPE on a flush of nothing: the child is gone, which is what closing means
            self._stdin = self._fd_in = None

    def _lost(self, reason: str) -> None:
        """The writer is gone or never came: drop from now on, and say why once."""
        self._gone = True
        self._close_in()
        self._close_out()
        _say(f"zlb balancer: error: {reason}; log lines are dropped and counted")
        self.problem = reason

    def _close_out(self) -> None:
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = self._fd_out = None


def _spawn(path: str, max_bytes: int, backups: int) -> subprocess.Popen[bytes]:
    """Start the writer in the balancer's process group, immune to the stop signals meant for the balancer."""
    args = [sys.executable, "-m", "balancer.logwriter", path, "--max-bytes", str(max_bytes)]
    args += ["--backups", str(backups), "--retry-s", repr(LOG_RETRY_INTERVAL_S)]
    # Blocked across fork and exec, a Ctrl-C in that window waits until the child ignores it.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, logwriter.STOP_SIGNALS)
    try:
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # over the user's pipe quota: the default size works, with drops sooner


def _wait_fd(fd: int, events: int, deadline: float) -> bool:
    """Wait until `fd` is ready for `events` or `deadline` passes; False once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(fd, events)
    poller.poll(left * 1000)
    return True


def _say(line: str) -> None:
    """One line on the balancer's stderr, for whoever watches it when the log file cannot be."""
    print(line, file=sys.stderr, flush=True)
