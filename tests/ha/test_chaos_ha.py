"""Chaos against an HA pair: leader kill -9s, a leader paused past its lease, etcd killed and restarted,
while nodes are killed, reset and stalled and four clients send (tests/ha/chaos_ha.py)."""

from __future__ import annotations

import random

import pytest

from tests.ha.chaos_ha import Claim, HaTarget, ha_figures, two_leaders
from tests.ha.cluster import HaGroup
from tests.harness import ProcessGroup
from tests.reliability.chaos import ChaosPlan, run_chaos_on

MEMBER_ARGS = ("--max-attempts", "50")  # as the single-balancer chaos runs: faults are the point


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_ha_leader_kills_pauses_and_an_etcd_restart(procs: ProcessGroup):
    """5,100 requests (three paced client threads over about a minute, a `zlb client` burst) while the
    leader is kill -9'd three times (restarted as a member each time), SIGSTOPped for 3.5 s, and etcd is
    kill -9'd and restarted, besides the node faults: every request answered once, never two leaders at
    once, and no more extra executions than were in flight at the faults."""
    plan = ChaosPlan.from_env(
        requests_per_client=1200,
        cli_requests=1500,
        submit_every_s=0.05,
        count_executions=True,
        leader_kills=3,
        leader_pauses=1,
        etcd_restarts=1,
        deadline_s=240,
    )
    group = HaGroup.start(procs, member_args=MEMBER_ARGS)
    try:
        report = run_chaos_on(procs, HaTarget(group, plan), plan, random.Random(plan.seed))
    finally:
        group.stop()
    print(ha_figures(report))
    assert report.errors == []
    assert (report.leader_kills, report.leader_pauses, report.etcd_restarts) == (3, 1, 1)
    assert (report.lost, report.duplicated, report.conflicting_answers) == (0, 0, 0)
    assert report.results == report.requests
    assert report.not_processed == 0
    assert report.balancer_view_mismatches == 0
    assert report.two_leaders == [], report.two_leaders[:5]
    assert report.never_ran == 0
    assert report.extra_runs <= report.extra_runs_bound, (report.extra_runs, report.extra_runs_bound)
    assert report.status_samples > 0
    late = [t for t in report.takeovers if t["at_s"] >= report.traffic_s]
    assert not late, f"faults after the clients were done ({report.traffic_s} s): {late}"


def test_two_leaders_are_told_from_a_handover():
    """The sampler's judgement: a claim asked after another member's newer claim was answered is two leaders;
    claims that merely follow each other (a handover), or one member's own, are not."""
    handover = [Claim("m0", 3, 1.0, 1.1), Claim("m1", 7, 1.8, 1.9), Claim("m1", 7, 2.0, 2.1)]
    assert two_leaders(handover) == []
    stale = [*handover, Claim("m0", 3, 2.2, 2.3)]  # m0 still says epoch 3 after m1 said 7
    assert len(two_leaders(stale)) == 1
    assert len(two_leaders([Claim("m0", 5, 1.0, 1.1), Claim("m1", 5, 3.0, 3.1)])) == 1  # one epoch, two names
    assert two_leaders([Claim("m0", 3, 1.0, 1.1), Claim("m0", 9, 2.0, 2.1), Claim("m0", 9, 3.0, 3.1)]) == []
    # Overlapping questions prove nothing: the newer claim's answer came after the older was asked.
    assert two_leaders([Claim("m0", 3, 1.0, 1.5), Claim("m1", 7, 1.2, 1.3)]) == []
