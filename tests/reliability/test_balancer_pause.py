"""A balancer that was paused (SIGSTOP, a long admin pass, a VM stall) must not declare its nodes dead
for its own silence: their heartbeats waited in its socket all along."""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness import Endpoints, ProcessGroup, start_balancer, wait_until

HEARTBEAT_MS, LIVENESS = 100, 10  # a node silent for 1 s is dead
PAUSE_S = 1.6  # longer than that


@pytest.mark.timeout(60)
def test_a_paused_balancer_reads_the_heartbeats_that_waited_before_declaring_anyone_dead(
    procs: ProcessGroup, endpoints: Endpoints
):
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, liveness=LIVENESS)
    for node_id in range(3):
        balancer.start_server(node_id)
    balancer.wait_servers_active({0, 1, 2})
    balancer.proc.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)  # wait-ok: the fault itself, a pause of the balancer longer than the nodes' liveness
    finally:
        balancer.proc.popen.send_signal(signal.SIGCONT)
    wait_until(lambda: balancer.call("ping"), 10, "the balancer to answer again")
    balancer.wait_servers_active({0, 1, 2})
    events = balancer.call("logs", format="events")
    dead = [e for e in events if "node.dead" in str(e)]
    assert dead == [], f"nodes declared dead for the balancer's own pause: {dead}"
    assert balancer.call("status")["servers_active"] == 3
