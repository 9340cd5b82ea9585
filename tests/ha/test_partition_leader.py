"""An HA leader cut off from etcd and from its standby, while its clients and nodes still reach it.

Three network namespaces joined by veth pairs (as tests/reliability/test_partition.py):
- E: etcd and the standby B;  L: the leader A;  C: the nodes, the clients and a status sampler.
E-L carries etcd's traffic for A and the replication stream; C reaches A over C-L and B over C-E, and no
namespace forwards, so setting A's end of E-L down cuts A from etcd and from B and from nothing else.
What runs in C is tests/ha/netns_agent.py (it writes JSON lines the test reads).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ha.chaos_ha import Claim, two_leaders
from tests.ha.cluster import etcd_binary
from tests.harness import REPO, scaled, wait_until
from tests.reliability.handlers import executions

LEASE_S = 2.0  # --ha-lease-s's default: the leader acts at most 3/4 of it past its last renewal
MARGIN_S = 0.5
NODES, CAPACITY = 2, 4
REQUESTS, EVERY_S, COST_MS = 1500, 0.01, 20
PARTITION_S = 20.0  # at most: the partition ends when the follower has every answer
ETCD = "etcd://10.232.1.1:2379/part"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Net:
    """The three namespaces, their links, and every process started in them."""

    tag: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"zlb{name}-{self.tag}"

    def cut_link(self) -> str:
        """A's end of the E-L pair."""
        return f"zle{self.tag}"[:15]

    def build(self) -> None:
        for name in ("e", "l", "c"):
            ip("netns", "add", self.ns(name))
            self.namespaces.append(self.ns(name))
            ip("-n", self.ns(name), "link", "set", "lo", "up")
        # (one end's namespace, its device, its address), the same for the other end
        pairs = [
            (("e", f"zel{self.tag}", "10.232.1.1"), ("l", self.cut_link(), "10.232.1.2")),
            (("e", f"zec{self.tag}", "10.232.2.1"), ("c", f"zce{self.tag}", "10.232.2.2")),
            (("l", f"zlc{self.tag}", "10.232.3.1"), ("c", f"zcl{self.tag}", "10.232.3.2")),
        ]
        for (ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b) in pairs:
            dev_a, dev_b = dev_a[:15], dev_b[:15]
            peer = ("peer", "name", dev_b, "netns", self.ns(ns_b))
            ip("link", "add", dev_a, "netns", self.ns(ns_a), "type", "veth", *peer)
            for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
                ip("-n", self.ns(ns), "addr", "add", f"{addr}/24", "dev", dev)
                ip("-n", self.ns(ns), "link", "set", dev, "up")

    def start(self, ns: str, name: str, *command: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run `command` inside a namespace (ip netns exec replaces itself: the PID is the command's)."""
        full_env = {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.workdir / f"{name}.out", "wb") as out, open(self.workdir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(ns), *command],
                cwd=self.workdir,
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    def zlb(self, ns: str, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start(ns, name, sys.executable, "-m", "zlb", *args, env=env)

    def agent(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        path = self.workdir / f"{name}.jsonl"
        proc = self.start("c", name, sys.executable, "-m", "tests.ha.netns_agent", args[0], str(path), *args[1:])
        return proc, path

    def teardown(self) -> None:
        for proc in self.procs:  # SIGTERM first: the members give their leases up while etcd still answers
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """Private namespaces for this test, removed afterwards (with every process started in them)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to build network namespaces")
    tag = f"{os.getpid() % 100000}"
    probe = subprocess.run(["ip", "netns", "add", f"zlbp-{tag}"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces unavailable here (ip netns add: {probe.stderr.strip() or 'failed'})")
    subprocess.run(["ip", "netns", "del", f"zlbp-{tag}"], capture_output=True, timeout=10)
    network = Net(tag, tmp_path)
    try:
        network.build()
        yield network
    finally:
        network.teardown()


def rows(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines an agent wrote so far."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


@dataclass(frozen=True)
class MemberAt:
    """Where one member listens: its namespace's address towards the clients, and towards the other member."""

    ns: str
    name: str
    outside: str
    inside: str

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.outside}:{port}"

    @property
    def replication(self) -> str:
        return f"tcp://{self.inside}:5600"


A = MemberAt("l", "a", "10.232.3.1", "10.232.1.2")
B = MemberAt("e", "b", "10.232.2.1", "10.232.1.1")


def start_member(net: Net, m: MemberAt) -> subprocess.Popen:
    return net.zlb(
        m.ns, f"member-{m.name}", "balancer", "--ha", ETCD, "--replication", m.replication,
        "--journal", str(net.workdir / f"{m.name}.journal"),
        "--frontend", m.endpoint(5555), "--backend", m.endpoint(5556), "--events", m.endpoint(5557),
        "--control", m.endpoint(5558), "--heartbeat-ms", "100", "--liveness", "10",
        "--log-file", f"{m.name}.log",
    )  # fmt: skip


def start_etcd(net: Net) -> subprocess.Popen:
    client, peer = "http://10.232.1.1:2379", "http://127.0.0.1:2380"
    return net.start(
        "e", "etcd", etcd_binary(), "--name", "zlb-part", "--data-dir", str(net.workdir / "etcd-data"),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"zlb-part={peer}",
    )  # fmt: skip


def latest(status_rows: list[dict[str, Any]], m: MemberAt) -> dict[str, Any]:
    mine = [r for r in status_rows if r["control"] == m.endpoint(5558)]
    return mine[-1] if mine else {}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_leader_cut_off_from_etcd_and_its_standby_stops_and_the_standby_takes_over(net: Net):
    """Cut A's link to etcd and B: within the lease A says standby and nothing it answers arrives after
    that, B leads, the nodes move to B, never two leaders; a client given both frontends gets each of its
    1,500 requests answered exactly once, during the partition (the client moves off the cut-off member)."""
    exec_log = str(net.workdir / "executions.log")
    start_etcd(net)
    _, status_path = net.agent("status", "status", A.endpoint(5558), B.endpoint(5558))
    start_member(net, A)
    wait_until(lambda: latest(rows(status_path), A).get("role") == "leader", 30, "A to lead")
    start_member(net, B)
    wait_until(lambda: latest(rows(status_path), A).get("in_sync"), 30, "B to follow A in sync")
    backends = f"{A.endpoint(5556)},{B.endpoint(5556)}"
    for n in range(1, NODES + 1):
        net.zlb(
            "c", f"node{n}", "server", "--id", str(n), "--capacity", str(CAPACITY), "--backend", backends,
            "--heartbeat-ms", "100", "--liveness", "10", "--handler", "tests.reliability.handlers:counting",
            env={"ZLB_TEST_EXEC_LOG": exec_log},
        )  # fmt: skip
    wait_until(lambda: latest(rows(status_path), A).get("servers_active") == NODES, 30, "the nodes to join A")
    both = f"{A.endpoint(5555)},{B.endpoint(5555)}"
    args = [str(REQUESTS), str(EVERY_S), str(COST_MS)]
    follower, follower_path = net.agent("follower", "client", both, "1", *args, "120")
    _, probe_path = net.agent("probe", "client", A.endpoint(5555), "2", *args, "30")
    wait_until(lambda: len(rows(follower_path)) >= 100 and len(rows(probe_path)) >= 100, 30, "traffic through A")

    ip("-n", net.ns("l"), "link", "set", net.cut_link(), "down")
    cut = time.monotonic()

    def said(m: MemberAt, role: str) -> float | None:
        """When `m` first answered with `role` to a question sent after the cut."""
        control = m.endpoint(5558)
        times = [r["received"] for r in rows(status_path) if (r["control"], r["role"]) == (control, role)
                 and r["sent"] > cut]  # fmt: skip
        return min(times, default=None)

    a_standby = wait_until(lambda: said(A, "standby"), LEASE_S + 4, "A to say it is a standby") - cut
    b_leader = wait_until(lambda: said(B, "leader"), LEASE_S + 8, "B to lead") - cut
    wait_until(lambda: latest(rows(status_path), B).get("servers_active") == NODES, 20, "the nodes to move to B")

    # The partition lasts until the follower has every answer, or PARTITION_S.
    partition_until = cut + scaled(PARTITION_S)
    wait_until(
        lambda: follower.poll() is not None or time.monotonic() >= partition_until, PARTITION_S + 5, "the partition"
    )
    answered_in_partition = sum(1 for r in rows(follower_path) if "request_id" in r and r["t"] > cut)
    stuck = follower.poll() is None
    ip("-n", net.ns("l"), "link", "set", net.cut_link(), "up")  # healed: A learns that B leads
    assert follower.wait(scaled(90)) == 0, (net.workdir / "follower.err").read_text()[-2000:]

    # The follower: every request answered once, processed, no two answers that differ.
    got = [r for r in rows(follower_path) if "request_id" in r]
    summary = next(r["summary"] for r in rows(follower_path) if "summary" in r)
    ids = [r["request_id"] for r in got]
    assert sorted(ids) == list(range(1, REQUESTS + 1)), f"{len(set(ids))} distinct of {len(ids)} answers"
    assert all(r["status"] == "processed" for r in got)
    assert summary["conflicting_answers"] == 0 and summary["outstanding"] == []

    # The probe, given A alone: nothing from A once its lease is over.
    after = [r for r in rows(probe_path) if "request_id" in r and cut < r["t"] < partition_until]
    late = [r for r in after if r["t"] > cut + LEASE_S + MARGIN_S]
    assert not late, f"A answered {len(late)} requests {LEASE_S + MARGIN_S} s after the cut: {late[:5]}"

    # Never two leaders at once, by the members' own word.
    claims = [
        Claim(r["control"], int(r["epoch"] or 0), r["sent"], r["received"])
        for r in rows(status_path)
        if r["role"] == "leader"
    ]
    assert two_leaders(claims) == []
    assert a_standby <= LEASE_S + MARGIN_S, f"A still said it leads {a_standby:.2f} s after the cut"
    # What may run twice: what A dispatched from the cut until it stepped down (its journal's records no
    # longer reach B, so B knows nothing of what A accepted meanwhile, and runs the re-sends afresh).
    runs = executions(exec_log)
    extra = sum(n - 1 for n in runs.values())
    bound = NODES * CAPACITY * (math.ceil(a_standby / (COST_MS / 1000)) + 1)
    assert extra <= bound, f"{extra} extra runs: more than the nodes could run before A stepped down ({bound})"
    print(
        f"A said standby {a_standby:.2f} s after the cut, B led after {b_leader:.2f} s; the follower got "
        f"{answered_in_partition} answers during the partition, moved {summary['moves']} times; A answered the "
        f"probe {len(after)} times after the cut (the last {max((r['t'] - cut for r in after), default=0):.2f} s "
        f"after it); {extra} extra runs (bound {bound})"
    )
    assert not stuck, (
        "a client given both members stayed on the cut-off ex-leader for the whole partition (a standby that"
        " cannot reach etcd answers REDIRECT naming no leader: the Client must try the next member)"
    )
