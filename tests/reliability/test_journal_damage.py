"""A damaged journal with real processes: what a restart restores, what it reports, what it keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from balancer import journal as jr
from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until

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
