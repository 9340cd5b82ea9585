"""`zlb status --check --leader`, the balancers' readiness probe in deploy/kubernetes (issue 25), against a real
HA group: two `zlb balancer --ha` members elected through a real etcd (issue 21's harness, tests/ha/cluster.py).

The leader passes, the standby fails with EXIT_NOT_LEADER while passing the plain check a liveness probe asks,
and after a kill -9 of the leader the other member passes once it leads. Skipped, with the reason, in a
checkout without issue 21's HA harness.
"""

from __future__ import annotations

import pytest

from tests.harness import ProcessGroup
from zlb.admin_cli import EXIT_NOT_LEADER

# Imported as a module, so that the file reads the same with and without tests/ha being a package.
cluster = pytest.importorskip("tests.ha.cluster", reason="the HA harness (tests/ha/cluster.py) comes with issue 21")


def check(procs: ProcessGroup, member: cluster.Member, *flags: str) -> tuple[int, str]:
    """`zlb status --check FLAGS` against one member: its exit code and everything it printed."""
    done = procs.run("status", "--check", *flags, "--control", member.endpoints.control)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(120)
def test_only_the_leader_passes_the_readiness_check(ha_group: cluster.HaGroup, procs: ProcessGroup) -> None:
    """Leader: 0 and silent. Standby: alive (0) but not the leader (3). The leader killed: the other passes."""
    leader = ha_group.leader()
    assert leader is not None
    standby = next(m for m in ha_group.members if m is not leader)
    assert check(procs, leader, "--leader") == (0, "")
    assert check(procs, leader) == (0, "")
    code, said = check(procs, standby, "--leader")
    assert code == EXIT_NOT_LEADER and "not the leader (role 'standby')" in said
    assert check(procs, standby) == (0, "")
    ha_group.kill9(leader)
    ha_group.wait_leader(standby, timeout=15)
    assert check(procs, standby, "--leader") == (0, "")
    assert check(procs, leader)[0] == 1  # killed: no answer within the check's timeout
