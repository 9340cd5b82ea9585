"""Unit tests of the journal's owner: its lock, its synced mark, and a journal that fails and recovers.

Real files in a temporary directory, no sockets: the JournalKeeper is driven
the way the loop drives it (append after each iteration, tick once per
heartbeat) with the time passed in.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from balancer import journal as jr
from balancer import journal_format as jf
from balancer import journal_keeper
from balancer.journal_keeper import JournalKeeper
from balancer.journal_lock import JournalLock, JournalLocked
from balancer.records import ACCEPTED, Submitted
from balancer.scheduler import Scheduler
from tests.harness import wait_until
from wire import events as ev
from wire import protocol as p
from wire.protocol import REASON_BUSY

ENDPOINTS = {"frontend": "tcp://127.0.0.1:1", "backend": "tcp://127.0.0.1:2", "events": "x", "control": "y"}


def keeper_with(path: Path, waiting: int = 0) -> tuple[JournalKeeper, Scheduler]:
    """A keeper on `path` whose scheduler accepted `waiting` requests, written to the journal."""
    sched = Scheduler(journal=True)
    keeper = JournalKeeper(str(path), sched, {}, ENDPOINTS, 100)
    for rid in range(waiting):
        assert sched.submit(1, rid, 5, b"route", b"payload %05d" % rid) is Submitted.QUEUED
    keeper.append()
    return keeper, sched


def synced(keeper: JournalKeeper, records: int) -> None:
    """Wait for the fsync thread to cover `records` frames, and let a tick write the mark."""
    wait_until(lambda: keeper.journal.synced and keeper.journal.synced.records == records, 5, "the fsync")
    keeper.tick(time.monotonic())


def kinds(sched: Scheduler) -> list[str]:
    return [event[0] for event in sched.outbox.take_events()]


# ---- one owner ------------------------------------------------------------------------------------


def test_a_second_owner_is_refused_with_the_first_ones_pid_and_endpoints(tmp_path: Path):
    """The lock file names its holder; a second lock on it fails at once, naming it; released, it is free."""
    path = str(tmp_path / "j")
    first = JournalLock.acquire(path, jr.lock_path(path), ENDPOINTS)
    with pytest.raises(JournalLocked) as refused:
        JournalLock.acquire(path, jr.lock_path(path), {"frontend": "tcp://127.0.0.1:9"})
    said = str(refused.value)
    assert f"journal {path} is in use by another balancer: pid {os.getpid()}" in said
    assert "frontend tcp://127.0.0.1:1, backend tcp://127.0.0.1:2" in said and jr.lock_path(path) in said
    assert "\n" not in said
    first.release()
    JournalLock.acquire(path, jr.lock_path(path), ENDPOINTS).release()


def test_a_second_keeper_stops_before_it_reads_or_rewrites_the_journal(tmp_path: Path):
    """The owner's journal is left exactly as it was: same file, same bytes, no temporary beside it."""
    path = tmp_path / "j"
    keeper, _sched = keeper_with(path, waiting=3)
    before = (path.stat().st_ino, path.read_bytes())
    with pytest.raises(JournalLocked, match=f"pid {os.getpid()}"):
        JournalKeeper(str(path), Scheduler(journal=True), {}, ENDPOINTS, 100)
    assert (path.stat().st_ino, path.read_bytes()) == before
    assert not (tmp_path / "j.tmp").exists()
    keeper.close()


def test_the_lock_outlives_a_compaction_renaming_a_new_file_over_the_journal(tmp_path: Path, monkeypatch):
    """A lock on the journal's own inode would stay on the replaced file; the lock file beside it does not move."""
    monkeypatch.setattr(jr, "COMPACT_SLACK_RECORDS", 0)
    path = tmp_path / "j"
    sched = Scheduler(journal=True, keep_finished=1)
    keeper = JournalKeeper(str(path), sched, {}, ENDPOINTS, 1)
    before = path.stat().st_ino
    sched.hello(b"node", 0, 1, 1, "h", 0.0)
    for rid in range(5):  # finished and forgotten: the file holds far more than the live state
        sched.submit(1, rid, 5, b"route", b"x")
        [(_node, ticket, _req)] = sched.dispatch()
        sched.complete(b"node", ticket, True, b"ok", 0.0)
        keeper.append()
    assert keeper.compaction is not None
    wait_until(lambda: keeper.step() or keeper.compaction is None, 10, "the compaction to finish")
    assert path.stat().st_ino != before and keeper.journal.compactions == 1
    with pytest.raises(JournalLocked):
        JournalLock.acquire(str(path), jr.lock_path(str(path)), ENDPOINTS)
    keeper.tick(time.monotonic())
    assert keeper.healthy
    keeper.close()


