"""The balancer's log-file writer, a child process: `python -m balancer.logwriter PATH ...`.

Formatting a line costs about 2 µs and a busy balancer logs three per request; in a
thread of the balancer that time held the GIL the loop needs (a fifth of its budget at
30,000 requests/s). Here the balancer only packs each batch with msgpack and writes it
to this process's stdin without blocking (balancer/eventlog.py); the text is made here.

Both pipes carry frames of a 4-byte big-endian length and one msgpack array
(wire/protocol.py encode_events): `[ts, batch]` in on stdin, one per loop publish;
`[problem, dropped_writing]` out on stdout whenever that changes, and once at the end.

The writer lives as long as its stdin: at EOF (the balancer closed it, or died, even by
kill -9) it writes what it has and exits, so every line handed over reaches the file.
Stopping is the balancer's business: a Ctrl-C reaches the whole process group and
systemd signals the whole cgroup, so the writer ignores SIGINT, SIGTERM and SIGHUP and
lets the balancer close the pipe after its last lines. It runs niced, so under CPU
contention the balancer and its nodes go first.

A file that cannot be written must not stop the log: the writer goes *degraded*
(`problem` says why, once on stderr), drops and counts the lines it cannot write, and
tries the file again every --retry-s seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import signal
import stat
import struct
import sys
import time
from typing import Any

from wire import events as ev
from wire import limits
from wire import protocol as p

FRAME_HEADER = struct.Struct(">I")
# decode_events refuses more; a batch is a few thousand events, about 100 KB.
MAX_FRAME_BYTES = limits.DEFAULT_MAX_MESSAGE_BYTES
READ_BYTES = 1 << 20
# Stop signals meant for the balancer, which reach the writer too: blocked across the spawn, then ignored.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
NICENESS = 5
# The writer makes no reference cycles in its work (lists of scalars, strings), yet the
# collector's passes over each batch's lists cost a quarter of its CPU: it is switched
# off, and run this rarely in case some rare path (an exception) leaves a cycle behind.
COLLECT_EVERY_LINES = 1_000_000


def frame(value: list[Any]) -> bytes:
    """One pipe frame: length, then the msgpack array."""
    body = p.encode_events(value)
    return FRAME_HEADER.pack(len(body)) + body


class FrameReader:
    """Cuts a byte stream into decoded frames; a torn last frame waits for the rest."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        buf = self._buf
        buf += data
        out: list[list[Any]] = []
        pos = 0
        while len(buf) - pos >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"log pipe frame of {size} bytes: the stream is out of step")
            end = pos + FRAME_HEADER.size + size
            if end > len(buf):
                break
            out.append(p.decode_events(bytes(buf[pos + FRAME_HEADER.size : end])))
            pos = end
        del buf[:pos]
        return out


class LineFormatter:
    """`ev.log_line` text, byte for byte, at less cost: a batch shares one stamp, a kind one head.

    Events arrive through msgpack, as they reach the monitor: a tuple argument would
    come back a list and print so, but no event carries one.
    """

    def __init__(self) -> None:
        self._heads: dict[str, str] = {}

    def lines(self, ts: float, batch: list[list[Any]]) -> list[str]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z "
        heads = self._heads
        message = ev.message
        out: list[str] = []
        for event in batch:
            kind = event[0]
            head = heads.get(kind) if type(kind) is str else None
            if head is None:
                if type(kind) is not str:  # not ours: the slow path keeps the text right
                    out.append(ev.log_line([ts, *event]))
                    continue
                head = heads[kind] = f"{ev.level(kind):7} {kind:18} "
            out.append(stamp + head + message([ts, *event]))
        return out


