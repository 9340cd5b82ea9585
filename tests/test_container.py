"""The image end to end (issue 25, opt-in: `python -m pytest -m container`): build it with podman, run a
balancer, two nodes and a client as containers on one network, kill a node mid-run: nothing is lost.

The image is built from the Containerfile on a base made from Debian's packages (deploy/base-image.sh,
which this test runs when the base is missing and debootstrap is there to make it); the test is skipped,
with the reason, where podman or the base is missing. The containers share a podman network of their
own, created `--internal`: no route leaves this machine. Every container and the network are removed
by name afterwards.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import scaled, wait_until
from wire import endpoints

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("ZLB_CONTAINER_BASE", "localhost/zlb-base:bookworm")
# Building the base (debootstrap) takes about a minute here; the image about 20 s once pip has the wheels.
BUILD_TIMEOUT_S = 600
REQUESTS = 60
COST_MS = 300
NODE_CAPACITY = 2
# The balancer's defaults as its containers bind them on every address (wire/endpoints.py).
PORTS = {role: endpoints.ENDPOINT_ENV[role][1].rsplit(":", 1)[1] for role in endpoints.ENDPOINT_ENV}
TIMING = ("--heartbeat-ms", "100", "--liveness", "10")  # a killed node is declared dead after 1 s


def _podman_base() -> list[str]:
    """podman, with runc where crun cannot run here (cgroup v1 or hybrid) and ZLB_PODMAN_RUNTIME to choose."""
    runtime = os.environ.get("ZLB_PODMAN_RUNTIME")
    if runtime is None and not Path("/sys/fs/cgroup/cgroup.controllers").exists() and shutil.which("runc"):
        runtime = "runc"
    return ["podman", *(["--runtime", runtime] if runtime else [])]


def _limits() -> list[str]:
    """Resource limits no higher than this process has: podman's defaults exceed them on some machines."""
    flags = []
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _hard = resource.getrlimit(limit)
        value = 4096 if soft == resource.RLIM_INFINITY else min(4096, soft // 2)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


PODMAN = _podman_base() if shutil.which("podman") else []


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run one podman command and capture its output."""
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=scaled(timeout), stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The zlb image built from this checkout's Containerfile on the Debian base; removed afterwards."""
    if not PODMAN:
        pytest.skip("podman is not installed (apt-get install podman)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        if not (shutil.which("debootstrap") and os.geteuid() == 0):
            pytest.skip(f"no base image {BASE}, and no debootstrap run as root to make one (deploy/base-image.sh)")
        made = subprocess.run(
            [str(ROOT / "deploy" / "base-image.sh"), BASE], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        assert made.returncode == 0, made.stderr[-2000:]
    tag = f"localhost/zlb-test:{uuid.uuid4().hex[:8]}"
    # --layers=false: no intermediate image (the build stage's) is left behind.
    build = ["build", "--layers=false", *_limits(), "--build-arg", f"BASE={BASE}", "-t", tag, "-f", "Containerfile"]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):  # a mirror this machine uses, if any
        if os.environ.get(var, "").startswith("http"):
            build += ["--build-arg", f"{var}={os.environ[var]}"]
    cert = os.environ.get("PIP_CERT")
    if cert and Path(cert).is_file():  # a proxy's certificate authority that pip here trusts
        build += ["--build-arg", "PIP_CERT=/run/host-ca.crt", "-v", f"{cert}:/run/host-ca.crt:ro"]
    subprocess.run([*PODMAN, *build, str(ROOT)], check=True, timeout=BUILD_TIMEOUT_S, capture_output=True)
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)


class Pod:
    """Containers of one test on a network of their own, each removed by name at the end."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.tag = uuid.uuid4().hex[:8]
        self.network = f"zlb-test-{self.tag}"
        self.names: list[str] = []
        podman("network", "create", "--internal", self.network)

    def name(self, role: str) -> str:
        return f"zlb-{role}-{self.tag}"

    def run(self, role: str, *args: str) -> str:
        """Start `zlb ARGS` in a detached container called after its role; its name doubles as its host name."""
        name = self.name(role)
        self.names.append(name)
        where = ("--name", name, "--hostname", name, "--network", self.network)
        podman("run", "-d", *_limits(), *where, self.image, *args)
        return name

    def zlb(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """`zlb ARGS` in the balancer's container, against its control socket on loopback."""
        return podman("exec", self.name("balancer"), "zlb", *args, "--control", f"tcp://127.0.0.1:{PORTS['control']}")

    def close(self) -> None:
        for name in reversed(self.names):
            podman("rm", "--force", "--time", "2", name, check=False)
        podman("network", "rm", "--force", self.network, check=False)


@pytest.fixture
def pod(image: str) -> Iterator[Pod]:
    group = Pod(image)
    try:
        yield group
    finally:
        group.close()


def balancer_endpoint(pod: Pod, role: str) -> str:
    return f"tcp://{pod.name('balancer')}:{PORTS[role]}"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 180)
def test_a_node_killed_mid_run_loses_nothing(pod: Pod) -> None:
    """Balancer, two nodes and a client in containers; kill -9 of a busy node: every request is processed once."""
    binds = [arg for role, port in PORTS.items() for arg in (f"--{role}", f"tcp://0.0.0.0:{port}")]
    pod.run("balancer", "balancer", *binds, *TIMING, "--log-file", "")
    wait_until(lambda: pod.zlb("status", "--check", "--leader").returncode == 0, 30, "the balancer to answer")
    node = ("server", "--backend", balancer_endpoint(pod, "backend"), "--capacity", str(NODE_CAPACITY), *TIMING)
    victim, survivor = pod.run("node-a", *node), pod.run("node-b", *node)

    def servers() -> dict[str, dict]:
        return {row["host"]: row for row in json.loads(pod.zlb("servers", "--json").stdout)}

    wait_until(lambda: {victim, survivor} <= {h for h, s in servers().items() if s["active"]}, 30, "both nodes active")
    client = ("client", "--frontend", balancer_endpoint(pod, "frontend"), "--id", "7", "--json")
    pod.run("client", *client, "--requests", str(REQUESTS), "--cost-ms", str(COST_MS), "--timeout", "120")
    # Mid-run: the victim has finished work and holds more.
    wait_until(lambda: (s := servers()[victim])["in_flight"] > 0 and s["handled_requests"] > 0, 30, "the victim busy")
    podman("kill", "--signal", "KILL", victim)

    waited = podman("wait", pod.name("client"), timeout=150)
    logs = podman("logs", pod.name("client")).stdout
    assert waited.stdout.strip() == "0", logs[-2000:]
    results = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert sorted(r["request_id"] for r in results) == list(range(1, REQUESTS + 1))
    assert {r["status"] for r in results} == {"processed"}
    assert any(r["attempts"] > 1 for r in results), "no request was running on the killed node"
    status = json.loads(pod.zlb("status", "--json").stdout)
    assert status["requests"]["processed"] == REQUESTS
    assert status["requests"]["requeued"] >= 1  # the kill took work in flight with it
    assert servers()[victim]["state"] == "dead"
