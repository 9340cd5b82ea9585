"""A damaged or failing journal, and a failing log file, with real processes: what survives, what is reported."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from balancer import journal as jr
from balancer import journal_format as jf
from balancer.records import ACCEPTED
from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, Proc, ProcessGroup, start_balancer, wait_until
from wire import control_client
from wire import protocol as p

pytestmark = pytest.mark.timeout(90)
WAITING = 30
CLIENT_ID = 9


def balancer_with_waiting_requests(
    procs: ProcessGroup, endpoints: Endpoints, journal: Path, count: int = WAITING
) -> LiveBalancer:
    """A journaled balancer with no nodes, so `count` submitted requests all wait, then kill -9 of it."""
    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))
    # No retries: a re-send after the restart would hide what the journal lost.
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=None) as client:
        for rid in range(1, count + 1):
            client.submit(json_payload(0, rid), request_id=rid)
        wait_until(lambda: len(waiting(balancer)) == count, 10, f"{count} requests waiting")
    # The control view is not the journal: the loop answers a control call in the same iteration that
    # accepted a SUBMIT, before it appends that iteration's records, so `waiting` can already count a
    # request whose record is not in the file yet. kill -9 only once the file holds all of them, fsynced
    # and noted in the synced mark (the magic record and one per request), as after any quiet moment.
    wait_until(lambda: synced_frames(journal) == count + 1, 10, f"{count} records synced")
    procs.kill9(balancer.proc)
    return balancer


def synced_frames(journal: Path) -> int:
    """Frames of the journal file as it is now that its synced mark says the last fsync covered."""
    mark = jr.read_mark(str(journal))
    here = journal.stat() if journal.exists() else None
    return mark.records if mark and here and (mark.ino, mark.dev) == (here.st_ino, here.st_dev) else 0


def waiting(balancer: LiveBalancer) -> list[int]:
    return sorted(r["request_id"] for r in balancer.call("requests", client=CLIENT_ID, status="pending", limit=1000))


def status_json(procs: ProcessGroup) -> dict:
    """`zlb status --json`, as an operator would run it."""
    done = procs.run("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def log_text(procs: ProcessGroup) -> str:
    path = procs.workdir / "balancer.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_one_flipped_byte_mid_journal_costs_one_request_and_is_reported(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Issue 10: a byte flipped mid-journal, a restart: ≥28 of 30 come back, the damage is logged, shown and kept."""
    journal = tmp_path / "zlb.journal"
    balancer_with_waiting_requests(procs, endpoints, journal)
    damaged = bytearray(journal.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    journal.write_bytes(damaged)

    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))

    restored = waiting(balancer)
    assert len(restored) >= WAITING - 2
    assert set(restored) <= set(range(1, WAITING + 1))
    counters = status_json(procs)["counters"]
    assert counters["journal_restored_pending"] == len(restored)
    assert counters["journal_records_lost"] >= 1
    assert counters["journal_bytes_skipped"] > 0
    plain = procs.run("status").stdout  # what an operator reads without --json
    assert f"records lost {counters['journal_records_lost']}" in plain
    line = wait_until(
        lambda: next((ln for ln in log_text(procs).splitlines() if "system.journal_damaged" in ln), None),
        10,
        "the damage in the log file",
    )
    assert " ERROR " in line and "records lost" in line
    kept = sorted(tmp_path.glob("zlb.journal.damaged-*"))
    assert [k.read_bytes() for k in kept] == [bytes(damaged)]
    assert str(kept[0]) in line
    # The journal itself was rewritten clean: the next start finds no damage.
    again = jr.replay(str(journal), 100)
    assert (again.records_lost, again.bytes_skipped, len(again.pending)) == (0, 0, len(restored))


def test_a_torn_tail_is_cut_without_alarm(procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path):
    """A crash mid-write (an incomplete last frame, after the synced mark) costs that record only; no alarm."""
    journal = tmp_path / "zlb.journal"
    balancer_with_waiting_requests(procs, endpoints, journal)
    one_more = jf.frame(p.encode_records([(ACCEPTED, CLIENT_ID, WAITING + 1, 5, b"route", b"cut short")]))
    with open(journal, "ab") as fh:
        fh.write(one_more[:-7])  # a write the crash cut short: never fsynced, so beyond the mark

    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))

    assert waiting(balancer) == list(range(1, WAITING + 1))
    counters = balancer.call("status")["counters"]
    assert (counters["journal_records_lost"], counters["journal_bytes_skipped"]) == (0, 0)
    restored = [e for e in balancer.call("logs", format="events") if e["kind"] == "system.journal_restored"]
    assert [(e["pending"], e["torn_bytes"]) for e in restored] == [(WAITING, len(one_more) - 7)]
    assert not any(e["kind"] == "system.journal_damaged" for e in balancer.call("logs", format="events"))
    assert list(tmp_path.glob("zlb.journal.damaged-*")) == []


