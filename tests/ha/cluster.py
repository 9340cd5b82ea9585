"""A real etcd and real `zlb balancer --ha` members on free loopback ports, for the HA tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import Endpoints, Proc, ProcessGroup, free_port, scaled, wait_until
from wire import control_client

HEARTBEAT_MS = 100


def etcd_binary() -> str:
    """Debian's etcd-server (.ci/run installs it); a missing binary fails the test loudly, never skips it."""
    path = shutil.which("etcd")
    assert path, "the etcd binary is missing: apt-get install etcd-server (.ci/run does this)"
    return path


class Etcd:
    """One etcd on free loopback ports with its own data directory; stop()/start() keep the data."""

    def __init__(self, workdir: Path) -> None:
        self.client_port, self.peer_port = free_port(), free_port()
        self.data = workdir / "etcd-data"
        self.log = workdir / "etcd.log"
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(), "--name", "zlb-test", "--data-dir", str(self.data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"zlb-test={peer}",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_until(self.healthy, 20, "etcd to answer")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/health", timeout=1) as reply:
                return json.loads(reply.read()).get("health") == "true"
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class Member:
    """One `zlb balancer --ha` member: its endpoints, journal and process."""

    name: str
    endpoints: Endpoints
    replication: str
    journal: str
    proc: Proc | None = None

    def status(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        try:
            return control_client.call(self.endpoints.control, "status", timeout_s=timeout_s, follow_leader=False)
        except (control_client.BalancerUnreachable, control_client.ControlError):
            return None

    def role(self) -> str | None:
        status = self.status()
        return None if status is None else status.get("role")

    def claim(self) -> int | None:
        """The epoch this member leads with, or None if it does not say it leads."""
        status = self.status()
        return status.get("epoch") if status is not None and status.get("role") == "leader" else None


@dataclass
class HaGroup:
    """An etcd, two members of one group, and the lists clients and nodes are given."""

    procs: ProcessGroup
    etcd: Etcd
    group: str = "test"
    members: list[Member] = field(default_factory=list)
    member_args: tuple[str, ...] = ()  # more options for every member (e.g. --max-attempts)

    @classmethod
    def start(cls, procs: ProcessGroup, size: int = 2, member_args: tuple[str, ...] = ()) -> HaGroup:
        etcd = Etcd(procs.workdir)
        etcd.start()
        group = cls(procs, etcd, member_args=member_args)
        try:
            for i in range(size):
                name = f"m{i}"
                rep = f"tcp://127.0.0.1:{free_port()}"
                member = Member(name, Endpoints.fresh(), rep, str(procs.workdir / f"{name}.journal"))
                group.members.append(member)
                group.launch(member)
                if i == 0:
                    wait_until(lambda m=member: m.role() == "leader", 15, "the first member to lead")
            wait_until(group.standby_in_sync, 15, "the standby to be in sync")
        except BaseException:
            group.stop()
            raise
        return group

    def stop(self) -> None:
        """Every process of the test by PID, the members first, while etcd still answers their resignations;
        then etcd."""
        self.procs.stop_all()
        self.etcd.stop()

    def launch(self, member: Member) -> None:
        e = member.endpoints
        member.proc = self.procs.start(
            f"member-{member.name}-{len(self.procs.procs)}", "balancer",
            "--ha", f"etcd://{self.etcd.url}/{self.group}", "--replication", member.replication,
            "--journal", member.journal, "--frontend", e.frontend, "--backend", e.backend,
            "--events", e.events, "--control", e.control,
            "--heartbeat-ms", str(HEARTBEAT_MS), "--liveness", "10", "--log-file", f"{member.name}.log",
            *self.member_args,
        )  # fmt: skip

    def list_of(self, role: str) -> str:
        return ",".join(getattr(m.endpoints, role) for m in self.members)

    def env(self) -> dict[str, str]:
        return {f"ZLB_{r.upper()}": self.list_of(r) for r in ("frontend", "backend", "events", "control")}

    def leader(self) -> Member | None:
        """The member leading with the newest epoch. Members are asked one after the other, so a handover
        can be seen from both sides (the old leader just before it stepped down); never with one epoch."""
        claims = [(epoch, m) for m in self.members if (epoch := m.claim()) is not None]
        epochs = [epoch for epoch, _m in claims]
        assert len(set(epochs)) == len(epochs), f"two members lead with one epoch: {claims}"
        return max(claims, key=lambda c: c[0])[1] if claims else None

    def standby_in_sync(self) -> bool:
        leader = self.leader()
        status = None if leader is None else leader.status()
        return bool(status and status["ha"]["in_sync"])

    def start_node(self, node_id: int, capacity: int, handler: str, env: dict[str, str]) -> Proc:
        return self.procs.start(
            f"node-{node_id}-{len(self.procs.procs)}", "server", "--id", str(node_id), "--capacity", str(capacity),
            "--backend", self.list_of("backend"), "--heartbeat-ms", str(HEARTBEAT_MS), "--liveness", "10",
            "--handler", f"tests.reliability.handlers:{handler}", extra_env=env,
        )  # fmt: skip

    def kill9(self, member: Member) -> float:
        """kill -9 a member; the moment of the kill (monotonic)."""
        assert member.proc is not None
        os.kill(member.proc.pid, signal.SIGKILL)
        at = time.monotonic()
        member.proc.popen.wait(10)
        return at

    def wait_leader(self, member: Member, timeout: float = 10.0) -> float:
        """Wait until `member` says it leads; when it first did (monotonic)."""
        wait_until(lambda: member.role() == "leader", scaled(timeout), f"{member.name} to lead")
        return time.monotonic()
