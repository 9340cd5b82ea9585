"""Restarts and stops: the balancer on its journal, graceful SIGTERM of both, failing and poisonous work."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from balancer import journal as jr
from balancer.scheduler import FINISHED
from client_node.client import Client, json_payload
from tests.harness import (
    WATCHFUL_LIVENESS,
    Endpoints,
    LiveBalancer,
    Proc,
    ProcessGroup,
    start_balancer,
    timeout_arg,
    wait_until,
)
from tests.reliability.handlers import executions

REPO = str(Path(__file__).resolve().parents[2])
HALF_DONE = {1: "processed", 2: "processed", 3: "processed", 4: "pending", 5: "pending", 6: "pending"}


def start_node(balancer: LiveBalancer, node_id: int, handler: str, exec_log: Path, *extra: str) -> Proc:
    """A real node running one of tests/reliability/handlers.py."""
    env = {"PYTHONPATH": REPO, "ZLB_TEST_EXEC_LOG": str(exec_log)}
    args = ["server", "--id", str(node_id), "--heartbeat-ms", str(balancer.heartbeat_ms), "--handler", handler]
    return balancer.procs.start(f"node-{node_id}-{len(balancer.procs.procs)}", *args, *extra, extra_env=env)


def statuses(balancer: LiveBalancer, client_id: int) -> dict[int, str]:
    return {r["request_id"]: r["status"] for r in balancer.call("requests", client=client_id)}


def collect(client: Client, ids: set[int], timeout: float = 20) -> dict[int, object]:
    """Wait for the results of `ids` through the client's own retries."""
    got = {}

    def all_in() -> bool:
        for rid in ids - set(got):
            if rid in client._results:
                got[rid] = client.wait(rid, 0.1)
        client.pump(0.05)
        return set(got) == ids

    wait_until(all_in, timeout, f"results for {sorted(ids)}")
    return got


def test_kill9_balancer_restarts_on_its_journal(procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path):
    """After kill -9, a restart on the journal re-dispatches unfinished work and still knows finished work."""
    journal = str(tmp_path / "zlb.journal")
    exec_log = tmp_path / "exec.log"
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
    node = start_node(balancer, 0, "tests.reliability.handlers:counting", exec_log)
    balancer.wait_servers_active({0})
    with Client(endpoints.frontend, client_id=5, retry_s=0.5) as client:
        for rid in (1, 2, 3):
            client.submit(json_payload(0.0, rid), request_id=rid)  # the bytes `zlb send --payload N` sends
        first = collect(client, {1, 2, 3})
        procs.kill9(node)
        for rid in (4, 5, 6):
            client.submit(json_payload(0.0, rid), request_id=rid)  # the bytes `zlb send --payload N` sends
        wait_until(lambda: statuses(balancer, 5) == HALF_DONE, 10, "three finished, three waiting")
        procs.kill9(balancer.proc)
        balancer = start_balancer(procs, endpoints, 100, "--journal", journal)
        assert statuses(balancer, 5) == HALF_DONE
        assert balancer.call("status")["counters"]["journal_restored_pending"] == 3
        start_node(balancer, 1, "tests.reliability.handlers:counting", exec_log)
        later = collect(client, {4, 5, 6})
        assert {r.status for r in later.values()} == {"processed"}
        assert {r.server_id for r in later.values()} == {1}
        assert client.conflicting_answers == 0
    args = ("send", "--client-id", "5", "--request-id", "2", "--payload", "2", "--json", "--timeout", timeout_arg(10))
    again = procs.run(*args)
    assert again.returncode == 0, again.stderr
    assert '"server_id": 0' in again.stdout  # the one result from before the crash, not a new run
    assert first[2].server_id == 0
    assert executions(str(exec_log)) == {(5, rid): 1 for rid in range(1, 7)}


