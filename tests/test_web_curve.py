"""With curve on, the gateway submits with the client key and administers with the admin key pair."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Endpoints, ProcessGroup, free_port, start_balancer, wait_until
from tests.test_http_gateway import start_gateway
from wire import security

ADMIN_SECRET_ENV = "ZLB_HTTP_ADMIN_SECRET"
NODE_SECRET_ENV = "ZLB_HTTP_NODE_SECRET"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A balancer pair, a client pair and an admin pair; only the public keys named in `allow_only` are admitted."""
    out: dict[str, Path] = {}
    for name in ("balancer", "client", "admin"):
        security.generate_keys(str(tmp_path / "keys"), name)
        out[name] = tmp_path / "keys" / f"{name}.key_secret"
    out["server_key"] = tmp_path / "keys" / "balancer.key"
    return out


@pytest.fixture(autouse=True)
def as_client(keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process (which pings the balancer at start) talks with the client key."""
    monkeypatch.setenv(security.CURVE_SECRET_ENV, str(keys["client"]))
    monkeypatch.setenv(security.SERVER_KEY_ENV, str(keys["server_key"]))


def allow(tmp_path: Path, *names: str) -> Path:
    where = tmp_path / "allow"
    where.mkdir()
    for name in names:
        shutil.copy(tmp_path / "keys" / f"{name}.key", where)
    return where


def gateway_env(keys: dict[str, Path]) -> dict[str, str]:
    return {
        security.CURVE_SECRET_ENV: str(keys["client"]),
        security.SERVER_KEY_ENV: str(keys["server_key"]),
        ADMIN_SECRET_ENV: str(keys["admin"]),
    }


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return dict(pairs)


@pytest.mark.timeout(60)
def test_gateway_works_under_curve_and_keeps_the_admin_key_to_itself(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], tmp_path: Path
):
    """Configure, send, down and up work under curve; the nodes it starts hold the client key, not the admin key."""
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(allow(tmp_path, "client", "admin"))]
    start_balancer(procs, endpoints, 100, *curve)
    gateway = start_gateway(procs, "--cost-ms", "10", env=gateway_env(keys))
    spec = {"num_servers": 2, "num_clients": 1, "requests_per_client": 2}
    assert gateway.call("POST", "/configure", spec).status == 200
    assert gateway.call("POST", "/send_request", {"client_id": 5, "request_id": 1}).status == 200
    wait_until(lambda: len(gateway.get("/requests?status=processed")) == 3, 15, "three requests processed")
    assert gateway.call("POST", "/server_down/1").status == 200
    assert gateway.call("POST", "/server_up/1").status == 200
    node_env = environ_of(gateway.get("/servers")[0]["pid"])
    assert node_env[security.CURVE_SECRET_ENV] == str(keys["client"])
    assert ADMIN_SECRET_ENV not in node_env
    assert "zlb_up 1.0" in gateway.call("GET", "/metrics").body.decode().splitlines()


def test_control_calls_use_the_admin_key(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], tmp_path: Path
):
    """With only the client key admitted, the gateway's control calls (made with the admin key) are refused."""
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(allow(tmp_path, "client"))]
    start_balancer(procs, endpoints, 100, *curve)
    gateway = start_gateway(procs, "--control-timeout", "0.5", env=gateway_env(keys))
    reply = gateway.call("GET", "/servers")
    assert reply.status == 503
    assert "no answer from the balancer" in reply.json()["error"]


@pytest.mark.timeout(60)
def test_under_node_allow_configure_starts_nodes_with_the_node_key(
    procs: ProcessGroup, endpoints: Endpoints, keys: dict[str, Path], tmp_path: Path
):
    """With the balancer's --node-allow, ZLB_HTTP_NODE_SECRET gives /configure's nodes a key that may serve."""
    security.generate_keys(str(tmp_path / "keys"), "node")
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    shutil.copy(tmp_path / "keys" / "node.key", nodes)
    curve = ["--curve-secret", str(keys["balancer"]), "--allow", str(allow(tmp_path, "client", "admin"))]
    balancer = start_balancer(procs, endpoints, 100, *curve, "--node-allow", str(nodes))
    node_secret = str(tmp_path / "keys" / "node.key_secret")
    gateway = start_gateway(procs, "--cost-ms", "10", env={**gateway_env(keys), NODE_SECRET_ENV: node_secret})
    spec = {"num_servers": 2, "num_clients": 1, "requests_per_client": 3}
    assert gateway.call("POST", "/configure", spec).status == 200  # both nodes joined
    wait_until(lambda: len(gateway.get("/requests?status=processed")) == 3, 15, "three requests processed")
    node_env = environ_of(gateway.get("/servers")[0]["pid"])
    assert node_env[security.CURVE_SECRET_ENV] == node_secret
    assert NODE_SECRET_ENV not in node_env and ADMIN_SECRET_ENV not in node_env
    assert "backend.auth_refused" not in balancer.call("status")["bad_input"]


def test_a_node_secret_that_is_no_key_pair_stops_the_gateway_at_once(procs: ProcessGroup, keys: dict[str, Path]):
    """ZLB_HTTP_NODE_SECRET naming a public key file: exit 2 and one line, before anything is served."""
    env = {**procs.env, **gateway_env(keys), NODE_SECRET_ENV: str(keys["server_key"])}
    done = subprocess.run(
        [sys.executable, "-m", "zlb", "http", "--quiet", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no secret key" in lines[0], lines
