"""Unit tests of the journal and the log writer: replay, torn tails, damage, compaction, failing disks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer import eventlog
from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.records import EARLIER
from balancer.scheduler import ACCEPTED, FINISHED, Scheduler
from tests.harness import wait_until
from wire import events as ev
from wire import protocol as p


def written(path: Path, *batches: list[tuple]) -> jr.Journal:
    journal = jr.Journal(str(path), fsync_interval_s=0.001)
    journal.open([])
    for batch in batches:
        journal.append(batch)
    journal.close()
    return journal


def accepted(cid: int, rid: int, prio: int = 5) -> tuple:
    return (ACCEPTED, cid, rid, prio, b"route", f"payload {rid}".encode())


def finished(cid: int, rid: int, prio: int = 5) -> tuple:
    return (FINISHED, cid, rid, prio, p.PROCESSED, 0, 1, f"result {rid}".encode())


def test_replay_splits_unfinished_from_finished_in_order(tmp_path: Path):
    """The last record per request decides; unfinished ones come back in arrival order."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1), accepted(1, 2), accepted(2, 1)], [finished(1, 2)], [accepted(1, 3)])
    rec = jr.replay(str(path), keep_finished=100)
    assert [(r[1], r[2]) for r in rec.pending] == [(1, 1), (2, 1), (1, 3)]
    assert [(r[1], r[2], r[7]) for r in rec.finished] == [(1, 2, b"result 2")]
    assert rec.torn_bytes == 0


def test_a_torn_tail_is_cut_off_and_the_rest_survives(tmp_path: Path):
    """A crash in the middle of a write loses only the incomplete record."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1)], [accepted(1, 2)])
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    rec = jr.replay(str(path), keep_finished=100)
    assert [r[2] for r in rec.pending] == [1]
    assert rec.torn_bytes > 0


def test_missing_journal_is_empty_and_foreign_file_is_refused(tmp_path: Path):
    """No file means a fresh start; a file that is not a journal is an error, never silently overwritten."""
    assert jr.replay(str(tmp_path / "none"), 10).records == 0
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"".join(p.encode_records([[1, 2, 3]])))
    with pytest.raises(jr.JournalError, match="not a zlb journal"):
        jr.replay(str(foreign), 10)


def test_replay_keeps_results_of_the_newest_finished_and_ids_of_the_rest(tmp_path: Path):
    """Finished requests beyond keep_finished lose their results, not their ids, as they do in memory."""
    path = tmp_path / "j"
    written(path, [accepted(1, i) for i in range(5)], [finished(1, i) for i in range(5)])
    kept = jr.replay(str(path), keep_finished=2).finished
    assert [(r[0], r[2]) for r in kept] == [(EARLIER, 0), (EARLIER, 1), (EARLIER, 2), (FINISHED, 3), (FINISHED, 4)]
    assert kept[0] == [EARLIER, 1, 0, p.PROCESSED, None]  # written before digests were kept: none known
    assert {r[0] for r in jr.replay(str(path), keep_finished=0).finished} == {EARLIER}
    assert {r[0] for r in jr.replay(str(path)).finished} == {FINISHED}


def test_ids_already_past_their_results_leave_keep_finished_to_results(tmp_path: Path):
    """A compacted file lists the ids kept past their results after every result: keep_finished counts
    results only, so those ids take no result's place."""
    path = tmp_path / "j"
    earlier = [(EARLIER, 1, rid, p.PROCESSED, None) for rid in range(10, 13)]
    written(path, [finished(1, i) for i in range(3)], earlier)
    kept = jr.replay(str(path), keep_finished=2).finished
    ids = [(EARLIER, rid) for rid in range(10, 13)]
    assert [(r[0], r[2]) for r in kept] == [(EARLIER, 0), (FINISHED, 1), (FINISHED, 2), *ids]


def test_restore_requeues_unfinished_and_answers_finished_resubmissions(tmp_path: Path):
    """A restored scheduler dispatches the unfinished work and re-answers a finished request without running it."""
    path = tmp_path / "j"
    written(path, [accepted(1, 1, prio=5), accepted(1, 2, prio=1), accepted(1, 3)], [finished(1, 3)])
    sched = Scheduler(journal=True)
    jr.restore(sched, jr.replay(str(path), 100))
    sched.hello(b"n", 0, 4, 1, "h", 0.0)
    assert [(req.request_id, req.priority) for _n, _t, req in sched.dispatch()] == [(2, 1), (1, 5)]
    assert sched.submit(1, 3, 5, b"new-route", b"again").name == "FINISHED"
    # Restored, it was finished by an earlier balancer: the answer is marked as a replay.
    assert [(r.request_id, r.body, r.route) for r in sched.outbox.replays] == [(3, b"result 3", b"new-route")]
    assert sched.journal == []  # restoring writes nothing new


