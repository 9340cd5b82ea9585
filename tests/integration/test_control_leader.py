"""Admin commands, the monitor's subscription and the HTTP gateway given an HA group's endpoint list.

A real `zlb balancer` plays the leader. A fake standby, a ZeroMQ ROUTER served by a thread of the test,
answers as balancer/standby.py does: `status` and `ping` with `"role": "standby"` naming the leader's
control endpoint, every other command with `{"ok": false, "error": ..., "leader": X}`. A dead member is a
reserved port nothing listens on.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from monitor.stream import EventStream
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, free_port, scaled
from tests.test_http_gateway import start_gateway
from wire import control_client
from wire import protocol as p


class FakeStandby:
    """A control ROUTER that answers like a standby whose leader's control is `leader` (None: none elected)."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.asked: list[str] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-standby", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._ctx.term()

    def status(self) -> dict[str, Any]:
        ha = {
            "name": "fake",
            "group": "g",
            "leader": "real" if self.leader else None,
            "leader_endpoints": {"control": self.leader} if self.leader else None,
            "etcd_ok": True,
            "etcd_problem": None,
            "replica": {"following": "tcp://127.0.0.1:1", "applied_seq": 4, "records": 9, "caught_up": True},
            "redirected": 0,
        }
        return {"role": "standby", "epoch": 7, "uptime_s": 1.5, "endpoints": {"control": self.endpoint}, "ha": ha}

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(50, zmq.POLLIN):
                    continue
                frames = self._sock.recv_multipart()
                cmd = p.decode_map(frames[-1]).get("cmd")
                self.asked.append(cmd)
                if cmd in ("status", "ping"):
                    reply: dict[str, Any] = {"ok": True, "result": self.status()}
                else:
                    where = f"the leader's control is {self.leader}" if self.leader else "no leader is elected yet"
                    reply = {"ok": False, "error": f"this balancer is a standby; {where}", "leader": self.leader}
                self._sock.send_multipart([*frames[:-1], p.encode_map(reply)])
        finally:
            self._sock.close(linger=0)


@pytest.fixture
def standby(balancer: LiveBalancer) -> Iterator[FakeStandby]:
    """A fake standby naming the live balancer as its leader."""
    fake = FakeStandby(balancer.endpoints.control)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def lonely_standby() -> Iterator[FakeStandby]:
    """A fake standby that knows no leader."""
    fake = FakeStandby(None)
    try:
        yield fake
    finally:
        fake.close()


def dead() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.mark.timeout(60)
def test_admin_commands_reach_the_leader_through_a_standby(
    balancer: LiveBalancer, procs: ProcessGroup, standby: FakeStandby
):
    """`--control standby,leader` and `--control standby` alone both reach the leader."""
    real = balancer.endpoints.control
    for control in (f"{standby.endpoint},{real}", standby.endpoint):
        done = procs.run("servers", "--json", "--control", control)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []  # the real balancer's (empty) table
    assert "servers" in standby.asked  # alone in the list, it was asked, refused, and followed
    # A change goes to the leader only, and once.
    done = procs.run("down", "7", "--control", standby.endpoint)
    assert "Server 7 not found" in done.stderr  # the leader's verdict, not the standby's refusal


