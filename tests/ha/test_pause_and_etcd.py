"""A leader paused past its lease, and etcd gone under load: never two leaders, nothing lost."""

from __future__ import annotations

import os
import signal
import time

import pytest
import zmq

from client_node.client import Client, json_payload
from tests.ha.cluster import HaGroup
from tests.harness import REPO, scaled, wait_until
from wire import protocol as p
from wire.protocol import MsgType

NODES, CAPACITY = 3, 8


def start_nodes(group: HaGroup, tmp_path) -> None:
    env = {"PYTHONPATH": REPO, "ZLB_TEST_EXEC_LOG": str(tmp_path / "executions.log")}
    for node_id in range(1, NODES + 1):
        group.start_node(node_id, CAPACITY, "counting", env)
    leader = group.leader()
    wait_until(lambda: leader.status()["servers_active"] == NODES, 15, "the nodes to join the leader")


def submit_all(client: Client, first: int, count: int) -> list[int]:
    ids = list(range(first, first + count))
    for i in ids:
        client.submit(json_payload(20, i), request_id=i)
        client.pump(0.003)
    return ids


def collect(client: Client, ids: list[int], timeout: float) -> dict[int, object]:
    results: dict[int, object] = {}
    deadline = time.monotonic() + scaled(timeout)
    while len(results) < len(ids) and time.monotonic() < deadline:
        client.pump(0.5)
        for r in client.take_results():
            assert r.request_id not in results, f"request {r.request_id} answered twice"
            assert r.ok, r
            results[r.request_id] = r
    missing = sorted(set(ids) - set(results))
    assert not missing, f"{len(missing)} never answered: {missing[:20]}"
    return results


def answer_to_a_submit(frontend: str) -> MsgType:
    """What a member's frontend answers a raw SUBMIT with."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(frontend)
        sock.send_multipart([p.encode(MsgType.SUBMIT, 77, 1, 5, 1), json_payload(0, "probe")])
        assert sock.poll(int(scaled(5) * 1000)), "no answer"
        return p.decode(sock.recv_multipart()[0])[0]
    finally:
        sock.close(0)


@pytest.mark.timeout(120)
def test_a_leader_paused_past_its_lease_resumes_as_a_standby(ha_group: HaGroup, tmp_path):
    """SIGSTOP the leader for 4 s: the standby leads; SIGCONT: within 6 s the old one says standby and
    answers a submit with REDIRECT, never a result; every request answered once."""
    start_nodes(ha_group, tmp_path)
    old = ha_group.leader()
    other = next(m for m in ha_group.members if m is not old)
    with Client(ha_group.list_of("frontend"), client_id=3, retry_s=1.0) as client:
        ids = submit_all(client, 1, 200)
        os.kill(old.proc.pid, signal.SIGSTOP)
        try:
            ha_group.wait_leader(other, timeout=10)
            ids += submit_all(client, 201, 200)
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_until(lambda: old.role() == "standby", 6, "the resumed member to say it is a standby")
        said_at = time.monotonic() - resumed
        assert said_at <= scaled(6)
        assert answer_to_a_submit(old.endpoints.frontend) is MsgType.REDIRECT
        assert other.role() == "leader"
        collect(client, ids, 60)
        assert client.conflicting_answers == 0
    assert "stopped leading" in old.proc.stderr()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_etcd_gone_under_load_no_one_leads_and_nothing_is_lost(ha_group: HaGroup, tmp_path):
    """etcd killed under load: within 6 s no member says it leads; etcd back: a leader within 15 s, all answered."""
    start_nodes(ha_group, tmp_path)
    with Client(ha_group.list_of("frontend"), client_id=4, retry_s=1.0) as client:
        ids = submit_all(client, 1, 200)
        ha_group.etcd.stop()
        stopped = time.monotonic()
        wait_until(lambda: ha_group.leader() is None, 6, "no member to lead once etcd is gone")
        assert time.monotonic() - stopped <= scaled(6)
        ids += submit_all(client, 201, 100)  # sent while no one leads: they wait, then go through
        ha_group.etcd.start()
        wait_until(ha_group.leader, 15, "a leader once etcd is back")
        collect(client, ids, 90)
        assert client.conflicting_answers == 0