# ---- what a restart lost, counted against the synced mark -------------------------------------


def test_a_journal_cut_to_half_reports_the_records_it_lost_exactly(tmp_path: Path):
    """400 waiting, the file cut to half its size: about 200 are lost, and replay says how many, not 0 or 1."""
    path = tmp_path / "j"
    keeper, _sched = keeper_with(path, waiting=400)
    synced(keeper, 401)
    keeper.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # in place: the same inode, as `truncate -s` does
    rec = jr.replay(str(path), 100)
    assert 150 < len(rec.pending) < 250
    assert rec.records_lost == 400 - len(rec.pending)
    assert rec.bytes_missing == len(whole) - len(whole) // 2
    assert rec.damaged and rec.torn_bytes == 0


def test_a_zeroed_block_reports_the_records_it_lost_exactly(tmp_path: Path):
    """4 KiB of zeros mid-journal: the count is exact against the mark (it used to say 1 for 63)."""
    path = tmp_path / "j"
    keeper, _sched = keeper_with(path, waiting=400)
    synced(keeper, 401)
    keeper.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    rec = jr.replay(str(path), 100)
    assert len(rec.pending) < 350
    assert rec.records_lost == 400 - len(rec.pending)


def test_a_torn_write_after_the_mark_is_no_loss_and_a_copy_is_not_judged_by_the_mark(tmp_path: Path):
    """Bytes beyond the synced mark may tear in a crash: no alarm. A copy (another inode) ignores the mark."""
    path = tmp_path / "j"
    keeper, _sched = keeper_with(path, waiting=30)
    synced(keeper, 31)
    keeper.close()
    whole = path.read_bytes()
    one_more = jf.frame(p.encode_records([(ACCEPTED, 1, 30, 5, b"route", b"late")]))
    with open(path, "ab") as fh:
        fh.write(one_more[:20])  # the start of one more frame: a write cut short
    rec = jr.replay(str(path), 100)
    assert (len(rec.pending), rec.records_lost, rec.damaged) == (30, 0, False) and rec.torn_bytes == 20
    copy = tmp_path / "copy"
    shutil.copyfile(path, copy)
    shutil.copyfile(jr.lock_path(str(path)), jr.lock_path(str(copy)))
    copy.write_bytes(whole[: len(whole) // 2])
    assert jr.replay(str(copy), 100).bytes_missing == 0  # no mark for this file: only what the bytes show


# ---- a disk that fails loudly --------------------------------------------------------------------


def test_the_journal_notices_its_file_deleted_replaced_or_its_directory_gone(tmp_path: Path):
    """Journal.problem() looks at the open file and its name: each way of losing it is named."""
    folder = tmp_path / "d"
    folder.mkdir()
    journal = jr.Journal(str(folder / "j"))
    journal.open([])
    assert journal.problem() is None
    os.replace(folder / "j", folder / "elsewhere")
    (folder / "j").write_bytes(b"another file")
    assert "was replaced by another file" in journal.problem()
    os.remove(folder / "elsewhere")
    assert "was deleted" in journal.problem()
    journal.reopen([])
    assert journal.problem() is None
    shutil.rmtree(folder)
    assert "was deleted" in journal.problem()
    journal.close()


def test_a_failing_journal_refuses_new_work_as_busy_and_recovers_with_a_fresh_snapshot(tmp_path: Path):
    """Directory removed: failing at the next tick, new submits busy, records dropped; back: the whole state."""
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "j"
    keeper, sched = keeper_with(path, waiting=3)
    kinds(sched)
    shutil.rmtree(folder)
    now = time.monotonic()
    keeper.tick(now)
    assert not keeper.healthy and "was deleted" in keeper.problem
    assert kinds(sched) == [ev.SYSTEM_JOURNAL_FAILED]
    assert sched.submit(2, 1, 5, b"route", b"new") is Submitted.BUSY
    assert sched.last_refusal.startswith(REASON_BUSY) and "journal cannot be written" in sched.last_refusal
    assert sched.submit(1, 0, 5, b"route", b"payload 00000") is Submitted.DUPLICATE  # known ids still answered
    view = keeper.view()
    assert (view["healthy"], view["reason"], view["path"]) == (False, keeper.problem, str(path))
    keeper.tick(now + 1)  # the directory is still gone: the retry fails and backs off
    assert not keeper.healthy and "No such file or directory" in keeper.retry_problem
    folder.mkdir()
    keeper.tick(now + 1.5)  # before the backed-off retry is due
    assert not keeper.healthy
    keeper.tick(now + 1 + journal_keeper.RETRY_MAX_S)
    assert keeper.healthy and sched.refusing == ""
    assert kinds(sched) == [ev.SYSTEM_JOURNAL_RECOVERED]
    assert [r[2] for r in jr.replay(str(path), 100).pending] == [0, 1, 2]
    assert sched.submit(2, 1, 5, b"route", b"new") is Submitted.QUEUED
    keeper.append()
    assert len(jr.replay(str(path), 100).pending) == 4
    assert f'"pid": {os.getpid()}' in Path(jr.lock_path(str(path))).read_text()  # the lock file is back
    keeper.close()


def test_a_recovery_never_writes_over_a_journal_another_balancer_took_meanwhile(tmp_path: Path):
    """Directory removed and made again, a second balancer locked the journal: the first stays failing."""
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "j"
    keeper, _sched = keeper_with(path, waiting=3)
    shutil.rmtree(folder)
    now = time.monotonic()
    keeper.tick(now)
    folder.mkdir()
    other = JournalLock.acquire(str(path), jr.lock_path(str(path)), {"frontend": "tcp://127.0.0.1:7"})
    keeper.tick(now + journal_keeper.RETRY_MAX_S)
    assert not keeper.healthy and "in use by another balancer" in keeper.retry_problem
    assert "tcp://127.0.0.1:7" in keeper.retry_problem
    assert not path.exists()
    other.release()
    with pytest.raises(jr.JournalError, match="could not be written when the balancer stopped"):
        keeper.close()


def test_a_failed_append_turns_the_journal_failing_instead_of_raising(tmp_path: Path):
    """A write error is the journal's failure: said once, refused as busy, nothing raised into the loop."""
    path = tmp_path / "j"
    keeper, sched = keeper_with(path, waiting=1)
    read_only = os.open(path, os.O_RDONLY)
    os.dup2(read_only, keeper.journal._fd)  # the journal's descriptor turns read-only: EBADF from the next write
    os.close(read_only)
    sched.submit(1, 99, 5, b"route", b"x")
    keeper.append()
    assert not keeper.healthy and "cannot append to journal" in keeper.problem
    assert sched.submit(1, 100, 5, b"route", b"x") is Submitted.BUSY
    with pytest.raises(jr.JournalError):
        keeper.close()


def test_the_journal_events_read_as_one_line_each():
    """Failed, recovered and damaged (with a cut) say what happened and what the balancer does about it."""
    failed = ev.message([0.0, ev.SYSTEM_JOURNAL_FAILED, "/j", "journal /j was deleted"])
    assert failed == (
        "Journal /j cannot be written: journal /j was deleted; new requests are refused (busy)"
        " and results held until it can"
    )
    assert ev.level(ev.SYSTEM_JOURNAL_FAILED) == "ERROR"
    recovered = ev.message([0.0, ev.SYSTEM_JOURNAL_RECOVERED, "/j", 7.5, 3])
    assert recovered == (
        "Journal /j is written again after 7.5 s: a fresh snapshot of 3 requests; requests accepted again"
    )
    damaged = ev.message([0.0, ev.SYSTEM_JOURNAL_DAMAGED, "/j", 199, 40, 9000, "/j.damaged-x"])
    assert damaged == (
        "Journal /j was damaged: 199 records lost, 40 bytes skipped, 9000 bytes cut off its end;"
        " the damaged file is kept as /j.damaged-x"
    )