@pytest.mark.timeout(60)
def test_status_prefers_the_leader_and_says_which_member_answered(
    balancer: LiveBalancer, procs: ProcessGroup, standby: FakeStandby
):
    """A standby answers status too; the leader it names is asked, and its answer wins."""
    for control in (standby.endpoint, f"{standby.endpoint},{balancer.endpoints.control}"):
        reached, result = control_client.reach(control, "status", timeout_s=scaled(3))
        assert reached == balancer.endpoints.control
        assert "started_at" in result and "role" not in result  # the real (non-HA) balancer's status
    done = procs.run("status", "--control", standby.endpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["Balancer", "up"]  # the leader's status, as a lone balancer shows it


@pytest.mark.timeout(60)
def test_a_standby_whose_leader_is_silent_reports_itself(procs: ProcessGroup, endpoints: Endpoints):
    """No leader answers by the deadline: the standby's own status is the answer, and zlb status shows it."""
    fake = FakeStandby(dead())
    try:
        reached, result = control_client.reach(fake.endpoint, "status", timeout_s=0.3)
        assert reached == fake.endpoint and result["role"] == "standby"
        done = procs.run("status", "--control", fake.endpoint)
        assert done.returncode == 0, done.stderr
        rows = {line.split()[0]: " ".join(line.split()[1:]) for line in done.stdout.splitlines()}
        assert rows["Balancer"].startswith(f"standby fake of group g, reached at {fake.endpoint}")
        assert rows["Leader"].startswith("real, epoch 7") and "did not answer" in rows["Leader"]
        assert rows["Follows"].startswith("tcp://127.0.0.1:1: applied batch 4, 9 records, caught up")
    finally:
        fake.close()


@pytest.mark.timeout(60)
def test_a_dead_first_member_costs_nothing(balancer: LiveBalancer, procs: ProcessGroup):
    """Members are asked at once: a dead first one neither fails the call nor eats its deadline."""
    real = balancer.endpoints.control
    timeout = scaled(6)
    started = time.monotonic()
    reached, rows = control_client.reach(f"{dead()},{dead()},{real}", "servers", timeout_s=timeout)
    assert (reached, rows) == (real, [])
    assert time.monotonic() - started < timeout / 3  # not a share of the deadline per dead member
    done = procs.run("servers", "--json", "--control", f"{dead()},{real}")
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
    with pytest.raises(control_client.BalancerUnreachable, match="no answer"):
        control_client.call(f"{dead()},{dead()}", "servers", timeout_s=0.2)


@pytest.mark.timeout(60)
def test_only_standbys_and_no_leader_is_no_leader(procs: ProcessGroup, lonely_standby: FakeStandby):
    """Standbys refusing with no leader to name end the call as NoLeader: the leader is unreachable."""
    with pytest.raises(control_client.NoLeader, match="no leader is elected yet") as caught:
        control_client.call(f"{lonely_standby.endpoint},{dead()}", "servers", timeout_s=0.3)
    assert isinstance(caught.value, control_client.BalancerUnreachable)
    done = procs.run("servers", "--control", lonely_standby.endpoint)
    assert done.returncode == 1 and "no leader is elected yet" in done.stderr
    with pytest.raises(control_client.ControlError, match="no endpoint"):
        control_client.call(" , ", "servers")


@pytest.mark.timeout(60)
def test_the_event_stream_hears_the_leader_among_dead_members(balancer: LiveBalancer):
    """`--events dead,leader`: the SUB connects to every member and hears the one that publishes."""
    stream = EventStream(f"{dead()},{balancer.endpoints.events}")
    try:
        deadline = time.monotonic() + scaled(10)
        heard: list[Any] = []
        while not heard and time.monotonic() < deadline:
            heard = stream.poll(0.5)  # stats ticks come every heartbeat
        assert heard, "no event heard through the list"
    finally:
        stream.close()


@pytest.mark.timeout(90)
def test_the_gateway_follows_the_leader_end_to_end(
    balancer: LiveBalancer, procs: ProcessGroup, standby: FakeStandby
):
    """`zlb http --control dead,standby --events dead,leader`: reads, changes, metrics and pushed events, each
    control call followed from the standby to the leader it names (the list does not hold the leader)."""
    gateway = start_gateway(
        procs,
        "--control",
        f"{dead()},{standby.endpoint}",
        "--events",
        f"{dead()},{balancer.endpoints.events}",
    )
    assert gateway.get("/servers") == []
    assert "zlb_up 1.0" in gateway.call("GET", "/metrics").body.decode().splitlines()
    with urllib.request.urlopen(gateway.url + "/events", timeout=scaled(30)) as pushed:
        spec = {"num_servers": 1, "num_clients": 0, "requests_per_client": 0}
        assert gateway.call("POST", "/configure", spec).status == 200  # the leader took it
        assert [s["server_id"] for s in gateway.get("/servers")] == [0]
        while (line := pushed.readline()) != b"event: log\n":  # its events, heard over the list
            assert line, "the event stream ended"
    assert "configure" in standby.asked  # the standby refused it, naming the leader, which took it


def test_a_leaders_status_has_an_ha_row():
    """`zlb status` of an HA leader: which member, its epoch, its standby or that it is alone, and etcd."""
    from zlb.admin_cli import status_lines

    base = {"started_at": 0, "uptime_s": 5, "servers": 0, "servers_active": 0, "servers_by_state": {}}
    base.update(queue_depth=0, in_flight=0)
    ha = {"name": "a", "group": "g", "etcd_ok": True, "standby": "b", "alone": False, "lag_records": 2}
    rows = dict(status_lines({**base, "role": "leader", "epoch": 9, "ha": ha}, "tcp://a:5558"))
    assert rows["HA"].startswith("leader a of group g, reached at tcp://a:5558, epoch 9; standby b in sync; lag 2")
    assert rows["HA"].endswith("; etcd ok")
    alone = {**ha, "standby": None, "alone": True, "etcd_ok": False, "etcd_problem": "ConnectionError: refused"}
    rows = dict(status_lines({**base, "role": "leader", "epoch": 9, "ha": alone}))
    assert "ALONE: no standby in sync" in rows["HA"]
    assert rows["HA"].endswith("etcd UNREACHABLE: ConnectionError: refused")
    assert "HA" not in dict(status_lines(base))  # a balancer without --ha shows what it always showed
