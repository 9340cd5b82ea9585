"""One owner per journal, and a journal whose directory vanishes under a running balancer: real processes."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from balancer import journal as jr
from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, port_of, start_balancer, wait_until
from tests.reliability.test_journal_damage import log_text, synced_frames, waiting
from tests.reliability.test_restarts import REPO
from wire import control_client

pytestmark = pytest.mark.timeout(90)
CLIENT_ID = 9


def test_a_second_balancer_on_the_same_journal_exits_at_once_naming_the_owner(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Issue 20: the second one exits non-zero with one line naming the owner's pid and endpoints, having
    bound nothing and touched nothing; after kill -9 of the owner the journal is free (no stale lock)."""
    journal = tmp_path / "zlb.journal"
    first = start_balancer(procs, endpoints, 100, "--journal", str(journal))
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=None) as client:
        for rid in (1, 2, 3):
            client.submit(json_payload(0, rid), request_id=rid)
        wait_until(lambda: synced_frames(journal) == 4, 10, "three requests journaled")
    before = (journal.stat().st_ino, journal.read_bytes())
    other = Endpoints.fresh()
    ends = [f"--{role}={getattr(other, role)}" for role in ("frontend", "backend", "events", "control")]
    started = time.monotonic()
    second = procs.run("balancer", "--journal", str(journal), "--log-file", "second.log", *ends, timeout=30)
    took = time.monotonic() - started

    assert second.returncode == 1, second.stderr
    [error] = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
    assert f"journal {journal} is in use by another balancer: pid {first.proc.pid}" in error
    assert all(url in error for url in (endpoints.frontend, endpoints.backend, endpoints.events, endpoints.control))
    assert "Traceback" not in second.stderr
    print(f"second balancer refused in {took:.2f} s")  # reported, not asserted: a busy machine is slow to start
    assert (journal.stat().st_ino, journal.read_bytes()) == before  # no restore, no rename
    assert not (tmp_path / "zlb.journal.tmp").exists()
    for url in (other.frontend, other.backend, other.events, other.control):  # nothing listens there
        with socket.socket() as probe:
            # The harness holds each picked port bound, never listening, with SO_REUSEADDR (tests/harness.py):
            # with it too, bind and listen succeed only while no one else listens on the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port_of(url)))
            probe.listen()
    assert waiting(first) == [1, 2, 3]  # the owner serves on, undisturbed

    procs.kill9(first.proc)
    third = start_balancer(procs, endpoints, 100, "--journal", str(journal))
    assert waiting(third) == [1, 2, 3]
    assert f'"pid": {third.proc.pid}' in Path(jr.lock_path(str(journal))).read_text()


def start_gated_node(balancer: LiveBalancer, gate: Path) -> None:
    """A node whose work finishes only once the file `gate` exists."""
    env = {"PYTHONPATH": REPO, "ZLB_TEST_GATE": str(gate)}
    args = ["server", "--id", "0", "--heartbeat-ms", "100", "--handler", "tests.reliability.handlers:gated"]
    balancer.procs.start("gated-node", *args, extra_env=env)
    balancer.wait_servers_active({0})


def journal_state(balancer: LiveBalancer) -> dict:
    return balancer.call("status")["journal"]


def test_a_journal_directory_deleted_under_a_running_balancer_is_said_within_5_s_and_recovered(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """Issue 20: rm -rf of the journal's directory: within 5 s status and the log say so; new work is busy,
    a result waits for its record; the directory made again, a fresh snapshot and everything is answered."""
    folder = tmp_path / "journal-dir"
    folder.mkdir()
    journal = folder / "zlb.journal"
    # A tick every 100 ms notices the deletion soon; liveness 50 beats, so a node starved on a busy
    # machine is not declared dead (its request re-queued) in the middle of the test.
    balancer = start_balancer(procs, endpoints, 100, "--liveness", "50", "--journal", str(journal))
    gate = tmp_path / "gate"
    start_gated_node(balancer, gate)
    with Client(endpoints.frontend, client_id=CLIENT_ID, retry_s=0.3) as client:
        running = client.submit(b"running", request_id=1)

        def status_of(rid: int) -> str:
            return balancer.call("request", client_id=CLIENT_ID, request_id=rid)["status"]

        def assigned() -> bool:
            try:
                return status_of(1) == "assigned"
            except control_client.ControlError:  # not there yet: the submit is still on its way
                return False

        wait_until(assigned, 10, "request 1 on the node")
        shutil.rmtree(folder)
        removed = time.monotonic()
        wait_until(lambda: not journal_state(balancer)["healthy"], 5, "zlb status to say the journal fails")
        print(f"noticed in {time.monotonic() - removed:.2f} s")
        assert "was deleted" in journal_state(balancer)["reason"]
        shown = procs.run("status").stdout
        assert f"{journal}  FAILING since " in shown and "new requests refused (busy)" in shown
        failed = wait_until(
            lambda: [ln for ln in log_text(procs).splitlines() if "system.journal_failed" in ln], 5, "the log line"
        )
        assert len(failed) == 1 and " ERROR " in failed[0]

        later = client.submit(b"later", request_id=2)  # refused as busy, re-sent with back-off
        wait_until(lambda: client.pump(0.05) >= 0 and client.busy_notices > 0, 10, "a busy answer")
        gate.touch()  # request 1 finishes on its node, but its result may not leave before its record
        wait_until(lambda: status_of(1) == "processed", 10, "request 1 to finish")
        deadline = time.monotonic() + 1.0  # a result sent would be here in milliseconds; re-sends ask for it
        while time.monotonic() < deadline:
            assert not running.done()
        with pytest.raises(control_client.ControlError, match="not found"):
            status_of(2)  # refused each time it was sent: never accepted while the journal fails

        folder.mkdir()
        assert running.result(timeout=20).body == b"running"
        assert later.result(timeout=20).body == b"later"
    state = journal_state(balancer)
    assert state["healthy"] and state["reason"] is None
    counters = balancer.call("status")["counters"]
    assert (counters["journal_failures"], counters["journal_recoveries"]) == (1, 1)
    assert any("system.journal_recovered" in ln for ln in log_text(procs).splitlines())
    finished = {r[2] for r in jr.replay(str(journal), 100).finished}
    assert {1, 2} <= finished  # the fresh snapshot, then the appends after it
    assert f'"pid": {balancer.proc.pid}' in Path(jr.lock_path(str(journal))).read_text()