def test_a_journal_cut_to_half_its_size_reports_the_records_it_lost(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Issue 20: 400 waiting, the journal cut to half its size: the restart says how many records were lost."""
    journal = tmp_path / "zlb.journal"
    balancer_with_waiting_requests(procs, endpoints, journal, 400)
    whole = journal.read_bytes()
    journal.write_bytes(whole[: len(whole) // 2])

    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))

    restored = waiting(balancer)
    assert 150 < len(restored) < 250 and restored == list(range(1, len(restored) + 1))
    counters = status_json(procs)["counters"]
    print(f"restored {len(restored)} of 400; status says {counters['journal_records_lost']} records lost")
    assert counters["journal_records_lost"] == 400 - len(restored)
    assert counters["journal_bytes_missing"] == len(whole) - len(whole) // 2
    line = wait_until(
        lambda: next((ln for ln in log_text(procs).splitlines() if "system.journal_damaged" in ln), None),
        10,
        "the loss in the log file",
    )
    assert " ERROR " in line and f"{400 - len(restored)} records lost" in line and "bytes cut off its end" in line
    plain = procs.run("status").stdout
    assert f"records lost {400 - len(restored)}" in plain
    assert [k.read_bytes() for k in tmp_path.glob("zlb.journal.damaged-*")] == [whole[: len(whole) // 2]]


def start_limited_balancer(procs: ProcessGroup, journal: Path, max_file_bytes: int) -> Proc:
    """`zlb balancer --journal` that may write no file beyond `max_file_bytes` (EFBIG, as a full disk gives ENOSPC)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    out, err = procs.workdir / "limited.out", procs.workdir / "limited.err"
    argv = [sys.executable, "-m", "zlb", "balancer", "--heartbeat-ms", "100", "--log-file", "limited.log", "--journal"]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        popen = subprocess.Popen(
            [*argv, str(journal)], cwd=procs.workdir, env=procs.env, stdout=fo, stderr=fe, preexec_fn=limit
        )
    proc = Proc("limited-balancer", popen, out, err)
    procs.procs.append(proc)  # stopped by PID in teardown with the rest
    return proc


def test_a_journal_that_cannot_be_written_refuses_new_work_and_says_so(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """A full journal disk: the balancer serves on, refusing new work as busy, and says so (status, ERROR once);
    its stop says so too (exit 1, one line); a restart keeps everything written before."""
    journal = tmp_path / "zlb.journal"
    proc = start_limited_balancer(procs, journal, 64 * 1024)
    live = LiveBalancer(endpoints, procs, proc, 100)
    wait_until(lambda: _answers(live), 15, "the limited balancer to answer")
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=None) as client:
        for rid in range(1, 101):  # 2 KiB each: the journal passes 64 KiB about a third of the way
            client.submit(json_payload(0, "x" * 2048), request_id=rid)
        wait_until(lambda: not live.call("status")["journal"]["healthy"], 20, "the journal to fail")
        late = client.submit(json_payload(0, "late"), request_id=101).result(timeout=10)
    assert late.status == "rejected" and late.body.startswith(b"busy: the balancer's journal cannot be written")
    state = live.call("status")["journal"]
    assert "cannot append to journal" in state["reason"] and "File too large" in state["reason"]
    wait_until(lambda: live.call("status")["journal"]["retry_error"], 10, "a recovery to be tried")
    assert "File too large" in live.call("status")["journal"]["retry_error"]  # its snapshot is larger still
    failed = wait_until(
        lambda: [ln for ln in (tmp_path / "limited.log").read_text().splitlines() if "system.journal_failed" in ln],
        10,
        "the failure in the log file",
    )
    assert len(failed) == 1 and " ERROR " in failed[0] and "new requests are refused (busy)" in failed[0]

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 1
    errors = [ln for ln in proc.stderr().splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "could not be written when the balancer stopped" in errors[0]
    assert "Traceback" not in proc.stderr()

    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))
    restored = waiting(balancer)
    assert 10 <= len(restored) < 100 and restored == list(range(1, len(restored) + 1))
    assert balancer.call("status")["counters"]["journal_records_lost"] == 0  # a torn tail at most, not damage
    assert list(tmp_path.glob("zlb.journal.damaged-*")) == []


def _answers(live: LiveBalancer) -> bool:
    if live.proc.popen.poll() is not None:
        raise AssertionError(f"balancer exited with {live.proc.popen.returncode}: {live.proc.stderr()}")
    try:
        live.call("ping")
        return True
    except control_client.BalancerUnreachable:
        return False


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to give ENOSPC on write")
def test_a_log_file_on_a_full_disk_degrades_visibly_and_the_balancer_serves_on(balancer_on_dev_full: LiveBalancer):
    """`--log-file /dev/full`: requests still run; the degraded log shows in zlb logs, status and stderr."""
    balancer = balancer_on_dev_full
    balancer.start_server(0, "--handler", "echo")
    balancer.wait_servers_active({0})
    with Client(balancer.endpoints.frontend, client_id=CLIENT_ID, retry_s=5) as client:
        assert client.submit(b"still served", request_id=1).result(timeout=10).ok

    def degraded() -> list:
        return [e for e in balancer.call("logs", format="events") if e["kind"] == "system.log_degraded"]

    [event] = wait_until(degraded, 10, "the degraded-log event")
    assert "No space left on device" in event["error"]
    wait_until(lambda: balancer.call("status")["counters"].get("log_lines_dropped", 0) > 0, 5, "dropped lines counted")
    log = balancer.call("status")["log"]
    assert log["path"] == "/dev/full" and "No space left on device" in log["problem"]
    shown = balancer.procs.run("status", timeout=20)
    assert shown.returncode == 0 and "/dev/full  DEGRADED: " in shown.stdout
    assert "cannot write log file /dev/full" in balancer.proc.stderr()


@pytest.fixture
def balancer_on_dev_full(procs: ProcessGroup, endpoints: Endpoints) -> LiveBalancer:
    return start_balancer(procs, endpoints, 100, "--log-file", "/dev/full")
