"""The journal as the loop holds it: one owner, records before results, a disk that fails loudly.

JournalKeeper holds the lock (balancer/journal_lock.py), the open Journal
(balancer/journal.py) and the compaction under way (balancer/compaction.py).
At start it takes the lock before anything else (a second balancer on the same
journal stops there, naming the first), then replays the journal into the
scheduler and writes it afresh, saying what was lost (journal_replay.py).

Failing loudly: a failed write, a failed fsync, a failed compaction, or (looked
at once per tick) the file or its lock file deleted, replaced or in a directory
that cannot be written turn the journal *failing*: an ERROR event, the journal
section of `zlb status`, and the scheduler refuses new submissions as busy
(clients back off and re-send). Nothing more goes to the broken file; the loop
holds every result, since a result leaves only once its FINISHED record is
written, while the nodes finish the work already accepted. Every retry
interval (doubling up to RETRY_MAX_S) it tries to recover: lock the file again
(unless another balancer took it meanwhile) and write a fresh snapshot of the
whole state, fsynced, as a start does; then it accepts again, the held results
leave, and an event says so. The snapshot is written inline: a few hundred ms
for 500,000 requests, once per recovery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.journal_format import JournalError, Mark
from balancer.journal_lock import JournalLock
from balancer.scheduler import Scheduler
from wire import events as ev
from wire.protocol import REASON_BUSY

RETRY_MIN_S = 0.5
RETRY_MAX_S = 8.0
# Healthy this long, a later failure's retries start again from RETRY_MIN_S (a flapping disk backs off).
STEADY_S = 60.0


class JournalKeeper:
    """The lock, the journal and its compaction, and whether the journal can be written now."""

    def __init__(
        self,
        path: str,
        sched: Scheduler,
        counters: dict[str, int],
        endpoints: dict[str, str],
        keep_finished: int | None,
    ) -> None:
        self.path = path
        self.sched = sched
        self.counters = counters
        self.lock = JournalLock.acquire(path, jr.lock_path(path), endpoints)  # before the journal is read
        try:
            recovered = jr.recover(path, keep_finished)  # keeps a damaged file aside first
            jr.restore(sched, recovered)
            self.journal = jr.Journal(path)
            self.journal.open(jr.snapshot(sched))
        except BaseException:
            self.lock.release()
            raise
        self.compaction: Compaction | None = None
        self.problem: str | None = None  # why the journal cannot be written, while it cannot
        self.retry_problem: str | None = None  # why the last recovery failed
        self.since = time.time()  # when it last turned healthy or failing
        self._failed_at = self._healthy_at = time.monotonic()
        self._retry_s = RETRY_MIN_S
        self._retry_at = 0.0
        self._mark: Mark | None = None
        self._report(recovered)

    def _report(self, recovered: jr.Recovered) -> None:
        """What the start restored and lost, in counters and events."""
        counters = self.counters
        counters["journal_restored_pending"] = len(recovered.pending)
        counters["journal_restored_finished"] = len(recovered.finished)
        counters["journal_records_lost"] = recovered.records_lost
        counters["journal_bytes_skipped"] = recovered.bytes_skipped
        counters["journal_bytes_missing"] = recovered.bytes_missing
        counters["journal_failures"] = counters["journal_recoveries"] = 0
        events = self.sched.events
        if recovered.damaged:
            lost = (recovered.records_lost, recovered.bytes_skipped, recovered.bytes_missing)
            events.append((ev.SYSTEM_JOURNAL_DAMAGED, self.path, *lost, recovered.kept_as))
        if recovered.records:
            restored = (len(recovered.pending), len(recovered.finished), recovered.torn_bytes)
            events.append((ev.SYSTEM_JOURNAL_RESTORED, self.path, *restored))

    @property
    def healthy(self) -> bool:
        """Results may leave: their records are written."""
        return self.problem is None

    def append(self, before_write: Callable[[bytes, int], None] | None = None) -> tuple[bytes, int] | None:
        """The iteration's records in one write, before any of its results leave; dropped while failing.
        The bytes written and how many records they hold (None while failing); `before_write` is given
        them first (a leader's standby: Journal.append)."""
        sched = self.sched
        records = sched.outbox.take_journal()
        if self.problem is not None:
            return None  # the recovery's snapshot holds the state they describe
        try:
            data = self.journal.append(records, before_write)
            live = len(sched.kept) + sched.waiting + sched.in_flight()
            if self.compaction is None and self.journal.due_for_compaction(live, sched.kept.ids.count):
                self.compaction = Compaction(self.journal, sched)  # a slice per iteration
        except JournalError as exc:
            self._fail(str(exc))
            return None
        return data, len(records)

    def step(self) -> None:
        """One slice of the compaction under way (call only while `compaction` is set)."""
        try:
            if self.compaction is not None and self.compaction.step():
                self.compaction = None
        except JournalError as exc:
            self._fail(str(exc))

    def tick(self, now: float) -> None:
        """Once per heartbeat: look at the file and its lock, retry a failing journal, keep the synced mark."""
        if self.problem is None:
            problem = self.journal.problem() or self.lock.problem()
            if problem:
                self._fail(problem)
            elif now - self._healthy_at >= STEADY_S:
                self._retry_s = RETRY_MIN_S
        elif now >= self._retry_at:
            self._recover(now)
        synced = self.journal.synced
        if self.problem is None and synced is not None and synced != self._mark:
            self.lock.write_mark(synced)
            self._mark = synced
        journal, counters = self.journal, self.counters
        counters["journal_records"] = journal.appended
        counters["journal_bytes"] = journal.bytes_written
        counters["journal_compactions"] = journal.compactions

    def _fail(self, reason: str) -> None:
        now = time.monotonic()
        self.problem, self.since, self._failed_at = reason, time.time(), now
        self._retry_at = now + self._retry_s
        if self.compaction is not None:
            self.journal.abandon_rewrite()
            self.compaction = None
        self.sched.refusing = f"{REASON_BUSY}: the balancer's journal cannot be written ({reason}); re-send later"
        self.counters["journal_failures"] += 1
        self.sched.events.append((ev.SYSTEM_JOURNAL_FAILED, self.path, reason))

    def _recover(self, now: float) -> None:
        """Lock the file again and write the whole state afresh; or try again later, backing off."""
        problem = self.lock.renew()
        if problem is None:
            records = jr.snapshot(self.sched)
            try:
                self.journal.reopen(records)
                problem = self.journal.problem()
            except JournalError as exc:
                problem = str(exc)
        if problem is not None:
            self.retry_problem = problem
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            self._retry_at = now + self._retry_s
            return
        self.problem = self.retry_problem = None
        self.since, self._healthy_at = time.time(), now
        self.sched.refusing = ""
        self.counters["journal_recoveries"] += 1
        failing_s = round(now - self._failed_at, 1)
        self.sched.events.append((ev.SYSTEM_JOURNAL_RECOVERED, self.path, failing_s, len(records)))

    def view(self) -> dict[str, Any]:
        """The journal section of `zlb status`."""
        return {
            "path": self.path,
            "healthy": self.problem is None,
            "since": self.since,
            "reason": self.problem,
            "retry_error": self.retry_problem,
            "lock": self.lock.path,
        }

    def close(self) -> None:
        """Flush the journal and keep its last mark, then unlock; raise if the flush failed or it was failing."""
        try:
            self.journal.close()
            if self.problem is None and self.journal.synced is not None:
                self.lock.write_mark(self.journal.synced)
        finally:
            self.lock.release()
        if self.problem is not None:
            raise JournalError(f"journal {self.path} could not be written when the balancer stopped: {self.problem}")
