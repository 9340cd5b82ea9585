"""Roles under curve: with --node-allow only node keys serve, and node keys cannot act as clients."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, Proc, ProcessGroup, start_balancer, wait_until
from wire import security

# Generous timings: these tests are about keys, not liveness, and run on a busy machine.
HEARTBEAT = ["--heartbeat-ms", "250", "--liveness", "20"]
REFUSAL_WAIT_S = 1.5  # long enough for many handshake attempts at libzmq's 100 ms reconnect interval


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key pairs of the balancer, a client, a node and an admin; directories allow/ (client), nodes/ (node)."""
    out: dict[str, Path] = {}
    for name in ("balancer", "client", "node", "admin"):
        security.generate_keys(str(tmp_path / "keys"), name)
        out[name] = tmp_path / "keys" / f"{name}.key_secret"
    out["server_key"] = tmp_path / "keys" / "balancer.key"
    for folder, names in (("allow", ["client"]), ("nodes", ["node"]), ("admins", ["admin"])):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(tmp_path / "keys" / f"{name}.key", tmp_path / folder)
        out[folder] = tmp_path / folder
    return out


def curve_env(keys: dict[str, Path], who: str) -> dict[str, str]:
    return {security.CURVE_SECRET_ENV: str(keys[who]), security.SERVER_KEY_ENV: str(keys["server_key"])}


def as_peer(monkeypatch: pytest.MonkeyPatch, keys: dict[str, Path], who: str) -> None:
    """This test process (its Client, its control calls) talks with `who`'s key."""
    for var, value in curve_env(keys, who).items():
        monkeypatch.setenv(var, value)


def start_node(procs: ProcessGroup, keys: dict[str, Path], node_id: int, who: str) -> Proc:
    return procs.start(
        f"node-{node_id}-{who}", "server", *HEARTBEAT, "--id", str(node_id), extra_env=curve_env(keys, who)
    )


def send(endpoint: str, client_id: int, count: int, timeout: float) -> list[int | None]:
    """`count` requests; the server that ran each one."""
    with Client(endpoint, client_id=client_id, retry_s=0.5) as client:
        pending = [client.submit(json_payload(0, f"job {i}"), request_id=i + 1) for i in range(count)]
        results = [p.result(timeout=timeout) for p in pending]
    assert all(r.ok for r in results), results
    return [r.server_id for r in results]


@pytest.mark.timeout(90)
def test_with_node_allow_a_client_key_cannot_serve_and_a_node_key_can(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    """A `zlb server` with a client's key is refused at the handshake (counted, logged) and gets no work; a node
    key joins and serves every request; the node key is in turn refused as a client."""
    as_peer(monkeypatch, keys, "admin")
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(keys["allow"])]
    roles = ["--admin-allow", str(keys["admins"]), "--node-allow", str(keys["nodes"])]
    balancer = start_balancer(procs, endpoints, 250, "--liveness", "20", *curve, *roles)
    thief = start_node(procs, keys, 1, "client")  # a client's key trying to serve
    start_node(procs, keys, 2, "admin")  # nor may an admin key serve: it is not in --node-allow
    start_node(procs, keys, 0, "node")
    balancer.wait_servers_active({0}, timeout=20)
    wait_until(lambda: bad_input(balancer).get("backend.auth_refused", 0) >= 2, 15, "the refusals counted")
    assert "refused a peer on the backend (nodes join with a key from --node-allow)" in balancer.proc.stderr()

    as_peer(monkeypatch, keys, "client")
    assert send(endpoints.frontend, client_id=1, count=20, timeout=20) == [0] * 20
    assert set(balancer.servers()) == {0}  # the client's and the admin's "nodes" never joined
    assert balancer.servers()[0]["handled_requests"] == 20
    # The refused node says so once its wait for the balancer runs out (liveness x heartbeat, 5 s here).
    wait_until(lambda: "refused this node's curve key" in thief.stderr(), 20, "the refused node to say so")
    assert "--node-allow" in thief.stderr() and thief.popen.poll() is None  # it keeps trying, as for a lost balancer

    as_peer(monkeypatch, keys, "node")  # a node key is not a client key
    with pytest.raises(TimeoutError), Client(endpoints.frontend, client_id=2, retry_s=0.5) as intruder:
        intruder.submit(json_payload(0, "submitted with a node key"), request_id=1).result(timeout=REFUSAL_WAIT_S)
    as_peer(monkeypatch, keys, "admin")
    assert bad_input(balancer).get("frontend.auth_refused", 0) > 0
    assert set(balancer.servers()) == {0}


@pytest.mark.timeout(60)
def test_without_node_allow_every_allowed_key_may_serve_as_before(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    """Without --node-allow, a key in --allow joins as a node too (the behaviour before the split)."""
    as_peer(monkeypatch, keys, "client")
    shutil.copy(keys["nodes"] / "node.key", keys["allow"])
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(keys["allow"])]
    balancer = start_balancer(procs, endpoints, 250, "--liveness", "20", *curve)
    start_node(procs, keys, 0, "node")
    start_node(procs, keys, 1, "client")
    balancer.wait_servers_active({0, 1}, timeout=20)
    assert set(send(endpoints.frontend, client_id=1, count=20, timeout=20)) <= {0, 1}
    assert "backend.auth_refused" not in bad_input(balancer)


def bad_input(balancer: LiveBalancer) -> dict[str, int]:
    return balancer.call("status")["bad_input"]


def test_node_allow_mistakes_are_one_line_and_a_non_zero_exit(procs: ProcessGroup, keys: dict[str, Path]):
    """A missing directory, an empty one, or --node-allow without curve: an error line and a non-zero exit."""
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(keys["allow"])]
    missing = procs.run("balancer", *curve, "--node-allow", str(keys["nodes"] / "nope"))
    assert missing.returncode == 2 and "Invalid value for '--node-allow'" in missing.stderr, missing.stderr
    assert "does not exist" in missing.stderr.splitlines()[-1]
    empty = keys["nodes"].parent / "empty"
    empty.mkdir()
    done = procs.run("balancer", *curve, "--node-allow", str(empty))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"Error: --node-allow {empty} holds no public key files (*.key)"
    alone = procs.run("balancer", "--node-allow", str(keys["nodes"]))
    assert alone.returncode == 2 and "--node-allow needs --curve-secret and --allow" in alone.stderr
    procs.env["ZLB_NODE_ALLOW"] = str(empty)  # the variable is read like the option
    from_env = procs.run("balancer", *curve)
    assert from_env.returncode == 1 and "--node-allow" in from_env.stderr
