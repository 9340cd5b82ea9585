"""Handler threads a node can walk away from.

Handlers are user code and may never return. The pool's threads are daemon
threads, so a node that must exit (SIGTERM past --grace-s, a FENCED session)
exits at once instead of joining a handler stuck for minutes; the work it
abandoned was handed back to the balancer first. A process per handler
would also be abandonable, but it costs a pickle and a pipe hop per request
(measured in docs/RELIABILITY.md); threads cost neither.

Finished work comes back to the node's loop through a queue plus a wake-up
pipe that the loop's poller watches, so no socket is shared between threads.

Cancelled work is abandoned: a fresh thread takes its place at once (the node's
slot is free again), and the thread that ran it exits when its handler returns,
its result dropped, so the pool is back to its size. The abandoned tickets are a
set the loop adds to and the threads read and discard (each a single operation
under the GIL): no lock.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

Job = tuple[int, Any]  # (ticket, what the runner takes)
Done = tuple[int, bool, bytes]  # (ticket, ok, result)


class HandlerPool:
    """`size` daemon threads running `runner(work) -> (ok, result)` for queued jobs."""

    def __init__(self, size: int, runner: Callable[[Any], tuple[bool, bytes]]) -> None:
        self._runner = runner
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._abandoned: set[int] = set()
        self._threads: list[threading.Thread] = []
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"zlb-handler-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def abandon(self, ticket: int) -> None:
        """Give up on a job (cancelled): its result is dropped, and a new thread takes its place now."""
        self._abandoned.add(ticket)
        self._start_thread()

    def submit(self, ticket: int, work: Any) -> None:
        """Queue a job; its result comes back through `finished()`."""
        self._jobs.put((ticket, work))

    def finished(self) -> list[Done]:
        """Results that are ready (clears the wake-up pipe)."""
        try:
            os.read(self.wake_fd, 65536)
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            ticket, work = job
            if ticket not in self._abandoned:
                ok, result = self._runner(work)
            if ticket in self._abandoned:  # cancelled before or while it ran: a new thread took this one's place
                self._abandoned.discard(ticket)
                return
            self._done.put((ticket, ok, result))
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                return  # the node closed the pipe: it is exiting

    def close(self) -> None:
        """Stop idle threads; busy ones are abandoned (they are daemons)."""
        for _ in self._threads:
            self._jobs.put(None)
        os.close(self.wake_fd)
        os.close(self._wake_w)
