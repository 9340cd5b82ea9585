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
    # A `zlb client` process with this many requests, kill -9'd once it has some of its results and
    # replaced under the same client id by one that re-sends the same ids with the same payloads (0: none).
    replaced_requests: int = 0

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
        return self.clients * self.requests_per_client + self.cli_requests + self.replaced_requests


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
    client_replacements: int = 0  # a client kill -9'd and replaced under its id
    refused_successors: int = 0  # successors refused (exit 2): none since a client id is a name
    results_before_kill: int = 0
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


class _ReplacedClient:
    """A `zlb client` kill -9'd once it has printed some results, then replaced under the same client id by
    one that re-sends the same request ids with the same payloads, at once: a client id is a name, no lease
    to wait for (a successor that exits 2, refused as balancers before issue 22 did, is started again a second
    later)."""

    def __init__(self, procs: ProcessGroup, plan: ChaosPlan, rng: random.Random, client_id: int) -> None:
        self.procs, self.plan, self.client_id = procs, plan, client_id
        self.kill_after = max(1, int(plan.replaced_requests * rng.uniform(0.2, 0.6)))
        self.first = self._start("chaos-replaced-0")
        self.killed = False
        self.successors: list[Proc] = []
        self._next_try = 0.0

    def _start(self, name: str) -> Proc:
        plan = self.plan
        return self.procs.start(
            name,
            "client",
            "--id", str(self.client_id),
            "--requests", str(plan.replaced_requests),
            "--first-request-id", "1",  # the successor re-sends the killed one's ids
            "--cost-ms", str(plan.cost_ms),
            "--retry-s", str(plan.retry_s),
            "--timeout", str(plan.deadline_s),
            "--json",
        )  # fmt: skip

    def step(self, report: ChaosReport) -> None:
        """Once per round of faults: kill the first when it has its share of results; keep a successor going."""
        if not self.killed:
            if len(rows_of(self.first)) < self.kill_after and self.first.popen.poll() is None:
                return
            if self.first.popen.poll() is None:
                self.procs.kill9(self.first)
            self.killed = True
            report.client_replacements += 1
            report.results_before_kill = len(rows_of(self.first))
        last = self.successors[-1] if self.successors else None
        if last is not None and last.popen.poll() != 2:
            return  # running, or done
        if time.monotonic() < self._next_try:
            return
        report.refused_successors += last is not None
        self.successors.append(self._start(f"chaos-replaced-{len(self.successors) + 1}"))
        self._next_try = time.monotonic() + 1.0

    def busy(self) -> bool:
        if not self.killed:
            return True
        last = self.successors[-1] if self.successors else None
        return last is None or last.popen.poll() in (None, 2)

    def finish(self, report: ChaosReport, deadline_s: float) -> tuple[dict[int, Any], list[dict[str, Any]]]:
        """Wait for the successor (giving it what is left of the run's deadline); the first's results and its."""
        wait_until(lambda: self.step(report) or not self.busy(), deadline_s, "the replaced client's successor")
        successor = self.successors[-1]
        if successor.popen.returncode != 0:
            report.errors.append(f"the successor exited {successor.popen.returncode}: {successor.stderr()[-500:]}")
        first: dict[int, Any] = {}
        for row in rows_of(self.first):
            report.duplicated += row["request_id"] in first
            first[row["request_id"]] = row["result"]
        return first, rows_of(successor)


def rows_of(proc: Proc) -> list[dict[str, Any]]:
    """The JSON result lines a `zlb client --json` printed (a line cut short by kill -9 is left out)."""
    rows = []
    for line in proc.stdout().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


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
        "--first-request-id", "1",  # the checks below name its ids
        "--cost-ms", str(plan.cost_ms),
        "--retry-s", str(plan.retry_s),
        "--timeout", str(plan.deadline_s),
        "--json",
    )  # fmt: skip
    replaced = _ReplacedClient(procs, plan, rng, cli_id + 1) if plan.replaced_requests else None
    balancer = _inject_faults(procs, balancer, plan, rng, nodes, threads, cli, report, balancer_args, replaced)
    for t in threads:
        t.join(plan.deadline_s)
    cli_code = cli.wait(plan.deadline_s)
    if replaced is not None:
        _check_replaced(report, replaced, plan, started)
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
    replaced: _ReplacedClient | None = None,
) -> LiveBalancer:
    """kill -9 a random node (then restart it) at random intervals until the clients finish."""
    deadline = time.monotonic() + plan.deadline_s
    balancer_kills_left = plan.balancer_kills
    next_balancer_kill = rng.uniform(0.5, 1.5)
    t0 = time.monotonic()

    def busy() -> bool:
        clients_busy = any(t.is_alive() for t in threads) or cli.popen.poll() is None
        return clients_busy or (replaced is not None and replaced.busy())

    while busy() and time.monotonic() < deadline:
        _pause(rng.uniform(*plan.node_kill_every_s), busy)
        if replaced is not None:
            replaced.step(report)
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


def _check_replaced(report: ChaosReport, replaced: _ReplacedClient, plan: ChaosPlan, started: float) -> None:
    """Every id of the replaced client answered once to its successor, processed, with the result the
    killed one saw when it saw one: nothing lost, duplicated or answered twice differently."""
    left = max(1.0, started + plan.deadline_s - time.monotonic())
    first, rows = replaced.finish(report, left)
    sent = set(range(1, plan.replaced_requests + 1))
    got: dict[int, Any] = {}
    for row in rows:
        rid = row["request_id"]
        report.duplicated += rid in got or rid not in sent
        got[rid] = row["result"]
        report.results += 1
        report.reassigned += row["attempts"] > 1
        report.not_processed += row["status"] != "processed"
    report.lost += len(sent - set(got))
    report.conflicting_answers += sum(1 for rid, result in first.items() if got.get(rid, result) != result)


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
    report.results += sum(received.values())
    report.lost += len(sent - set(received))
    report.duplicated += sum(n - 1 for n in received.values() if n > 1) + len(set(received) - sent)
    report.not_processed += sum(1 for s in statuses.values() if s != "processed")
    if plan.replaced_requests:
        sent |= {(cli_id + 1, r) for r in range(1, plan.replaced_requests + 1)}
    view = _balancer_view(balancer)
    report.balancer_view_mismatches = sum(1 for key in sent if view.get(key) != "processed")


def _balancer_view(balancer: LiveBalancer) -> dict[tuple[int, int], str]:
    """Every request the balancer remembers, paged through the control socket."""
    view: dict[tuple[int, int], str] = {}
    key = ""
    while key is not None:
        page = control_client.call(balancer.endpoints.control, "requests", limit=1000, after=key)
        for row in page["requests"]:
            view[(row["client_id"], row["request_id"])] = row["status"]
        key = page["next"]
    return view


def _maybe_save(report: ChaosReport) -> None:
    path = os.environ.get("ZLB_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(report)) + "\n")