class LogFile:
    """The size-rotated log file; on OSError it goes degraded, counts drops and retries later."""

    def __init__(self, path: str, max_bytes: int, backups: int, retry_s: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.retry_s = retry_s
        self.problem: str | None = None
        self.dropped = 0
        self._fh: Any = None
        self._retry_at = 0.0

    def open(self) -> None:
        """Open now, so a path that cannot be written shows before the first line."""
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            self._fail(exc, 0)

    def write(self, lines: list[str]) -> None:
        if self.problem is not None and time.monotonic() < self._retry_at:
            self.dropped += len(lines)
            return
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            if self._fh.tell() >= self.max_bytes:
                self._rotate()
        except OSError as exc:
            self._fail(exc, len(lines))
            return
        if self.problem is not None:
            _say(f"zlb balancer: log file {self.path} is written again; {self.dropped} lines were dropped")
        self.problem = None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:  # the last flush failed: those lines are lost, and said so
                _say(f"zlb balancer: error: closing log file {self.path}: {exc}")
            self._fh = None

    def _fail(self, exc: OSError, lines: int) -> None:
        """Go degraded: drop these lines, close the file, try again later."""
        self.dropped += lines
        self._retry_at = time.monotonic() + self.retry_s
        if self._fh is not None:
            try:
                self._fh.close()  # flushing again may fail the same way; the lines are counted already
            except OSError:
                pass
            self._fh = None
        if self.problem is None:
            _say(f"zlb balancer: error: cannot write log file {self.path}: {exc}; lines are dropped and counted")
        self.problem = str(exc)

    def _rotate(self) -> None:
        self._fh.close()
        self._fh = None
        for i in range(self.backups - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)


class Health:
    """Reports (problem, dropped) on stdout when it changes; a full pipe keeps only the newest for later."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._sent: list[Any] = [None, 0]  # what the balancer assumes before the first report
        self.unsent: bytes | None = None
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # not a terminal someone else shares, when run by hand
            os.set_blocking(fd, False)

    def report(self, state: list[Any]) -> None:
        if state != self._sent:
            self._sent = state
            self.unsent = frame(state)
        self.flush()

    def flush(self) -> None:
        if self.unsent is None:
            return
        try:
            os.write(self.fd, self.unsent)  # a frame under PIPE_BUF goes whole or not at all
        except BlockingIOError:
            return
        except OSError:
            pass  # the balancer is gone; the file is what matters now
        self.unsent = None

    def last(self, state: list[Any]) -> None:
        """The final report, waited for: the balancer reads it when it closes the pipe."""
        os.set_blocking(self.fd, True)
        self.report(state)


def serve(log: LogFile, health: Health, stdin_fd: int) -> None:
    """Write every batch that arrives on stdin until EOF."""
    reader = FrameReader()
    formatter = LineFormatter()
    uncollected = 0
    while True:
        if health.unsent is not None:
            readable, writable, _ = select.select([stdin_fd], [health.fd], [])
            if writable:
                health.flush()
            if not readable:
                continue
        data = os.read(stdin_fd, READ_BYTES)
        if not data:
            return
        lines: list[str] = []
        for ts, batch in reader.feed(data):
            lines.extend(formatter.lines(ts, batch))
        if lines:
            log.write(lines)
        health.report([log.problem, log.dropped])
        uncollected += len(lines)
        if uncollected >= COLLECT_EVERY_LINES:
            gc.collect()
            uncollected = 0


def _detach_from_stop_signals() -> None:
    """Ignore the balancer's stop signals; they were blocked across the spawn, so none slipped in."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _say(line: str) -> None:
    """One line on stderr (the balancer's), for whoever watches it when the log file cannot be."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    _detach_from_stop_signals()
    parser = argparse.ArgumentParser(prog="python -m balancer.logwriter", description=__doc__.split("\n")[0])
    parser.add_argument("path")
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--backups", type=int, required=True)
    parser.add_argument("--retry-s", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        os.nice(NICENESS)
    except OSError:
        pass  # a lower priority is a courtesy, not a need
    log = LogFile(args.path, args.max_bytes, args.backups, args.retry_s)
    health = Health(sys.stdout.fileno())
    log.open()
    health.report([log.problem, log.dropped])
    gc.disable()
    try:
        serve(log, health, sys.stdin.fileno())
    finally:
        log.close()
        health.last([log.problem, log.dropped])
    return 0


if __name__ == "__main__":
    sys.exit(main())
