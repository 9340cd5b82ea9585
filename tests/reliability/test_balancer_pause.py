"""A balancer that was paused (SIGSTOP, a long admin pass, a VM stall) must not declare its nodes dead
for its own silence: their heartbeats waited in its socket all along, and a node that gave up on the
silent balancer and is sitting out its reconnect back-off is silent because of the balancer, not dead
(balancer/nodes.py, "Judged by the time the loop could listen"; docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from client_node.client import Client, json_payload
from client_node.result import Result
from tests.harness import (
    WATCHFUL_LIVENESS,
    Endpoints,
    LiveBalancer,
    ProcessGroup,
    scaled,
    start_balancer,
    wait_until,
)
from tests.reliability.handlers import executions, gate_payload

HEARTBEAT_MS, LIVENESS = 100, WATCHFUL_LIVENESS  # a node silent for 1 s is dead
# Half a second: a stop of a few seconds then finds every node in a reconnect back-off longer than that (it
# gave up on the silent balancer after 0.5 s, then again after each try: back-offs of 0.1, 0.2, 0.4, 0.8, 1.6 s).
SHORT_LIVENESS = 5


def node_deaths(balancer: LiveBalancer) -> list[Any]:
    """Nodes declared dead for their silence or for their dropped connection (a node that gave up on the
    silent balancer closes its socket: not a death either)."""
    return [e for e in balancer.call("logs", format="events") if e["kind"] in ("node.dead", "node.disconnected")]


def stopped(balancer: LiveBalancer, seconds: float) -> None:
    """SIGSTOP the balancer for `seconds` (the fault itself), SIGCONT it whatever happens."""
    os.kill(balancer.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # wait-ok: the fault itself, a pause of the balancer of this length
    finally:
        os.kill(balancer.proc.pid, signal.SIGCONT)


@pytest.mark.timeout(60)
def test_a_paused_balancer_reads_the_heartbeats_that_waited_before_declaring_anyone_dead(
    procs: ProcessGroup, endpoints: Endpoints
):
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, liveness=LIVENESS)
    for node_id in range(3):
        balancer.start_server(node_id)
    balancer.wait_servers_active({0, 1, 2})
    stopped(balancer, 1.6)  # longer than the nodes' liveness
    wait_until(lambda: balancer.call("ping"), 10, "the balancer to answer again")
    balancer.wait_servers_active({0, 1, 2})
    assert node_deaths(balancer) == [], "nodes declared dead for the balancer's own pause"
    assert balancer.call("status")["servers_active"] == 3


class PacedClient(threading.Thread):
    """One request every `every_s` from a Client in this process, results collected as they come,
    until `finish()`; then it waits (within a deadline) for every answer."""

    def __init__(self, frontend: str, client_id: int, every_s: float, cost_ms: float) -> None:
        super().__init__(daemon=True)
        self.frontend, self.client_id, self.every_s, self.cost_ms = frontend, client_id, every_s, cost_ms
        self.sent = 0
        self.results: list[Result] = []
        self.unanswered: list[int] = []
        self.error: BaseException | None = None
        self._finish = threading.Event()

    def finish(self, timeout: float) -> None:
        self._finish.set()
        self.join(timeout)
        assert not self.is_alive(), "the paced client did not finish"
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            with Client(self.frontend, client_id=self.client_id, retry_s=2.0) as client:
                next_send = time.monotonic()
                while not self._finish.is_set():
                    now = time.monotonic()
                    if now >= next_send:
                        client.submit(json_payload(self.cost_ms, self.sent))
                        self.sent += 1
                        next_send += self.every_s
                    client.pump(max(0.0, next_send - time.monotonic()))  # results, until the next send is due
                    self.results += client.take_results()
                deadline = time.monotonic() + scaled(30)
                while client.unanswered and time.monotonic() < deadline:
                    client.pump(0.1)
                    self.results += client.take_results()
                self.results += client.take_results()
                self.unanswered = client.outstanding
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread by finish()
            self.error = exc


@pytest.mark.timeout(120)
def test_a_balancer_stopped_5_s_under_a_paced_client_blames_no_node_and_fails_no_request(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """The issue's case: 3 live nodes, a client sending 20 requests a second, the balancer stopped for
    5 s (ten times the nodes' liveness: they give up on it and back off) and continued."""
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, liveness=SHORT_LIVENESS)
    log = str(tmp_path / "runs.log")
    for node_id in range(3):
        balancer.start_server(node_id, handler="counting", env={"ZLB_TEST_EXEC_LOG": log})
    balancer.wait_servers_active({0, 1, 2})
    client = PacedClient(endpoints.frontend, client_id=7, every_s=0.05, cost_ms=5)
    client.start()
    try:
        wait_until(lambda: len(client.results) >= 20, 20, "20 results before the stop")
        stopped(balancer, 5.0)
        after = len(client.results)
        wait_until(lambda: len(client.results) >= after + 40, 30, "40 more results after the stop")
        balancer.wait_servers_active({0, 1, 2})
    finally:
        client.finish(scaled(60))
    assert node_deaths(balancer) == [], "nodes declared dead for the balancer's own stop"
    assert client.unanswered == []
    failed = [(r.request_id, r.body) for r in client.results if not r.ok]
    assert failed == []
    assert len({r.request_id for r in client.results}) == client.sent
    runs = executions(log)
    assert sorted(rid for (_cid, rid), n in runs.items() if n > 1) == [], "requests that ran twice"
    assert sum(runs.values()) == client.sent
    status = balancer.call("status")
    assert status["servers_active"] == 3
    assert status["requests"]["failed"] == 0


