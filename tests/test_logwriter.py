"""The log-file writer child (balancer/logwriter.py) with real processes: text, order, rotation, lifetime, failures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balancer import eventlog
from balancer.eventlog import EventLog
from tests.harness import Endpoints, ProcessGroup, scaled, start_balancer, wait_until
from wire import events as ev

ROOT = Path(__file__).resolve().parents[1]


def sample_batch(i: int) -> list[tuple]:
    """Events of every shape the loop logs: emoji, None, floats, a kind the wording does not know."""
    return [
        (ev.REQUEST_ADDED, 3, i, 5),
        (ev.REQUEST_ASSIGNED, 3, i, 1, 2),
        (ev.REQUEST_FAILED, 3, i, None, "handler raised ValueError: no"),
        (ev.NODE_DEAD, 1, 1.25 + i, 4),
        (ev.SYSTEM_CLIENT_REFUSED, 9, "a second process holds client id 9"),
        ("future.kind", i, "x"),
    ]


def expected_text(batches: list[tuple[float, list[tuple]]]) -> str:
    return "".join(ev.log_line([ts, *event]) + "\n" for ts, batch in batches for event in batch)


def writer_pid(log: EventLog) -> int:
    assert log._writer is not None and log._writer.pid is not None
    return log._writer.pid


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_if_running(pid: int) -> None:
    if running(pid):
        os.kill(pid, signal.SIGKILL)


def line_count(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("\n") if path.exists() else 0


def test_lines_reach_the_file_in_order_with_the_text_of_log_line(tmp_path: Path):
    """Byte for byte what `ev.log_line` gives, batch after batch, stamps to the millisecond."""
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    batches = [(1_700_000_000.0005 + i * 0.0137, sample_batch(i)) for i in range(200)]
    try:
        for ts, batch in batches:
            log.add(ts, batch)
    finally:
        log.close()
    assert path.read_text(encoding="utf-8") == expected_text(batches)
    assert log.dropped_lines == 0 and log.health_events() == []
    assert len(log.recent(None)) == 1200  # the ring is the ring, whatever the file does


def test_batches_wait_for_the_hand_over_interval_then_go_together(tmp_path: Path, monkeypatch):
    """add() hands the writer a batch at once after a quiet spell, keeps the next ones back for
    HANDOVER_S (fewer wake-ups of the child), and the tick (health_events) hands them over."""
    monkeypatch.setattr(eventlog, "HANDOVER_S", 60.0)  # a slow machine must not end the interval mid-test
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    try:
        first, second, third = (1000.0, sample_batch(0)), (1000.01, sample_batch(1)), (1000.02, sample_batch(2))
        log.add(*first)
        wait_until(lambda: path.exists() and path.read_text(encoding="utf-8") == expected_text([first]), 10, "first")
        log.add(*second)
        log.add(*third)
        assert log._writer is not None and log._writer.queued_events == len(second[1]) + len(third[1])
        log.health_events()
        want = expected_text([first, second, third])
        wait_until(lambda: path.read_text(encoding="utf-8") == want, 10, "the kept-back batches")
    finally:
        log.close()


def test_the_file_rotates_at_max_bytes_and_keeps_the_backups_asked_for(tmp_path: Path):
    """Rotation as before: a file that reached max_bytes becomes .1, .1 becomes .2, older ones go."""
    path = tmp_path / "balancer.log"
    log = EventLog(str(path), max_bytes=2000, backups=2)
    batches = [(1000.0 + i, sample_batch(i)) for i in range(30)]
    files = [Path(f"{path}.2"), Path(f"{path}.1"), path]

    def written(last_line: str) -> bool:  # the file may have rotated right after the write
        return any(_text(f).endswith(last_line) for f in files[1:])

    try:
        for ts, batch in batches:  # one write per batch: the loop's tick hands over what add() kept back
            log.add(ts, batch)
            wait_until(lambda b=[(ts, batch)]: log.dropped_lines == 0 and written(expected_text(b)), 10, "the batch")
    finally:
        log.close()
    assert all(f.stat().st_size >= 2000 for f in files[:2]) and not Path(f"{path}.3").exists()
    kept = "".join(f.read_text(encoding="utf-8") for f in files if f.exists())  # the last write may have rotated
    assert expected_text(batches).endswith(kept) and kept.startswith("1970-01-01T00:")  # whole lines, oldest first


KILLED_BALANCER = """
import os, select, sys
from balancer.eventlog import EventLog
from wire import events as ev

log = EventLog(sys.argv[1])
for i in range(50):
    log.add(1000.0 + i, [(ev.REQUEST_ADDED, 1, i * 100 + j, 5) for j in range(100)])