def test_compaction_rewrites_the_file_to_the_live_state(tmp_path: Path):
    """After compaction the file replays to the same state and holds only live records."""
    path = tmp_path / "j"
    sched = Scheduler(journal=True, keep_finished=1)
    journal = jr.Journal(str(path))
    journal.open([])
    sched.hello(b"n", 0, 10, 1, "h", 0.0)
    for rid in range(1, 4):
        sched.submit(1, rid, 5, b"r", b"x")
    for _node, ticket, _req in sched.dispatch()[:2]:
        sched.complete(b"n", ticket, True, b"ok", 1.0)
    journal.append(sched.journal)
    run = Compaction(journal, sched)
    wait_until(run.step, 10, "the compaction to finish")
    journal.close()
    rec = jr.replay(str(path), 10)
    assert rec.records == 1 + 3  # the magic record, one finished (keep_finished=1), one id past it, one assigned
    assert [(r[0], r[2]) for r in rec.finished] == [(FINISHED, 2), (EARLIER, 1)]  # ids after every request
    assert [r[2] for r in rec.pending] == [3]


def test_tickets_start_where_told():
    """A balancer's first ticket is the one it was given, so a restarted balancer never reuses one."""
    sched = Scheduler(first_ticket=1_000_000)
    sched.hello(b"n", 0, 1, 1, "h", 0.0)
    sched.submit(1, 1, 5, b"r", b"x")
    assert [t for _n, t, _r in sched.dispatch()] == [1_000_001]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 2), st.integers(0, 15), st.integers(1, 3)),
        st.tuples(st.just("complete"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("kill"), st.integers(0, 1)),
        st.tuples(st.just("hello"), st.integers(0, 1)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_replaying_the_journal_rebuilds_what_the_scheduler_remembers(tmp_path_factory, script):
    """Whatever happened, a restart from the journal knows the same unfinished and finished requests."""
    path = tmp_path_factory.mktemp("j") / "journal"
    sched = Scheduler(journal=True, max_attempts=2)
    journal = jr.Journal(str(path))
    journal.open([])
    now = 0.0
    for op in script:
        now += 0.1
        if op[0] == "submit":
            sched.submit(op[1], op[2], op[3], b"route", f"payload {op[1]} {op[2]}".encode())
        elif op[0] == "hello":
            sched.hello(f"node{op[1]}".encode(), op[1], 2, 1, "h", now)
        elif op[0] == "kill" and f"node{op[1]}".encode() in sched.routes:
            sched.bye(f"node{op[1]}".encode())
        elif op[0] == "complete":
            node = sched.routes.get(f"node{op[1]}".encode())
            if node is not None and node.in_flight:
                sched.complete(node.route, next(iter(node.in_flight)), op[2], b"result", now)
        sched.dispatch()
        journal.append(sched.journal)
        sched.journal.clear()
    journal.close()
    restored = Scheduler()
    jr.restore(restored, jr.replay(str(path), sched.kept.keep))

    def view(s: Scheduler) -> dict:
        # Unfinished requests come back waiting with their payload; finished ones with their status and result.
        finished = (p.PROCESSED, p.FAILED)
        return {
            (r.client_id, r.request_id): (r.status if r.status in finished else "unfinished", r.priority, r.body)
            for r in s.requests()
        }

    assert view(restored) == view(sched)


# ---- damage, failures and full disks -----------------------------------------------------------


def thirty_waiting(path: Path) -> bytes:
    written(path, *([accepted(1, rid)] for rid in range(1, 31)))
    return path.read_bytes()


def test_a_flipped_byte_mid_file_costs_one_request_and_is_counted(tmp_path: Path):
    """Replay resumes after a damaged record: 29 of 30 come back and the loss is counted."""
    path = tmp_path / "j"
    data = bytearray(thirty_waiting(path))
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    rec = jr.replay(str(path), 100)
    assert len(rec.pending) == 29
    assert (rec.records_lost, rec.bytes_skipped > 0, rec.torn_bytes, rec.damaged) == (1, True, 0, True)
    assert rec.kept_as == ""  # replay only reads


def test_recover_keeps_the_damaged_file_before_anything_rewrites_it(tmp_path: Path):
    """recover() leaves the journal where it is and a byte-identical copy beside it; an intact one is left alone."""
    path = tmp_path / "j"
    data = bytearray(thirty_waiting(path))
    assert jr.recover(str(path), 100).kept_as == ""
    data[40] ^= 0xFF
    path.write_bytes(data)
    rec = jr.recover(str(path), 100)
    assert rec.kept_as.startswith(f"{path}.damaged-")
    assert Path(rec.kept_as).read_bytes() == path.read_bytes() == bytes(data)
    second = jr.recover(str(path), 100).kept_as
    assert second != rec.kept_as and Path(second).exists()  # a second start never overwrites the first copy


def test_a_damaged_first_frame_is_still_our_journal(tmp_path: Path):
    """Damage to the magic record loses it, not the journal: the file is read, not refused."""
    path = tmp_path / "j"
    data = bytearray(thirty_waiting(path))
    data[6] ^= 0xFF  # the magic frame's length
    path.write_bytes(data)
    rec = jr.replay(str(path), 100)
    assert (len(rec.pending), rec.records_lost) == (30, 1)


def test_an_unframed_format_1_journal_is_refused_with_a_reason(tmp_path: Path):
    """A journal of the old format is never rewritten by this one; the error says what it is."""
    old = tmp_path / "old"
    old.write_bytes(b"".join(p.encode_records([(0, "zlb-journal", 1), accepted(1, 1)])))
    with pytest.raises(jr.JournalError, match="unframed format 1"):
        jr.replay(str(old), 10)


REWRITE_UNDER_A_SIZE_LIMIT = """
import os, resource, signal, sys
from balancer import journal as jr
from balancer.compaction import Compaction
from balancer.scheduler import Scheduler
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, not a signal
path, how = sys.argv[1], sys.argv[2]
journal = jr.Journal(path)
journal.open([(1, 1, i, 5, b"r", b"x" * 100) for i in range(10)])
before = open(path, "rb").read()
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    if how == "open":  # a restarted balancer writes its replayed state afresh
        jr.Journal(path).open([(1, 1, i, 5, b"r", b"y" * 1000) for i in range(100)])
    else:
        sched = Scheduler(journal=True)
        for rid in range(100):
            sched.submit(1, rid, 5, b"r", b"y" * 1000)
        run = Compaction(journal, sched)
        while not run.step():
            pass
except jr.JournalError as exc:
    print("refused:", exc)
print("tmp left:", os.path.exists(path + ".tmp"))
print("intact:", open(path, "rb").read() == before)
"""


@pytest.mark.parametrize("how", ["open", "compaction"])
def test_a_rewrite_that_cannot_be_written_whole_fails_cleanly(tmp_path: Path, how: str):
    """A short write then EFBIG (a file-size limit, as a full disk would) fails the rewrite and keeps the old file."""
    done = subprocess.run(
        [sys.executable, "-c", REWRITE_UNDER_A_SIZE_LIMIT, str(tmp_path / "j"), how],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert done.returncode == 0, done.stderr
    assert "refused: cannot write journal" in done.stdout and "File too large" in done.stdout
    assert "tmp left: False" in done.stdout
    assert "intact: True" in done.stdout


def test_a_failed_fsync_is_raised_to_the_loop_not_swallowed(tmp_path: Path):
    """When the fsync thread's fsync fails, check() and the next append() raise it; close() does not hide it."""
    journal = jr.Journal(str(tmp_path / "j"), fsync_interval_s=0.001)
    journal.open([])
    fd = journal._fd
    os.close(fd)  # the descriptor goes bad under the fsync thread: a real EBADF from fsync
    journal._dirty.put((0, 0, 0, 0))
    wait_until(lambda: journal.failure is not None, 5, "the fsync thread to report")
    with pytest.raises(jr.JournalError, match="cannot fsync journal"):
        journal.check()
    with pytest.raises(jr.JournalError, match="cannot fsync journal"):
        journal.append([accepted(1, 1)])
    journal._fd = os.open(os.devnull, os.O_WRONLY)  # something closable, so close() can finish
    journal.close()


def test_a_log_file_that_cannot_be_written_degrades_visibly_and_stays_bounded(monkeypatch):
    """On a full disk (/dev/full) the log writer lives on: it drops and counts lines and says so once."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to give ENOSPC on write")
    monkeypatch.setattr(eventlog, "MAX_QUEUED_EVENTS", 50)
    log = eventlog.EventLog("/dev/full")
    log.add(0.0, [(ev.NODE_UP, 1)])
    wait_until(lambda: log.health_events(), 5, "the writer to go degraded")
    assert log.health_events() == []  # said once
    assert log.dropped_lines >= 1
    for _ in range(200):  # far more than the queue may hold, whatever the writer does meanwhile
        log.add(0.0, [(ev.NODE_UP, 1)])
    writer = log._writer
    assert writer is not None and writer.queued_events <= 50  # waiting for room in the pipe
    log.close()
    assert log.dropped_lines == 201


def test_a_log_file_that_comes_back_is_written_again(tmp_path: Path, monkeypatch):
    """A log path that could not be opened is tried again; the writer then says it resumed."""
    monkeypatch.setattr(eventlog, "LOG_RETRY_INTERVAL_S", 0.05)
    path = tmp_path / "balancer.log"
    path.mkdir()  # opening a directory for append fails with a real OSError
    log = eventlog.EventLog(str(path))
    log.add(0.0, [(ev.NODE_UP, 1)])
    [degraded] = wait_until(lambda: log.health_events(), 5, "the writer to go degraded")
    assert degraded[0] == ev.SYSTEM_LOG_DEGRADED
    path.rmdir()

    def resumed() -> list:
        log.add(0.0, [(ev.NODE_UP, 2)])
        return log.health_events()

    [back] = wait_until(resumed, 5, "the writer to resume")
    log.close()
    assert back[:2] == (ev.SYSTEM_LOG_RESUMED, str(path))
    assert "Server 2 marked as up" in path.read_text()


def test_recent_events_are_the_newest_in_order_without_copying_the_ring():
    """`recent(n)` gives the newest n stamped events oldest first, across batches; None gives all."""
    from balancer.eventlog import EventLog

    log = EventLog(None)
    for i in range(10):
        log.add(float(i), [("k", i, j) for j in range(3)])
    assert log.recent(4) == [[8.0, "k", 8, 2], [9.0, "k", 9, 0], [9.0, "k", 9, 1], [9.0, "k", 9, 2]]
    assert log.recent(0) == [] and len(log.recent(None)) == 30 and len(log.recent(100)) == 30


def test_compaction_comes_while_ids_kept_past_their_results_pile_up(tmp_path: Path, monkeypatch):
    """Every request adds two records and ends as one id kept for a day: the file must still come due,
    or its dead ACCEPTED records (payloads and all) would grow until the ids' cap."""
    monkeypatch.setattr(jr, "COMPACT_SLACK_RECORDS", 10)
    journal = jr.Journal(str(tmp_path / "j"))
    journal.open([])
    due_at = None
    for done in range(1, 100):
        journal.append([(ACCEPTED, 1, done, 5, b"r", b"x" * 100), (FINISHED, 1, done, 5, "processed", 0, 1, b"ok", -1)])
        if journal.due_for_compaction(0, ids=done):
            due_at = done
            break
    journal.close()
    assert due_at is not None and due_at <= 12


def test_compaction_comes_when_big_payloads_grow_the_file_not_only_records(tmp_path: Path, monkeypatch):
    """At 1 MiB a request, the records' rule alone let the file grow ~100 GB between compactions: it also
    comes due once the file grew COMPACT_SLACK_BYTES beyond twice its size when last written afresh."""
    monkeypatch.setattr(jr, "COMPACT_SLACK_BYTES", 100_000)
    journal = jr.Journal(str(tmp_path / "j"))
    journal.open([(FINISHED, 1, 0, 5, "processed", 0, 1, b"r" * 30_000, -1)])  # a state of ~30 KB
    due_at = None
    for done in range(1, 100):
        finished = (FINISHED, 1, done, 5, "processed", 0, 1, b"y" * 10_000, -1)
        journal.append([(ACCEPTED, 1, done, 5, b"r", b"x" * 10_000), finished])
        if journal.due_for_compaction(1, ids=done):
            due_at = done
            break
    journal.close()
    # 2 x ~30 KB + 100 KB: due after ~8 requests of 20 KB (the records' rule: 50,000 records)
    assert due_at is not None and 6 <= due_at <= 10
