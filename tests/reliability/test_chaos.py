"""Chaos: thousands of requests while nodes and the balancer are killed with -9 and restarted."""

from __future__ import annotations

import os

import pytest

from tests.harness import Endpoints, ProcessGroup, start_balancer
from tests.reliability.chaos import ChaosPlan, ChaosReport, run_chaos

# The default retention (results kept 300 s within the budget, ids a day): the runs take well under 300 s.
BALANCER_ARGS = ["--max-attempts", "50"]
# Faults are the point here: 300 ms of silence is a death, so the longer stalls kill too. A node the
# machine starves that long is one more fault, and exactly-once must hold through it as through the others.
LIVENESS = 3


def assert_exactly_once(report: ChaosReport) -> None:
    """Every request answered exactly once, processed, and the balancer agrees."""
    assert report.errors == []
    assert (report.lost, report.duplicated, report.conflicting_answers) == (0, 0, 0)
    assert report.results == report.requests
    assert report.not_processed == 0
    assert report.balancer_view_mismatches == 0


def test_chaos_node_kills_lose_and_duplicate_nothing(procs: ProcessGroup, endpoints: Endpoints):
    """2,200 requests from four clients while nodes are kill -9'd, reset (ss -K) and stalled: each answered once."""
    balancer = start_balancer(procs, endpoints, 100, *BALANCER_ARGS, liveness=LIVENESS)
    report = run_chaos(procs, balancer, ChaosPlan(), BALANCER_ARGS)
    assert report.node_kills >= 2 and report.resets >= 1 and report.stalls >= 1
    assert report.reassigned > 0
    assert_exactly_once(report)


def test_chaos_with_balancer_restarts_on_its_journal(procs: ProcessGroup, endpoints: Endpoints, tmp_path):
    """The same with the balancer kill -9'd twice and restarted on its journal: nothing lost or duplicated."""
    args = [*BALANCER_ARGS, "--journal", str(tmp_path / "zlb.journal")]
    balancer = start_balancer(procs, endpoints, 100, *args, liveness=LIVENESS)
    plan = ChaosPlan(requests_per_client=400, cli_requests=300, balancer_kills=2)
    report = run_chaos(procs, balancer, plan, args)
    assert report.balancer_kills == 2
    assert_exactly_once(report)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chaos_long_run(procs: ProcessGroup, endpoints: Endpoints, tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A bigger budget (ZLB_CHAOS_REQUESTS, default 20,000) with node and balancer kills: exactly once throughout."""
    monkeypatch.setenv("ZLB_CHAOS_REQUESTS", os.environ.get("ZLB_CHAOS_REQUESTS", "20000"))
    args = [*BALANCER_ARGS, "--journal", str(tmp_path / "zlb.journal")]
    balancer = start_balancer(procs, endpoints, 100, *args, liveness=LIVENESS)
    plan = ChaosPlan.from_env(balancer_kills=5, node_kill_every_s=(0.3, 1.0))
    report = run_chaos(procs, balancer, plan, args)
    assert report.node_kills >= 5
    assert_exactly_once(report)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_chaos_a_client_killed_and_replaced_under_its_id_gets_one_result_per_request(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A `zlb client` of 2,000 requests kill -9'd once it has 20-60% of its results and replaced under the
    same client id by one re-sending the same ids with the same payloads, while nodes (and the balancer,
    on its journal) are killed, with the default --keep-finished-s, --keep-finished-mb and memory budget:
    the successor gets every result once, the same one the killed client saw; nothing lost or duplicated."""
    monkeypatch.setenv("ZLB_CHAOS_REQUESTS", os.environ.get("ZLB_CHAOS_REQUESTS", "8000"))
    args = [*BALANCER_ARGS, "--journal", str(tmp_path / "zlb.journal")]
    balancer = start_balancer(procs, endpoints, 100, *args)
    plan = ChaosPlan.from_env(balancer_kills=3, replaced_requests=2000)
    report = run_chaos(procs, balancer, plan, args)
    assert report.client_replacements == 1 and 0 < report.results_before_kill < plan.replaced_requests
    assert report.node_kills >= 2
    assert_exactly_once(report)