writer = log._writer
while writer.queued_events:  # every batch handed over: in the pipe, none waiting here
    select.select([], [writer._fd_in], [], 1)
    log.health_events()
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(writer.pid))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
sys.stdin.read()  # until kill -9
"""


def test_a_balancer_killed_with_kill_9_leaves_every_line_it_handed_over(tmp_path: Path):
    """The writer reads to EOF, writes it all and exits when its balancer is gone."""
    path, pid_file = tmp_path / "balancer.log", tmp_path / "writer.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    balancer = subprocess.Popen(
        [sys.executable, "-c", KILLED_BALANCER, str(path), str(pid_file)], stdin=subprocess.PIPE, env=env
    )
    child = 0
    try:
        child = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 15, "the batches handed over"))
        os.kill(balancer.pid, signal.SIGKILL)
        balancer.wait(10)
        wait_until(lambda: not running(child), 10, "the orphaned writer to finish")
    finally:
        if balancer.poll() is None:
            balancer.kill()
            balancer.wait(10)
        if child:
            kill_if_running(child)
    expected = [(1000.0 + i, [(ev.REQUEST_ADDED, 1, i * 100 + j, 5) for j in range(100)]) for i in range(50)]
    assert path.read_text(encoding="utf-8") == expected_text(expected)


def test_a_full_pipe_drops_and_counts_rather_than_block_the_loop(tmp_path: Path, monkeypatch):
    """A stopped writer: add() stays quick, batches beyond the cap are dropped and counted, the rest arrive."""
    monkeypatch.setattr(eventlog, "MAX_QUEUED_EVENTS", 10_000)
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    pid = writer_pid(log)
    writer = log._writer
    assert writer is not None
    os.kill(pid, signal.SIGSTOP)
    kept: list[tuple[float, list[tuple]]] = []
    slowest = 0.0
    try:
        for i in range(100):
            batch = [(ev.REQUEST_ADDED, 2, i * 1000 + j, 5) for j in range(1000)]
            dropped_before = writer.dropped_queueing
            started = time.perf_counter()
            log.add(1000.0 + i, batch)
            slowest = max(slowest, time.perf_counter() - started)
            if writer.dropped_queueing == dropped_before:
                kept.append((1000.0 + i, batch))
        dropped = log.dropped_lines
        assert writer.queued_events <= 10_000 + 1000
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert slowest < scaled(0.1), f"an add() took {slowest:.3f} s"  # a blocked write would never return
        assert dropped == 100_000 - 1000 * len(kept) > 0

        def caught_up() -> bool:
            log.health_events()  # the loop's tick: it also hands over what waited here
            return line_count(path) >= 1000 * len(kept)

        wait_until(caught_up, 20, "the writer to catch up")
    finally:
        log.close()
    assert path.read_text(encoding="utf-8") == expected_text(kept)
    assert log.dropped_lines == dropped


def test_a_writer_that_dies_degrades_the_log_visibly_once(tmp_path: Path, capfd):
    """kill -9 of the writer: the balancer carries on, says why once, and counts every later line."""
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    try:
        log.add(1000.0, [(ev.NODE_UP, 1)])
        wait_until(lambda: line_count(path) == 1, 10, "the first line")
        os.kill(writer_pid(log), signal.SIGKILL)
        [degraded] = wait_until(log.health_events, 10, "the writer's death to show")
        assert degraded == (ev.SYSTEM_LOG_DEGRADED, str(path), "log writer exited (killed by signal 9)")
        log.add(1001.0, [(ev.NODE_UP, 2)] * 3)
        assert log.dropped_lines == 3 and log.health_events() == []
    finally:
        log.close()
    assert "zlb balancer: error: log writer exited (killed by signal 9)" in capfd.readouterr().err
    assert line_count(path) == 1


@pytest.mark.parametrize(
    ("executable", "reason"),
    [("no-such-python", "cannot start log writer: [Errno 2]"), ("false", "log writer exited (code 1)")],
)
def test_a_writer_that_fails_at_start_degrades_the_log_not_the_balancer(
    tmp_path: Path, monkeypatch, executable: str, reason: str
):
    """No interpreter to run, or one that exits at once: degraded, lines counted, close() returns."""
    monkeypatch.setattr(sys, "executable", shutil.which(executable) or str(tmp_path / executable))
    log = EventLog(str(tmp_path / "balancer.log"))
    try:
        [degraded] = wait_until(log.health_events, 10, "the failed start to show")
        assert degraded[:2] == (ev.SYSTEM_LOG_DEGRADED, str(tmp_path / "balancer.log"))
        assert degraded[2].startswith(reason)
        log.add(1000.0, [(ev.NODE_UP, 1)] * 2)
        assert log.dropped_lines == 2
    finally:
        log.close()


def test_the_writer_ignores_the_stop_signals_meant_for_the_balancer(tmp_path: Path):
    """A Ctrl-C reaches the whole process group, even while the writer starts: it writes on and ends at close."""
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(writer_pid(log), signum)  # at once: the writer may still be starting
        log.add(1000.0, [(ev.NODE_UP, 1)])
    finally:
        log.close()
    assert log._writer is not None and log._writer._proc is not None and log._writer._proc.returncode == 0
    assert line_count(path) == 1 and log.health_events() == []


def test_no_log_file_starts_no_writer():
    log = EventLog(None)
    log.add(1000.0, [(ev.NODE_UP, 1)])
    assert log._writer is None and log.dropped_lines == 0 and log.health_events() == []
    log.close()


def test_a_balancer_stopped_by_sigterm_closes_its_writer_after_the_last_line(procs: ProcessGroup, endpoints: Endpoints):
    """SIGTERM to the balancer alone: it logs its stop, closes the pipe, and the writer is gone with it."""
    balancer = start_balancer(procs, endpoints, 100)
    [child] = wait_until(lambda: children_of(balancer.proc.pid), 10, "the log writer")
    balancer.proc.popen.send_signal(signal.SIGTERM)
    try:
        assert balancer.proc.wait(15) == 0
        wait_until(lambda: not running(child), 5, "the writer to exit")
    finally:
        kill_if_running(child)
    assert " system.stopping " in (procs.workdir / "balancer.log").read_text(encoding="utf-8")


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid`, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if running(c)]


def test_a_writer_that_dies_is_started_again_and_the_file_goes_on(tmp_path: Path, monkeypatch):
    """kill -9 of the writer: degraded at once, a new writer LOG_RETRY_INTERVAL_S later, resumed,
    and lines reach the file again; lines dropped meanwhile stay counted."""
    monkeypatch.setattr(eventlog, "LOG_RETRY_INTERVAL_S", 0.2)
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    try:
        log.add(1000.0, [(ev.NODE_UP, 1)])
        wait_until(lambda: line_count(path) == 1, 10, "the first line")
        first = writer_pid(log)
        os.kill(first, signal.SIGKILL)
        [degraded] = wait_until(log.health_events, 10, "the writer's death to show")
        assert degraded[0] == ev.SYSTEM_LOG_DEGRADED
        log.add(1001.0, [(ev.NODE_UP, 2)] * 3)  # nobody to write them: dropped and counted
        [resumed] = wait_until(log.health_events, 10, "a new writer")
        assert resumed == (ev.SYSTEM_LOG_RESUMED, str(path), 3) and writer_pid(log) != first
        log.add(1002.0, [(ev.NODE_UP, 3)])
        wait_until(lambda: log.health_events() == [] and line_count(path) == 2, 10, "the line after the restart")
    finally:
        log.close()
    assert log.dropped_lines == 3
    assert "Server 3 marked as up" in path.read_text(encoding="utf-8")


def test_a_writer_far_behind_keeps_warnings_and_drops_routine_lines(tmp_path: Path, monkeypatch):
    """Beyond MAX_QUEUED_EVENTS waiting, INFO events are dropped and counted, warnings still go."""
    monkeypatch.setattr(eventlog, "MAX_QUEUED_EVENTS", 1000)
    monkeypatch.setattr(eventlog, "HANDOVER_S", 60.0)  # everything waits on this side until the tick
    path = tmp_path / "balancer.log"
    log = EventLog(str(path))
    routine = [(ev.REQUEST_ADDED, 2, j, 5) for j in range(1000)]
    warning = (ev.NODE_DEAD, 4, 1.5, 7)
    try:
        log.add(1000.0, [(ev.NODE_UP, 1)])  # the first goes at once; later ones wait for the tick
        log.add(1001.0, routine)
        log.add(1002.0, [*routine, warning])
        assert log._writer is not None and log._writer.dropped_queueing == 1000
        wait_until(lambda: log.health_events() == [] and line_count(path) == 1002, 10, "the kept lines")
    finally:
        log.close()
    text = path.read_text(encoding="utf-8")
    assert ev.log_line([1002.0, *warning]) in text and text.count("added to queue") == 1000
    assert log.dropped_lines == 1000


def _text(path: Path) -> str:
    """A file's text, or '' if it is not there (the writer may rename it between a look and a read)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
