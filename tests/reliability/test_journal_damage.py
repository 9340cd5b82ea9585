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
from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, Proc, ProcessGroup, start_balancer, wait_until
from wire import control_client

pytestmark = pytest.mark.timeout(90)
WAITING = 30
CLIENT_ID = 9


def balancer_with_waiting_requests(procs: ProcessGroup, endpoints: Endpoints, journal: Path) -> LiveBalancer:
    """A journaled balancer with no nodes, so WAITING submitted requests all wait, then kill -9 of it."""
    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))
    # No retries: a re-send after the restart would hide what the journal lost.
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=None) as client:
        for rid in range(1, WAITING + 1):
            client.submit(json_payload(0, rid), request_id=rid)
        wait_until(lambda: len(waiting(balancer)) == WAITING, 10, f"{WAITING} requests waiting")
    # The control view is not the journal: the loop answers a control call in the same iteration that
    # accepted a SUBMIT, before it appends that iteration's records, so `waiting` can already count a
    # request whose record is not in the file yet. kill -9 only after the file holds all WAITING.
    wait_until(lambda: len(jr.replay(str(journal), 0).pending) == WAITING, 10, f"{WAITING} records in the journal")
    procs.kill9(balancer.proc)
    return balancer


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
    """A crash mid-write (an incomplete last frame) loses that record only; it is not damage and nothing is kept."""
    journal = tmp_path / "zlb.journal"
    balancer_with_waiting_requests(procs, endpoints, journal)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])

    balancer = start_balancer(procs, endpoints, 100, "--journal", str(journal))

    assert waiting(balancer) == list(range(1, WAITING))
    counters = balancer.call("status")["counters"]
    assert (counters["journal_records_lost"], counters["journal_bytes_skipped"]) == (0, 0)
    restored = [e for e in balancer.call("logs", format="events") if e["kind"] == "system.journal_restored"]
    assert [(e["pending"], e["torn_bytes"] > 0) for e in restored] == [(WAITING - 1, True)]
    assert not any(e["kind"] == "system.journal_damaged" for e in balancer.call("logs", format="events"))
    assert list(tmp_path.glob("zlb.journal.damaged-*")) == []


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


def test_a_journal_that_cannot_be_written_stops_the_balancer_with_a_clear_message(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """A full journal disk stops the balancer (exit 1, one line saying why); a restart keeps what was written."""
    journal = tmp_path / "zlb.journal"
    proc = start_limited_balancer(procs, journal, 64 * 1024)
    live = LiveBalancer(endpoints, procs, proc, 100)
    wait_until(lambda: _answers(live), 15, "the limited balancer to answer")
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=None) as client:
        for rid in range(1, 101):  # 2 KiB each: the journal passes 64 KiB about a third of the way
            client.submit(json_payload(0, "x" * 2048), request_id=rid)
        wait_until(lambda: proc.popen.poll() is not None, 20, "the balancer to stop")
    assert proc.popen.returncode == 1
    assert "cannot append to journal" in proc.stderr() and "File too large" in proc.stderr()
    assert "Traceback" not in proc.stderr()
    failed = [ln for ln in (tmp_path / "limited.log").read_text().splitlines() if "system.journal_failed" in ln]
    assert len(failed) == 1 and " ERROR " in failed[0] and "balancer stopping" in failed[0]

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
