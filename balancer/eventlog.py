"""The balancer's memory of recent events and its log file.

The loop hands over one batch of event tuples per iteration with a single
wall-clock stamp. Batches are kept in a bounded ring for `zlb logs` and
passed to a writer thread that formats them and appends them to a
size-rotated log file, so no line is formatted on the loop's thread.
"""

from __future__ import annotations

import os
import queue
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
        """The newest `limit` stamped events (all kept ones when None), oldest first."""
        events = list(self)
        return events if limit is None else events[-limit:] if limit > 0 else []

    def close(self) -> None:
        """Flush the log file and stop its writer."""
        if self._writer is not None:
            self._writer.close()


class _LogWriter:
    """A thread that owns the log file; the loop talks to it through a queue."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._queue: queue.SimpleQueue[tuple[float, list[tuple[Any, ...]]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="zlb-log-writer", daemon=True)
        self._thread.start()

    def put(self, ts: float, batch: list[tuple[Any, ...]]) -> None:
        self._queue.put((ts, batch))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        fh = open(self._path, "a", encoding="utf-8")
        try:
            while True:
                item = self._queue.get()
                lines: list[str] = []
                done = item is None
                while item is not None:
                    ts, batch = item
                    lines.extend(ev.log_line([ts, *event]) for event in batch)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    done = item is None
                if lines:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    if fh.tell() >= self._max_bytes:
                        fh = self._rotate(fh)
                if done:
                    return
                time.sleep(LOG_FLUSH_INTERVAL_S)  # wait-ok: batching interval of the writer thread
        finally:
            fh.close()

    def _rotate(self, fh: Any) -> Any:
        fh.close()
        for i in range(self._backups - 1, 0, -1):
            src = f"{self._path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self._path}.{i + 1}")
        if self._backups > 0:
            os.replace(self._path, f"{self._path}.1")
        else:
            os.remove(self._path)
        return open(self._path, "a", encoding="utf-8")
