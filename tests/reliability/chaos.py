"""The chaos harness: clients send while nodes (and the balancer) are killed and restarted.

Everything random comes from one seeded generator and every wait has a
deadline. A run returns a ChaosReport; the tests assert on it and, when
ZLB_CHAOS_REPORT names a file, append it there as one JSON line (the figures
in docs/RELIABILITY.md come from such a file).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from client_node.client import Client, json_payload
from tests.harness import LiveBalancer, Proc, ProcessGroup, reset_connections, scaled, start_balancer, wait_until
from wire import control_client


@dataclass
class ChaosPlan:
    """How big and how violent a run is."""

    seed: int = field(default_factory=lambda: int(os.environ.get("ZLB_CHAOS_SEED", "4")))
    clients: int = 3  # in-process Client threads, plus one `zlb client` process
    requests_per_client: int = 600
    cli_requests: int = 400
    nodes: int = 3
    capacity: int = 2
    cost_ms: int = 20
    node_kill_every_s: tuple[float, float] = (0.4, 1.2)
    balancer_kills: int = 0
    # Besides kill -9: share of faults that reset a node's TCP connection (ss -K) or stall it (SIGSTOP, SIGCONT).
    reset_share: float = 0.3
    stall_share: float = 0.2
    stall_s: tuple[float, float] = (0.05, 0.6)
    retry_s: float = 0.5
    deadline_s: float = 60.0

    @classmethod
    def from_env(cls, **base: Any) -> ChaosPlan:
        """A plan scaled by ZLB_CHAOS_REQUESTS / ZLB_CHAOS_SEED / ZLB_CHAOS_BALANCER_KILLS when set."""
        plan = cls(**base)
        total = os.environ.get("ZLB_CHAOS_REQUESTS")
        if total:
            per = max(1, int(total) // (plan.clients + 1))
            plan.requests_per_client = plan.cli_requests = per
            plan.deadline_s = max(plan.deadline_s, 60 + int(total) / 50)
        plan.seed = int(os.environ.get("ZLB_CHAOS_SEED", plan.seed))
        plan.balancer_kills = int(os.environ.get("ZLB_CHAOS_BALANCER_KILLS", plan.balancer_kills))
        return plan

    @property
    def total(self) -> int:
        return self.clients * self.requests_per_client + self.cli_requests


@dataclass
class ChaosReport:
    """What happened, for assertions and for docs/RELIABILITY.md."""

    seed: int
    requests: int
    node_kills: int = 0
    balancer_kills: int = 0
    resets: int = 0
    stalls: int = 0
    results: int = 0
    lost: int = 0
    duplicated: int = 0
    conflicting_answers: int = 0
    repeated_answers: int = 0
    resent: int = 0
    reassigned: int = 0  # answered after more than one attempt: a fault hit them mid-work
    not_processed: int = 0
    balancer_view_mismatches: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class _ClientThread(threading.Thread):
    """One Client, owned by this thread alone, sending a fixed set of requests."""

    def __init__(self, frontend: str, client_id: int, plan: ChaosPlan) -> None:
        super().__init__(name=f"chaos-client-{client_id}", daemon=True)
        self.frontend = frontend
        self.client_id = client_id
        self.plan = plan
        self.results: list[Any] = []
        self.counters: dict[str, int] = {}
        self.error: str | None = None

    def run(self) -> None:
        plan = self.plan
        try:
            with Client(self.frontend, self.client_id, retry_s=plan.retry_s) as client:
                for rid in range(1, plan.requests_per_client + 1):
                    client.submit(json_payload(plan.cost_ms, {"c": self.client_id, "r": rid}), 5, rid)
                self.results = list(client.as_completed(timeout=plan.deadline_s))
                self.counters = {
                    "conflicting_answers": client.conflicting_answers,
                    "repeated_answers": client.repeated_answers,
                    "resent": client.resent,
                }
        except Exception as exc:  # noqa: BLE001 - reported by the test, not swallowed
            self.error = f"client {self.client_id}: {exc.__class__.__name__}: {exc}"


def _node_ids(plan: ChaosPlan) -> list[int]:
    return list(range(plan.nodes))


def run_chaos(procs: ProcessGroup, balancer: LiveBalancer, plan: ChaosPlan, balancer_args: list[str]) -> ChaosReport:
    """Drive one run to its end and check every result against what was sent."""
    plan = replace(plan, deadline_s=scaled(plan.deadline_s))  # a busy machine runs everything slower
    rng = random.Random(plan.seed)
    report = ChaosReport(plan.seed, plan.total)
    started = time.monotonic()
    nodes: dict[int, Proc] = {i: balancer.start_server(i, "--capacity", str(plan.capacity)) for i in _node_ids(plan)}
    balancer.wait_servers_active(set(nodes))
    threads = [_ClientThread(balancer.endpoints.frontend, cid, plan) for cid in range(1, plan.clients + 1)]
    for t in threads:
        t.start()
    cli_id = plan.clients + 1
    cli = procs.start(
        "chaos-cli-client",
        "client",
        "--id", str(cli_id),
        "--requests", str(plan.cli_requests),
        "--cost-ms", str(plan.cost_ms),
        "--retry-s", str(plan.retry_s),
        "--timeout", str(plan.deadline_s),
        "--json",
    )  # fmt: skip
    balancer = _inject_faults(procs, balancer, plan, rng, nodes, threads, cli, report, balancer_args)
    for t in threads:
        t.join(plan.deadline_s)
    cli_code = cli.wait(plan.deadline_s)
    report.seconds = round(time.monotonic() - started, 1)
    _check(report, threads, cli, cli_code, cli_id, plan, balancer)
    _maybe_save(report)
    return report


def _inject_faults(
    procs: ProcessGroup,
    balancer: LiveBalancer,
    plan: ChaosPlan,
    rng: random.Random,
    nodes: dict[int, Proc],
    threads: list[_ClientThread],
    cli: Proc,
    report: ChaosReport,
    balancer_args: list[str],
) -> LiveBalancer:
    """kill -9 a random node (then restart it) at random intervals until the clients finish."""
    deadline = time.monotonic() + plan.deadline_s
    balancer_kills_left = plan.balancer_kills
    next_balancer_kill = rng.uniform(0.5, 1.5)
    t0 = time.monotonic()

    def busy() -> bool:
        return any(t.is_alive() for t in threads) or cli.popen.poll() is None

    while busy() and time.monotonic() < deadline:
        _pause(rng.uniform(*plan.node_kill_every_s), busy)
        if not busy():
            break
        if balancer_kills_left and time.monotonic() - t0 >= next_balancer_kill:
            procs.kill9(balancer.proc)
            report.balancer_kills += 1
            balancer_kills_left -= 1
            next_balancer_kill = time.monotonic() - t0 + rng.uniform(1.0, 2.0)
            hb, liveness = balancer.heartbeat_ms, balancer.liveness
            balancer = start_balancer(procs, balancer.endpoints, hb, *balancer_args, liveness=liveness)
            continue
        _node_fault(procs, balancer, plan, rng, nodes, report)
    return balancer


def _node_fault(
    procs: ProcessGroup,
    balancer: LiveBalancer,
    plan: ChaosPlan,
    rng: random.Random,
    nodes: dict[int, Proc],
    report: ChaosReport,
) -> None:
    """One fault on a random node: a TCP reset, a stall, or kill -9 and a restart with the same id."""
    victim = rng.choice(sorted(nodes))
    proc = nodes[victim]
    roll = rng.random()
    if roll < plan.reset_share:
        report.resets += reset_connections(proc.pid, int(balancer.endpoints.backend.rsplit(":", 1)[1])) > 0
    elif roll < plan.reset_share + plan.stall_share:
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            stop_until = time.monotonic() + rng.uniform(*plan.stall_s)
            wait_until(lambda: time.monotonic() >= stop_until, 2, "the end of a stall")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        report.stalls += 1
    else:
        procs.kill9(proc)
        report.node_kills += 1
        nodes[victim] = balancer.start_server(victim, "--capacity", str(plan.capacity))


def _pause(seconds: float, busy: Any) -> None:
    """Wait until the next fault is due, or until the clients are done."""
    resume_at = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= resume_at or not busy(), seconds + 1, "the next fault")


def _check(
    report: ChaosReport,
    threads: list[_ClientThread],
    cli: Proc,
    cli_code: int,
    cli_id: int,
    plan: ChaosPlan,
    balancer: LiveBalancer,
) -> None:
    """Compare what each client received with what it sent, and with the balancer's view."""
    received: dict[tuple[int, int], int] = {}
    statuses: dict[tuple[int, int], str] = {}
    for t in threads:
        if t.error:
            report.errors.append(t.error)
        for r in t.results:
            key = (r.client_id, r.request_id)
            received[key] = received.get(key, 0) + 1
            statuses[key] = r.status
            report.reassigned += r.attempts > 1
        report.conflicting_answers += t.counters.get("conflicting_answers", 0)
        report.repeated_answers += t.counters.get("repeated_answers", 0)
        report.resent += t.counters.get("resent", 0)
    if cli_code != 0:
        report.errors.append(f"zlb client exited {cli_code}: {cli.stderr()[-500:]}")
    for line in cli.stdout().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            key = (row["client_id"], row["request_id"])
            received[key] = received.get(key, 0) + 1
            statuses[key] = row["status"]
            report.reassigned += row["attempts"] > 1
    sent = {(c, r) for c in range(1, plan.clients + 1) for r in range(1, plan.requests_per_client + 1)}
    sent |= {(cli_id, r) for r in range(1, plan.cli_requests + 1)}
    report.results = sum(received.values())
    report.lost = len(sent - set(received))
    report.duplicated = sum(n - 1 for n in received.values() if n > 1) + len(set(received) - sent)
    report.not_processed = sum(1 for s in statuses.values() if s != "processed")
    view = _balancer_view(balancer)
    report.balancer_view_mismatches = sum(1 for key in sent if view.get(key) != "processed")


def _balancer_view(balancer: LiveBalancer) -> dict[tuple[int, int], str]:
    """Every request the balancer remembers, paged through the control socket."""
    view: dict[tuple[int, int], str] = {}
    offset = 0
    while True:
        page = control_client.call(balancer.endpoints.control, "requests", limit=1000, offset=offset)
        for row in page:
            view[(row["client_id"], row["request_id"])] = row["status"]
        if len(page) < 1000:
            return view
        offset += len(page)


def _maybe_save(report: ChaosReport) -> None:
    path = os.environ.get("ZLB_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(report)) + "\n")
