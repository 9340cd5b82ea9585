"""The balancer's memory of recent events and its log file.

The loop hands over one batch of event tuples per iteration with a single
wall-clock stamp. Batches are kept in a bounded ring for `zlb logs` and
passed to a writer thread that formats them and appends them to a
size-rotated log file, so no line is formatted on the loop's thread.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from wire import events as ev

DEFAULT_KEEP_EVENTS = 100_000
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 3
# The writer wakes at most this often: one write of many batches costs the
# loop far less GIL time and far fewer syscalls than a write per loop iteration.
LOG_FLUSH_INTERVAL_S = 0.1
# A log file that failed is tried again this often (a full disk may be freed).
LOG_RETRY_INTERVAL_S = 5.0
# Events waiting for the writer beyond this are dropped and counted, so a stuck
# disk cannot grow the balancer's memory (as many as the ring keeps).
MAX_QUEUED_EVENTS = DEFAULT_KEEP_EVENTS


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
        self._writer = _LogWriter(path, max_bytes, backups) if path else None
        self._problem_told: str | None = None

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

    @property
    def dropped_lines(self) -> int:
        """Log lines that never reached the file (a failing file or a full writer queue)."""
        writer = self._writer
        return 0 if writer is None else writer.dropped_writing + writer.dropped_queueing

    def health_events(self) -> list[tuple[Any, ...]]:
        """An event when the log file went degraded or came back since the last call (cheap; per tick)."""
        writer = self._writer
        if writer is None or writer.problem == self._problem_told:
            return []
        self._problem_told = writer.problem
        if writer.problem is None:
            return [(ev.SYSTEM_LOG_RESUMED, self.path, self.dropped_lines)]
        return [(ev.SYSTEM_LOG_DEGRADED, self.path, writer.problem)]

    def close(self) -> None:
        """Flush the log file and stop its writer."""
        if self._writer is not None:
            self._writer.close()


class _LogWriter:
    """A thread that owns the log file; the loop talks to it through a queue.

    A log file that cannot be written must not take the balancer down nor
    grow its memory: the writer goes *degraded* (`problem` says why), keeps
    draining its queue, drops and counts the lines it cannot write, and tries
    the file again every LOG_RETRY_INTERVAL_S. The queue is bounded too, for a
    writer stuck in a slow write: beyond MAX_QUEUED_EVENTS, batches are dropped
    and counted. Each counter is written by one thread only, so no lock.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._queue: queue.SimpleQueue[tuple[float, list[tuple[Any, ...]]] | None] = queue.SimpleQueue()
        self.problem: str | None = None  # set and cleared by the writer thread
        self.dropped_writing = 0  # lines the writer could not write (writer thread)
        self.dropped_queueing = 0  # events refused at a full queue (loop thread)
        self._queued = 0  # events put (loop thread)
        self._taken = 0  # events taken (writer thread)
        self._fh: Any = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="zlb-log-writer", daemon=True)
        self._thread.start()

    def put(self, ts: float, batch: list[tuple[Any, ...]]) -> None:
        if self._queued - self._taken >= MAX_QUEUED_EVENTS or not self._thread.is_alive():
            self.dropped_queueing += len(batch)
            return
        self._queued += len(batch)
        self._queue.put((ts, batch))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while self._write_some():
                time.sleep(LOG_FLUSH_INTERVAL_S)  # wait-ok: batching interval of the writer thread
        except Exception as exc:  # noqa: BLE001 - a bug here must show, not silently stop the log
            self.problem = f"log writer stopped: {exc.__class__.__name__}: {exc}"
            _say(f"zlb balancer: error: {self.problem}; later log lines are dropped and counted")
        finally:
            if self._fh is not None:
                self._fh.close()

    def _write_some(self) -> bool:
        """Write what is queued (waiting for at least one batch); False once asked to stop."""
        item = self._queue.get()
        lines: list[str] = []
        done = item is None
        while item is not None:
            ts, batch = item
            self._taken += len(batch)
            lines.extend(ev.log_line([ts, *event]) for event in batch)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            done = item is None
        if lines:
            self._write(lines)
        return not done

    def _write(self, lines: list[str]) -> None:
        if self.problem is not None and time.monotonic() < self._retry_at:
            self.dropped_writing += len(lines)
            return
        try:
            if self._fh is None:
                self._fh = open(self._path, "a", encoding="utf-8")
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            if self._fh.tell() >= self._max_bytes:
                self._rotate()
        except OSError as exc:
            self._fail(exc, len(lines))
            return
        if self.problem is not None:
            _say(f"zlb balancer: log file {self._path} is written again; {self.dropped_writing} lines were dropped")
        self.problem = None

    def _fail(self, exc: OSError, lines: int) -> None:
        """Go degraded: drop these lines, close the file, try again later."""
        self.dropped_writing += lines
        self._retry_at = time.monotonic() + LOG_RETRY_INTERVAL_S
        if self._fh is not None:
            try:
                self._fh.close()  # flushing again may fail the same way; the lines are counted already
            except OSError:
                pass
            self._fh = None
        if self.problem is None:
            _say(f"zlb balancer: error: cannot write log file {self._path}: {exc}; lines are dropped and counted")
        self.problem = str(exc)

    def _rotate(self) -> None:
        self._fh.close()
        self._fh = None
        for i in range(self._backups - 1, 0, -1):
            src = f"{self._path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self._path}.{i + 1}")
        if self._backups > 0:
            os.replace(self._path, f"{self._path}.1")
        else:
            os.remove(self._path)


def _say(line: str) -> None:
    """One line on the balancer's stderr, for whoever watches it when the log file cannot be."""
    print(line, file=sys.stderr, flush=True)
