"""Idempotency in time, on real processes: a re-sent request id is never run again, within the result
window (its stored result) or past it ("processed earlier; the result is no longer kept"), across a
kill -9 of the balancer too. Executions are counted by the nodes (`handled_requests`) and the
balancer (`processed`)."""

from __future__ import annotations

import json

import pytest

from client_node.client import Client
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from wire import protocol as p

HEARTBEAT_MS = 500  # generous: these tests are not about liveness
FIRST, OTHERS = 2000, 30_000


def start(procs: ProcessGroup, endpoints: Endpoints, *extra: str) -> LiveBalancer:
    return start_balancer(procs, endpoints, HEARTBEAT_MS, "--liveness", "10", *extra)


def echo_nodes(balancer: LiveBalancer, count: int = 2) -> None:
    for node_id in range(count):
        balancer.start_server(node_id, "--handler", "echo", "--capacity", "32", "--liveness", "10")
    balancer.wait_servers_active(set(range(count)))


def executions(balancer: LiveBalancer) -> tuple[int, int]:
    """(requests the balancer counted processed, requests its nodes say they handled)."""
    processed = balancer.call("status")["requests"]["processed"]
    return processed, sum(s["handled_requests"] for s in balancer.call("servers"))


def client_rows(procs: ProcessGroup, client_id: int, count: int, *extra: str) -> tuple[int, list[dict]]:
    """Run `zlb client --json` to completion: its exit code and one row per result."""
    done = procs.run("client", "--id", str(client_id), "--requests", str(count), "--json", *extra, timeout=120)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, rows


@pytest.mark.timeout(240)
def test_2000_ids_resent_after_30000_others_finished_with_the_defaults_none_runs_again(
    procs: ProcessGroup, endpoints: Endpoints
):
    """The issue's reproduction: a client's 2,000 requests, 30,000 of another client's, then a successor
    process under the first client id re-sends its 2,000 ids with their payloads. With the default
    retention (results kept 300 s within the budget) every one is answered with its stored result and
    none runs again: the balancer and the nodes count 32,000 executions, not 34,000."""
    balancer = start(procs, endpoints)  # default --keep-finished-s, --keep-finished-mb, --max-memory-mb, --remember-*
    echo_nodes(balancer)
    code, first = client_rows(procs, 5, FIRST)
    assert code == 0 and len(first) == FIRST
    with Client(balancer.endpoints.frontend, client_id=6) as other:
        pending = other.submit_many(b"other %d" % i for i in range(OTHERS))
        assert all(r.ok for r in (pend.result(timeout=180) for pend in pending))
    assert executions(balancer) == (FIRST + OTHERS, FIRST + OTHERS)

    # the successor: same id, same request ids and payloads
    code, again = client_rows(procs, 5, FIRST, "--first-request-id", "1")
    assert code == 0 and len(again) == FIRST
    assert {r["request_id"] for r in again} == set(range(1, FIRST + 1))
    assert all(r["status"] == p.PROCESSED and r["replay"] for r in again)
    results = {r["request_id"]: r["result"] for r in first}
    assert all(r["result"] == results[r["request_id"]] for r in again)  # one result per request
    assert executions(balancer) == (FIRST + OTHERS, FIRST + OTHERS)
    status = balancer.call("status")
    assert status["requests"]["replays"] == FIRST and status["requests"]["submitted"] == FIRST + OTHERS
    retention = status["retention"]
    assert retention["results_for_s"] == 300 and retention["results_kept"] == FIRST + OTHERS


@pytest.mark.timeout(240)
def test_results_the_memory_budget_lets_go_early_leave_their_ids_and_none_runs_again(
    procs: ProcessGroup, endpoints: Endpoints
):
    """The same with a budget (4 MiB) that holds a few thousand results: the oldest go before their time,
    their ids answer "processed earlier", and still nothing runs twice."""
    balancer = start(procs, endpoints, "--max-memory-mb", "4")
    echo_nodes(balancer)
    code, first = client_rows(procs, 5, FIRST)
    assert code == 0 and len(first) == FIRST
    with Client(balancer.endpoints.frontend, client_id=6) as other:
        pending = other.submit_many(b"other %d" % i for i in range(OTHERS))
        assert all(r.ok for r in (pend.result(timeout=180) for pend in pending))
    retention = balancer.call("status")["retention"]
    assert retention["results_left_early"] > 0 and retention["ids_kept"] >= FIRST
    code, again = client_rows(procs, 5, FIRST, "--first-request-id", "1")
    assert len(again) == FIRST and {r["request_id"] for r in again} == set(range(1, FIRST + 1))
    assert {r["status"] for r in again} == {p.NOT_KEPT}  # the first 2,000 finished first: their results went first
    assert executions(balancer) == (FIRST + OTHERS, FIRST + OTHERS)
    assert balancer.call("status")["requests"]["answered_expired"] == FIRST


@pytest.mark.timeout(120)
def test_past_the_result_window_a_resent_id_is_answered_processed_earlier_also_after_a_restart(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path
):
    """With results kept 1 s, a re-send after they are gone is answered "processed earlier; the result is no
    longer kept" (status not_kept), another payload is refused as a conflict, and the journal keeps the ids
    across kill -9s of the balancer: nothing runs twice."""
    args = ["--keep-finished-s", "1", "--journal", str(tmp_path / "zlb.journal")]
    balancer = start(procs, endpoints, *args)
    echo_nodes(balancer)
    code, first = client_rows(procs, 5, 200)
    assert code == 0 and len(first) == 200

    def results_gone() -> bool:
        retention = balancer.call("status")["retention"]
        return retention["results_kept"] == 0 and retention["ids_kept"] == 200

    wait_until(results_gone, 20, "the results to pass their 1 s window")
    done = procs.run("client", "--id", "5", "--requests", "200", "--first-request-id", "1")
    assert done.returncode == 1  # nothing came back processed
    lines = [line for line in done.stdout.splitlines() if line.startswith("Request ")]
    assert len(lines) == 200
    assert all("was not run again: processed earlier; the result is no longer kept" in line for line in lines)
    conflict = procs.run("send", "--client-id", "5", "--request-id", "7", "--payload", '"another"')
    assert conflict.returncode == 1 and "already used with another payload" in conflict.stdout
    assert executions(balancer) == (200, 200)

    # The journal holds their results (FINISHED): a restart with --keep-finished 0 keeps their ids only and
    # writes them as EARLIER records, which the next restart reads back.
    for extra in (["--keep-finished", "0"], []):
        procs.kill9(balancer.proc)
        balancer = start(procs, endpoints, *args, *extra)
        retention = balancer.call("status")["retention"]
        assert (retention["results_kept"], retention["ids_kept"]) == (0, 200)
    balancer.wait_servers_active({0, 1}, timeout=30)  # the same nodes, back on the restarted balancer
    code, again = client_rows(procs, 5, 200, "--first-request-id", "1")
    assert code == 1 and len(again) == 200
    assert {r["status"] for r in again} == {p.NOT_KEPT}, again[:2]
    assert executions(balancer) == (0, 0)  # the restarted balancer ran none of them
