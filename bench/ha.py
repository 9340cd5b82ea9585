"""An HA pair under the bench: one real etcd and two `zlb balancer --ha` members, started through the Bench.

Like tests/ha/cluster.py (which the bench does not import): etcd on free
loopback ports with its data in the bench's scratch directory, the first
member awaited as leader, the second as a standby the leader counts in sync.
Clients and nodes are given the comma-separated lists of both members'
endpoints and follow the leader. Every process goes through the Bench's
ProcessSet, so the run's stop ends each one by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balancer.election import DEFAULT_LEASE_S
from bench.harness import START_TIMEOUT_S, Bench, BenchError, Target, free_endpoint
from process_supervisor.supervisor import zlb_argv
from wire import control_client

# How often the takeover measurement asks the surviving member for its role (the brief's 20 ms).
ROLE_POLL_S = 0.02
# Longest wait for a takeover, or for a restarted member to come back in sync, before the bench gives up.
HA_WAIT_S = 30.0
GROUP = "bench"


def etcd_binary() -> str:
    """The etcd server binary on PATH; a BenchError saying how to get it when there is none."""
    path = shutil.which("etcd")
    if path is None:
        raise BenchError(
            "the ha scenario needs a real etcd: no `etcd` binary on PATH (Debian/Ubuntu: apt-get install etcd-server)"
        )
    return path


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@dataclass
class Member:
    """One `zlb balancer --ha` member: its endpoints, journal and (while it runs) its process."""

    name: str
    frontend: str
    backend: str
    events: str
    control: str
    replication: str
    journal: str
    proc: subprocess.Popen | None = None

    def status(self, timeout_s: float = 0.5) -> dict[str, Any] | None:
        """Its `status`, or None while it does not answer (starting, between phases, dead)."""
        try:
            return control_client.call(self.control, "status", timeout_s=timeout_s)
        except (control_client.BalancerUnreachable, control_client.ControlError):
            return None

    def role(self) -> str | None:
        status = self.status()
        return None if status is None else status.get("role")


@dataclass
class HaPair:
    """etcd, two members and the Target clients and nodes use (the members' endpoint lists)."""

    etcd: subprocess.Popen
    etcd_url: str
    lease_s: int
    members: list[Member] = field(default_factory=list)
    target: Target | None = None

    def list_of(self, role: str) -> str:
        return ",".join(getattr(m, role) for m in self.members)

    def leader(self) -> Member | None:
        leaders = [m for m in self.members if m.role() == "leader"]
        if len(leaders) > 1:
            raise BenchError(f"two members say they lead: {', '.join(m.name for m in leaders)}")
        return leaders[0] if leaders else None

    def in_sync(self) -> bool:
        """The leader counts its standby in sync."""
        leader = self.leader()
        status = None if leader is None else leader.status()
        return bool(status and status.get("ha", {}).get("in_sync"))


def wait_for(ready: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], str | None]) -> None:
    """Poll `ready` every ROLE_POLL_S; BenchError at the deadline, or as soon as `alive()` names a dead process."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        dead = alive()
        if dead is not None:
            raise BenchError(f"{dead} waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(ROLE_POLL_S)  # wait-ok: poll interval of a deadline-bounded wait


class HaBench:
    """Starts, kills, restarts and stops an HA pair through one Bench."""

    def __init__(self, bench: Bench, lease_s: int = DEFAULT_LEASE_S) -> None:
        self.bench = bench
        self.lease_s = lease_s

    def start_etcd(self) -> tuple[subprocess.Popen, str]:
        """A single-member etcd on free loopback ports; waits for its /health to say true."""
        binary = etcd_binary()
        client, peer = (f"http://127.0.0.1:{_port(free_endpoint())}" for _ in range(2))
        name = self.bench.name("etcd")
        argv = [
            binary, "--name", name, "--data-dir", os.path.join(self.bench.workdir, f"{name}-data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
        ]  # fmt: skip
        proc = self.bench.procs.start(name, argv)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as reply:
                    return json.loads(reply.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        def exited() -> str | None:
            if proc.poll() is None:
                return None
            return f"etcd exited with code {proc.returncode}: {self.bench.stderr(name)}"

        wait_for(healthy, START_TIMEOUT_S, "etcd to answer /health", exited)
        return proc, client.removeprefix("http://")

    def start_pair(self, nodes: int, capacity: int, handler: str = "echo") -> HaPair:
        """etcd, a leader, a standby in sync, then `nodes` `zlb server` nodes given both backends."""
        pair = self.begin_pair()
        self.complete_pair(pair, nodes, capacity, handler)
        return pair

    def begin_pair(self) -> HaPair:
        """etcd and the first member, launched and not awaited (the caller may start something meanwhile)."""
        etcd, url = self.start_etcd()
        pair = HaPair(etcd, url, self.lease_s)
        for i in range(2):
            endpoints = [free_endpoint() for _ in range(5)]
            journal = os.path.join(self.bench.workdir, f"{self.bench.name('member')}.journal")
            pair.members.append(Member(f"m{i}", *endpoints, journal))
        self.launch(pair, pair.members[0])
        return pair

    def complete_pair(self, pair: HaPair, nodes: int, capacity: int, handler: str = "echo") -> None:
        """Wait for the first member to lead; launch the second and the nodes, and wait until the leader counts
        the standby in sync and every node active."""
        first, second = pair.members
        self.wait(pair, lambda: first.role() == "leader", START_TIMEOUT_S, "the first member to lead")
        self.launch(pair, second)
        assert first.proc is not None
        lists = {role: pair.list_of(role) for role in ("frontend", "backend")}
        pair.target = Target("zlb ha", lists["frontend"], lists["backend"], first.proc, first.control)
        for _ in range(nodes):
            self.bench.add_zlb_node(pair.target, capacity, handler, [])
        self.wait(pair, pair.in_sync, START_TIMEOUT_S, "the standby to be in sync")
        self.bench.wait_zlb_nodes(pair.target, nodes)

    def launch(self, pair: HaPair, member: Member) -> None:
        """Start (or restart, on the same journal and endpoints) one member with zlb's defaults."""
        name = self.bench.name(f"member-{member.name}")
        argv = zlb_argv(
            "balancer",
            *("--ha", f"etcd://{pair.etcd_url}/{GROUP}", "--ha-lease-s", str(pair.lease_s)),
            *("--replication", member.replication, "--journal", member.journal),
            *("--frontend", member.frontend, "--backend", member.backend),
            *("--events", member.events, "--control", member.control),
            *("--log-file", os.path.join(self.bench.workdir, f"{name}.log")),
        )
        member.proc = self.bench.procs.start(name, argv)

    def wait(self, pair: HaPair, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """wait_for, failing at once if etcd or a member that should run has exited."""

        def dead() -> str | None:
            if pair.etcd.poll() is not None:
                return f"etcd exited with code {pair.etcd.returncode}"
            for m in pair.members:
                if m.proc is not None and m.proc.poll() is not None:
                    return f"member {m.name} exited with code {m.proc.returncode}"
            return None

        wait_for(ready, timeout_s, what, dead)

    def takeover_ms(self, pair: HaPair, restart: bool) -> float:
        """kill -9 the leader; ms until the other member's status says leader. With `restart`, bring the
        killed member back and wait until the leader counts it in sync."""
        leader = pair.leader()
        if leader is None or leader.proc is None:
            raise BenchError("no member leads before the kill")
        other = next(m for m in pair.members if m is not leader)
        killed_at = time.monotonic()  # the SIGKILL follows within microseconds (kill9 then reaps it)
        self.bench.procs.kill9(leader.proc)
        leader.proc = None
        self.wait(pair, lambda: other.role() == "leader", HA_WAIT_S, f"{other.name} to take over")
        took_ms = (time.monotonic() - killed_at) * 1000
        if restart:
            self.launch(pair, leader)
            self.wait(pair, pair.in_sync, HA_WAIT_S, f"the restarted {leader.name} to be in sync")
        return took_ms

    def stop(self, pair: HaPair) -> None:
        """The nodes, then the members (while etcd still answers their resignations), then etcd."""
        if pair.target is not None:
            self.bench.procs.stop(pair.target.nodes)
            pair.target.nodes.clear()
        self.bench.procs.stop([m.proc for m in pair.members if m.proc is not None])
        self.bench.procs.stop([pair.etcd])