@pytest.mark.timeout(120)
def test_a_balancer_stopped_4_s_while_its_nodes_hold_work_runs_none_of_it_twice(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """The outside attack, shorter: both nodes hold running work (held by a gate) while the balancer is
    stopped 4.5 s; woken, it reads their heartbeats and HELLOs before judging anyone, so nothing moves."""
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, liveness=SHORT_LIVENESS)
    log = str(tmp_path / "runs.log")
    for node_id in range(2):
        balancer.start_server(node_id, "--capacity", "2", handler="gated_counting", env={"ZLB_TEST_EXEC_LOG": log})
    balancer.wait_servers_active({0, 1})
    gate = tmp_path / "gate"
    with Client(endpoints.frontend, client_id=3, retry_s=2.0) as client:
        pending = [client.submit(gate_payload(str(gate), i)) for i in range(4)]

        def holding() -> bool:
            client.pump(0)
            servers = balancer.servers()
            return [servers[i]["in_flight"] for i in (0, 1)] == [2, 2] and sum(executions(log).values()) == 4

        wait_until(holding, 20, "both nodes running two requests each")
        stopped(balancer, 4.5)
        wait_until(lambda: balancer.call("ping"), 10, "the balancer to answer again")
        balancer.wait_servers_active({0, 1})
        gate.touch()
        results = [p.result(timeout=scaled(20)) for p in pending]
    assert node_deaths(balancer) == [], "nodes declared dead for the balancer's own stop"
    assert [r.status for r in results] == ["processed"] * 4
    assert [r.attempts for r in results] == [1] * 4
    assert executions(log) == {(3, rid): 1 for rid in (p.request_id for p in pending)}
    assert balancer.call("status")["requests"]["requeued"] == 0


@pytest.mark.timeout(120)
def test_a_node_declared_dead_that_comes_back_holding_its_work_keeps_it_and_runs_it_once(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path
):
    """A false death on the node's side: stopped past its deadline while holding work, the only node is
    declared dead and its work re-queued; continued, it says HELLO listing that work, and keeps it."""
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, liveness=LIVENESS)
    log = str(tmp_path / "runs.log")
    node = balancer.start_server(0, "--capacity", "2", handler="gated_counting", env={"ZLB_TEST_EXEC_LOG": log})
    balancer.wait_servers_active({0})
    gate = tmp_path / "gate"
    with Client(endpoints.frontend, client_id=5, retry_s=2.0) as client:
        pending = [client.submit(gate_payload(str(gate), i)) for i in range(2)]

        def holding() -> bool:
            # Running on the node, not only sent to it: stopped before it read them, the node wakes past its
            # liveness, closes its socket with the WORK in it and comes back holding nothing (a fresh start).
            client.pump(0)
            return balancer.servers()[0]["in_flight"] == 2 and sum(executions(log).values()) == 2

        wait_until(holding, 20, "the node running both")
        os.kill(node.pid, signal.SIGSTOP)
        try:
            balancer.wait_dead(0)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        wait_until(lambda: client.pump(0) >= 0 and balancer.call("status")["requests"]["reclaimed"] == 2, 20, "reclaim")
        assert balancer.servers()[0]["in_flight"] == 2
        gate.touch()
        results = [p.result(timeout=scaled(20)) for p in pending]
    assert [(r.status, r.attempts, r.server_id) for r in results] == [("processed", 1, 0)] * 2
    assert executions(log) == {(5, p.request_id): 1 for p in pending}
    assert [e["kind"] for e in balancer.call("logs", format="events") if e["kind"].startswith("node.")] == [
        "node.joined",
        "node.dead",
        "node.joined",
        "node.returned",
    ]