def test_sigterm_balancer_finishes_in_flight_work_then_resumes_from_journal(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """SIGTERM: running work finishes and is delivered, waiting work stays journaled and runs after a restart."""
    journal = str(tmp_path / "zlb.journal")
    exec_log = tmp_path / "exec.log"
    balancer = start_balancer(procs, endpoints, 100, "--journal", journal, "--grace-s", "10")
    start_node(balancer, 0, "tests.reliability.handlers:counting", exec_log)
    balancer.wait_servers_active({0})
    with Client(endpoints.frontend, client_id=8, retry_s=0.5) as client:
        client.submit(json_payload(1200, "long"), request_id=1)
        wait_until(lambda: balancer.servers()[0]["in_flight"] == 1, 10, "the long request to run")
        client.submit(json_payload(0, "queued"), request_id=2)
        wait_until(lambda: statuses(balancer, 8).get(2) == "pending", 10, "request 2 queued")
        balancer.proc.popen.send_signal(signal.SIGTERM)
        first = collect(client, {1})
        assert balancer.proc.wait(10) == 0
        assert client.shutdown_notices >= 1
        replayed = jr.replay(journal, 100)
        assert [(r[0], r[2]) for r in replayed.finished] == [(FINISHED, 1)]
        assert [r[2] for r in replayed.pending] == [2]
        start_balancer(procs, endpoints, 100, "--journal", journal)
        second = collect(client, {2})
    assert (first[1].status, second[2].status) == ("processed", "processed")
    assert executions(str(exec_log)) == {(8, 1): 1, (8, 2): 1}


def test_sigterm_node_finishes_its_work_and_says_goodbye(balancer: LiveBalancer, procs: ProcessGroup, tmp_path):
    """SIGTERM on a busy node: its request completes there, the node exits 0 and is shown as gone."""
    node = start_node(balancer, 0, "tests.reliability.handlers:counting", tmp_path / "exec.log", "--grace-s", "10")
    balancer.wait_servers_active({0})
    with Client(balancer.endpoints.frontend, client_id=3, retry_s=5) as client:
        pending = client.submit(json_payload(800, "x"), request_id=1)
        wait_until(lambda: balancer.servers()[0]["in_flight"] == 1, 10, "work on the node")
        node.popen.send_signal(signal.SIGTERM)
        result = pending.result(timeout=10)
    assert (result.status, result.server_id, result.attempts) == ("processed", 0, 1)
    assert node.wait(10) == 0
    wait_until(lambda: not balancer.servers()[0]["active"], 5, "the node to be shown gone")


def test_raising_handler_fails_the_request_once_and_the_node_lives(balancer: LiveBalancer, tmp_path):
    """A handler exception is a failed result carrying its text; no retry, and the node keeps serving."""
    start_node(balancer, 0, "tests.reliability.handlers:boom", tmp_path / "exec.log")
    balancer.wait_servers_active({0})
    with Client(balancer.endpoints.frontend, client_id=4, retry_s=5) as client:
        results = [client.submit(b"{}", request_id=rid).result(timeout=10) for rid in (1, 2)]
    assert [(r.status, r.attempts, r.value()) for r in results] == [
        ("failed", 1, "ValueError: boom on request 1"),
        ("failed", 1, "ValueError: boom on request 2"),
    ]
    assert balancer.servers()[0]["state"] == "active"
    assert balancer.call("status")["requests"]["requeued"] == 0


def test_poison_request_fails_after_max_attempts(procs: ProcessGroup, endpoints: Endpoints, tmp_path):
    """A request that kills every node it lands on goes to the dead letters after --max-attempts (its sender
    told: status dead), listed as dead."""
    balancer = start_balancer(procs, endpoints, 100, "--max-attempts", "2", liveness=WATCHFUL_LIVENESS)
    for node_id in (0, 1, 2):
        start_node(balancer, node_id, "tests.reliability.handlers:poison", tmp_path / "exec.log")
    balancer.wait_servers_active({0, 1, 2})
    with Client(endpoints.frontend, client_id=6, retry_s=5) as client:
        result = client.submit(b"poison", request_id=1).result(timeout=15)
        healthy = client.submit(json_payload(0, "fine"), request_id=2).result(timeout=15)
    assert (result.status, result.attempts) == ("dead", 2)
    assert "gave up after 2 attempts" in result.value()
    assert healthy.ok
    listed = procs.run("requests", "--status", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"request_id": 1' in listed.stdout
    assert sum(s["state"] == "dead" for s in balancer.servers().values()) == 2


def test_journal_path_errors_are_one_line(procs: ProcessGroup, tmp_path):
    """A journal that is not a zlb journal stops the balancer with a one-line error, not a traceback."""
    bogus = tmp_path / "not-a-journal"
    bogus.write_bytes(b"\x93\x01\x02\x03hello")
    done = procs.run("balancer", "--journal", str(bogus), "--log-file", "", timeout=20)
    assert done.returncode == 1
    assert "is not a zlb journal" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.path.exists(bogus)
