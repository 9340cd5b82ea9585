"""CurveZMQ end to end: allowed peers work; unknown nodes, clients, subscribers and admins are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zmq

from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from wire import control_client, security
from wire import protocol as p

REFUSAL_WAIT_S = 1.5  # long enough for many handshake attempts at libzmq's 100 ms reconnect interval


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A balancer pair, three allowed pairs (node, client, watcher) and an intruder outside --allow."""
    out: dict[str, Path] = {}
    for name in ("balancer", "node", "client", "watcher", "intruder"):
        where = tmp_path / ("stranger" if name == "intruder" else "keys")
        security.generate_keys(str(where), name)
        out[name] = where / f"{name}.key_secret"
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in ("node", "client", "watcher"):
        shutil.copy(tmp_path / "keys" / f"{name}.key", allow)
    out["allow"] = allow
    out["server_key"] = tmp_path / "keys" / "balancer.key"
    return out


def curve_env(keys: dict[str, Path], who: str) -> dict[str, str]:
    return {security.CURVE_SECRET_ENV: str(keys[who]), security.SERVER_KEY_ENV: str(keys["server_key"])}


def subscriber(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    security.secure_client_socket(sock)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def test_curve_admits_known_keys_and_refuses_the_rest(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    """An allowed node and client work; an unknown or keyless node, client, subscriber or admin gets nothing."""
    for var, value in curve_env(keys, "client").items():
        monkeypatch.setenv(var, value)  # this test process talks as the allowed client
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(keys["allow"])]
    balancer = start_balancer(procs, endpoints, 100, *curve)
    args = ["server", "--heartbeat-ms", "100"]
    procs.start("good-node", *args, "--id", "0", extra_env=curve_env(keys, "node"))
    procs.start("bad-node", *args, "--id", "1", extra_env=curve_env(keys, "intruder"))
    no_keys = {security.CURVE_SECRET_ENV: "", security.SERVER_KEY_ENV: ""}
    procs.start("plain-node", *args, "--id", "2", extra_env=no_keys)
    balancer.wait_servers_active({0})
    with Client(endpoints.frontend, client_id=1, retry_s=0.5) as client:
        assert client.submit(json_payload(0, "hi"), request_id=1).result(timeout=10).ok

    watched = subscriber(endpoints.events)
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(keys["intruder"]))
    spied = subscriber(endpoints.events)
    with pytest.raises(TimeoutError), Client(endpoints.frontend, client_id=2, retry_s=0.5) as intruder:
        intruder.submit(json_payload(0, "let me in"), request_id=1).result(timeout=REFUSAL_WAIT_S)
    with pytest.raises(control_client.BalancerUnreachable):
        control_client.call(endpoints.control, "servers", timeout_s=REFUSAL_WAIT_S)
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(keys["client"]))
    try:
        check_events(balancer, watched, spied)
    finally:
        watched.close(linger=0)
        spied.close(linger=0)

    assert set(balancer.servers()) == {0}
    bad = balancer.call("status")["bad_input"]
    assert bad.get("backend.auth_refused", 0) > 0, bad
    assert bad.get("frontend.auth_refused", 0) > 0, bad
    assert bad.get("control.auth_refused", 0) > 0, bad
    assert bad.get("events.auth_refused", 0) > 0, bad
    assert "refused a peer" in balancer.proc.stderr()
    denied = procs.run("servers", "--json", timeout=20)  # the CLI without keys: no answer, one clear line
    assert denied.returncode == 1
    assert "no answer from the balancer" in denied.stderr


def check_events(balancer: LiveBalancer, watched: zmq.Socket, spied: zmq.Socket) -> None:
    """Events reach the allowed subscriber; the intruder's subscription receives nothing."""

    def watched_got_one() -> bool:
        balancer.call("configure", servers=1, clients=1)
        return bool(watched.poll(50))

    wait_until(watched_got_one, 10, "an event at the allowed subscriber")
    topic, _batch = watched.recv_multipart()
    assert topic.startswith(p.TOPIC_SYSTEM) or topic.startswith(b"zlb.")
    for _ in range(5):
        balancer.call("configure", servers=1, clients=1)
    assert spied.poll(int(REFUSAL_WAIT_S * 1000)) == 0


def test_binding_beyond_loopback_without_curve_warns(procs: ProcessGroup):
    """A balancer bound to every interface without curve says so on stderr at start."""
    ends = Endpoints.fresh()
    wide = [f"--{role}={getattr(ends, role).replace('127.0.0.1', '0.0.0.0')}" for role in ("frontend", "backend")]
    balancer = procs.start("wide", "balancer", *wide, "--events", ends.events, "--control", ends.control)
    wait_until(lambda: "warning" in balancer.stderr(), 10, "the warning")
    assert "without curve" in balancer.stderr()
    assert "0.0.0.0" in balancer.stderr()


def test_with_admin_allow_only_admin_keys_change_the_balancer(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Under --admin-allow a client key submits and reads but may not down, up, drain or configure; an admin may."""
    security.generate_keys(str(tmp_path / "admins"), "admin")
    admin_dir = tmp_path / "admin-allow"
    admin_dir.mkdir()
    shutil.copy(tmp_path / "admins" / "admin.key", admin_dir)
    keys["admin"] = tmp_path / "admins" / "admin.key_secret"
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(keys["allow"]), "--admin-allow", str(admin_dir)]
    for var, value in curve_env(keys, "admin").items():
        monkeypatch.setenv(var, value)
    balancer = start_balancer(procs, endpoints, 100, *curve)
    procs.start("node", "server", "--heartbeat-ms", "100", "--id", "0", extra_env=curve_env(keys, "node"))
    balancer.wait_servers_active({0})
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(keys["client"]))
    assert [s["server_id"] for s in control_client.call(endpoints.control, "servers")] == [0]  # reads stay open
    for cmd, args in (("down", {"server_id": 0}), ("drain", {"server_id": 0}), ("configure", {"servers": 1})):
        with pytest.raises(control_client.ControlError, match=f"admin key required for {cmd}"):
            control_client.call(endpoints.control, cmd, **args)
    with Client(endpoints.frontend, client_id=1, retry_s=0.5) as client:
        assert client.submit(json_payload(0, "hi"), request_id=1).result(timeout=10).ok
    procs.env.update(curve_env(keys, "client"))
    denied = procs.run("down", "0", timeout=20)  # the CLI with a client key: one line, non-zero
    assert denied.returncode != 0 and "admin key required for down" in denied.stderr
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(keys["admin"]))
    control_client.call(endpoints.control, "down", server_id=0)
    assert balancer.servers()[0]["state"] == "down"
