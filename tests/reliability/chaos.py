"""The chaos harness: clients send while nodes (and the balancer) are killed and restarted.

Everything random comes from one seeded generator and every wait has a
deadline. A run returns a ChaosReport; the tests assert on it and, when
ZLB_CHAOS_REPORT names a file, append it there as one JSON line (the figures
in docs/RELIABILITY.md come from such a file).

What the clients talk to is a target: one balancer (`run_chaos`, kill -9'd and
restarted on its journal when the plan says so) or an HA group, whose target
(tests/ha/chaos_ha.py) kills, pauses and re-elects leaders on its own thread
while the node faults go on here (`run_chaos_on`).
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
from tests.harness import (
    REPO,
    LiveBalancer,
    Proc,
    ProcessGroup,
    port_of,
    reset_connections,
    scaled,
    start_balancer,
    wait_until,
)
from tests.reliability.handlers import executions
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
    # The in-process clients submit one request every this many seconds (0: all at once), so that
    # traffic lasts through faults scheduled over a longer run.
    submit_every_s: float = 0.0
    # Nodes run tests.reliability.handlers:counting, logging every execution: the report then counts
    # the runs beyond one per request and the bound on them (what was in flight at the faults).
    count_executions: bool = False
    # HA runs (tests/ha/chaos_ha.py): kill -9 of the leader (restarted as a member), SIGSTOP of the
    # leader for pause_s (then SIGCONT), kill -9 of etcd (restarted after etcd_down_s).
    leader_kills: int = 0
    leader_pauses: int = 0
    pause_s: float = 3.5
    etcd_restarts: int = 0
    etcd_down_s: tuple[float, float] = (0.5, 2.5)

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
    refused_successors: int = 0  # successors refused while the killed one's lease lasted
    results_before_kill: int = 0
    # HA runs: the faults, each takeover ({"fault", "at_s", "from", "to", "epoch", "took_s"}), the
    # members' own status sampled, and any moment two members said they lead.
    leader_kills: int = 0
    leader_pauses: int = 0
    etcd_restarts: int = 0
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    status_samples: int = 0
    two_leaders: list[str] = field(default_factory=list)
    # With count_executions: runs beyond one per request, the bound on them, requests that never ran.
    extra_runs: int = 0
    extra_runs_bound: int = 0
    never_ran: int = 0
    traffic_s: float = 0.0  # from the first fault's schedule to the last client's last answer
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
                next_at = time.monotonic()
                for rid in range(1, plan.requests_per_client + 1):
                    client.submit(json_payload(plan.cost_ms, {"c": self.client_id, "r": rid}), 5, rid)
                    next_at += plan.submit_every_s
                    while (left := next_at - time.monotonic()) > 0:
                        client.pump(left)  # results arrive meanwhile; as_completed hands them over
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
    one that re-sends the same request ids with the same payloads; a successor started while the killed
    one's lease lasts is refused (exit 2) and another is started a second later."""

    def __init__(
        self, procs: ProcessGroup, plan: ChaosPlan, rng: random.Random, client_id: int, env: dict[str, str]
    ) -> None:
        self.procs, self.plan, self.client_id, self.env = procs, plan, client_id, env
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
            "--cost-ms", str(plan.cost_ms),
            "--retry-s", str(plan.retry_s),
            "--timeout", str(plan.deadline_s),
            "--json",
            extra_env=self.env,
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


class Target:
    """What the clients and nodes of a run talk to; the faults on its side. Subclasses fill it in."""

    frontend: str  # the in-process clients' endpoint (a comma-separated list for an HA group)
    env: dict[str, str]  # for `zlb client` processes: ZLB_* naming the same

    def start_node(self, node_id: int, plan: ChaosPlan, env: dict[str, str]) -> Proc:
        raise NotImplementedError

    def wait_nodes(self, ids: set[int]) -> None:
        raise NotImplementedError

    def reset(self, node: Proc) -> int:
        """Reset a node's TCP connections to the balancer side; how many."""
        raise NotImplementedError

    def begin(self, report: ChaosReport) -> None:
        """The clients have started: the faults are about to."""

    def step(self, report: ChaosReport, elapsed_s: float) -> bool:
        """A fault on the balancer side if one is due now (then True: no node fault this round)."""
        return False

    def busy(self) -> bool:
        """Faults of its own still under way (the run goes on while they are)."""
        return False

    def finish(self, report: ChaosReport) -> None:
        """The clients are done: stop what begin() started, put its figures in the report."""

    def balancer_faults(self, report: ChaosReport) -> int:
        """Faults that may re-run every request in flight on every node (the extra-runs bound)."""
        return report.balancer_kills

    def control(self) -> str:
        raise NotImplementedError


class OneBalancer(Target):
    """One balancer, kill -9'd and restarted with `balancer_args` (on its journal) plan.balancer_kills times."""

    def __init__(
        self, procs: ProcessGroup, balancer: LiveBalancer, plan: ChaosPlan, rng: random.Random, args: list[str]
    ) -> None:
        self.procs, self.balancer, self.args, self.rng = procs, balancer, args, rng
        self.frontend = balancer.endpoints.frontend
        self.env = {}
        self.kills_left = plan.balancer_kills
        self.next_kill_s = 0.0

    def begin(self, report: ChaosReport) -> None:
        self.next_kill_s = self.rng.uniform(0.5, 1.5)

    def start_node(self, node_id: int, plan: ChaosPlan, env: dict[str, str]) -> Proc:
        handler = "counting" if plan.count_executions else None
        return self.balancer.start_server(node_id, "--capacity", str(plan.capacity), handler=handler, env=env)

    def wait_nodes(self, ids: set[int]) -> None:
        self.balancer.wait_servers_active(ids)

    def reset(self, node: Proc) -> int:
        return reset_connections(node.pid, port_of(self.balancer.endpoints.backend))

    def step(self, report: ChaosReport, elapsed_s: float) -> bool:
        if not self.kills_left or elapsed_s < self.next_kill_s:
            return False
        balancer = self.balancer
        self.procs.kill9(balancer.proc)
        report.balancer_kills += 1
        self.kills_left -= 1
        self.next_kill_s = elapsed_s + self.rng.uniform(1.0, 2.0)
        hb, liveness = balancer.heartbeat_ms, balancer.liveness
        self.balancer = start_balancer(self.procs, balancer.endpoints, hb, *self.args, liveness=liveness)
        return True

    def control(self) -> str:
        return self.balancer.endpoints.control


def run_chaos(procs: ProcessGroup, balancer: LiveBalancer, plan: ChaosPlan, balancer_args: list[str]) -> ChaosReport:
    """Drive one run against one balancer to its end and check every result against what was sent."""
    rng = random.Random(plan.seed)
    return run_chaos_on(procs, OneBalancer(procs, balancer, plan, rng, balancer_args), plan, rng)


def run_chaos_on(procs: ProcessGroup, target: Target, plan: ChaosPlan, rng: random.Random) -> ChaosReport:
    """Drive one run against `target` to its end and check every result against what was sent."""
    plan = replace(plan, deadline_s=scaled(plan.deadline_s))  # a busy machine runs everything slower
    report = ChaosReport(plan.seed, plan.total)
    started = time.monotonic()
    exec_log = str(procs.workdir / "executions.log")
    node_env = {"PYTHONPATH": REPO, "ZLB_TEST_EXEC_LOG": exec_log} if plan.count_executions else {}
    nodes: dict[int, Proc] = {i: target.start_node(i, plan, node_env) for i in _node_ids(plan)}
    target.wait_nodes(set(nodes))
    threads = [_ClientThread(target.frontend, cid, plan) for cid in range(1, plan.clients + 1)]
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
        extra_env=target.env,
    )  # fmt: skip
    replaced = _ReplacedClient(procs, plan, rng, cli_id + 1, target.env) if plan.replaced_requests else None
    target.begin(report)
    try:
        _inject_faults(target, plan, rng, nodes, node_env, threads, cli, report, replaced)
        for t in threads:
            t.join(plan.deadline_s)
        cli_code = cli.wait(plan.deadline_s)
    finally:
        target.finish(report)
    if replaced is not None:
        _check_replaced(report, replaced, plan, started)
    report.seconds = round(time.monotonic() - started, 1)
    _check(report, threads, cli, cli_code, cli_id, plan, target)
    if plan.count_executions:
        _count_executions(report, plan, target, executions(exec_log))
    _maybe_save(report)
    return report


def _inject_faults(
    target: Target,
    plan: ChaosPlan,
    rng: random.Random,
    nodes: dict[int, Proc],
    node_env: dict[str, str],
    threads: list[_ClientThread],
    cli: Proc,
    report: ChaosReport,
    replaced: _ReplacedClient | None = None,
) -> None:
    """kill -9 a random node (then restart it) at random intervals until the clients (and the target's own
    faults) finish; the target's faults when due."""
    deadline = time.monotonic() + plan.deadline_s
    t0 = time.monotonic()

    def busy() -> bool:
        clients_busy = any(t.is_alive() for t in threads) or cli.popen.poll() is None
        clients_busy = clients_busy or (replaced is not None and replaced.busy())
        if clients_busy:
            report.traffic_s = round(time.monotonic() - t0, 1)
        return clients_busy or target.busy()

    while busy() and time.monotonic() < deadline:
        _pause(rng.uniform(*plan.node_kill_every_s), busy)
        if replaced is not None:
            replaced.step(report)
        if not busy():
            break
        if target.step(report, time.monotonic() - t0):
            continue
        _node_fault(target, plan, rng, nodes, node_env, report)


def _node_fault(
    target: Target,
    plan: ChaosPlan,
    rng: random.Random,
    nodes: dict[int, Proc],
    node_env: dict[str, str],
    report: ChaosReport,
) -> None:
    """One fault on a random node: a TCP reset, a stall, or kill -9 and a restart with the same id."""
    victim = rng.choice(sorted(nodes))
    proc = nodes[victim]
    roll = rng.random()
    if roll < plan.reset_share:
        report.resets += target.reset(proc) > 0
    elif roll < plan.reset_share + plan.stall_share:
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            stop_until = time.monotonic() + rng.uniform(*plan.stall_s)
            wait_until(lambda: time.monotonic() >= stop_until, 2, "the end of a stall")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        report.stalls += 1
    else:
        _kill9(proc)
        report.node_kills += 1
        nodes[victim] = target.start_node(victim, plan, node_env)


def _kill9(proc: Proc) -> None:
    """SIGKILL a node, as a crash would."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)


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
    target: Target,
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
    view = _balancer_view(target.control())
    report.balancer_view_mismatches = sum(1 for key in sent if view.get(key) != "processed")


def _sent(plan: ChaosPlan) -> set[tuple[int, int]]:
    cli_id = plan.clients + 1
    sent = {(c, r) for c in range(1, plan.clients + 1) for r in range(1, plan.requests_per_client + 1)}
    sent |= {(cli_id, r) for r in range(1, plan.cli_requests + 1)}
    return sent | {(cli_id + 1, r) for r in range(1, plan.replaced_requests + 1)}


def _count_executions(report: ChaosReport, plan: ChaosPlan, target: Target, runs: dict[tuple[int, int], int]) -> None:
    """Runs beyond one per request, against what was in flight at the faults: a node fault (kill, reset,
    stall) may re-run what that node held (its capacity), a fault on the balancer side what every node held."""
    sent = _sent(plan)
    report.never_ran = len(sent - set(runs))
    report.extra_runs = sum(n - 1 for n in runs.values()) + sum(n for key, n in runs.items() if key not in sent)
    node_faults = report.node_kills + report.resets + report.stalls
    report.extra_runs_bound = plan.capacity * (node_faults + plan.nodes * target.balancer_faults(report))


def _balancer_view(control: str) -> dict[tuple[int, int], str]:
    """Every request the balancer (the leader of a group) remembers, paged through the control socket."""
    view: dict[tuple[int, int], str] = {}
    key = ""
    while key is not None:
        page = control_client.call(control, "requests", limit=1000, after=key)
        for row in page["requests"]:
            view[(row["client_id"], row["request_id"])] = row["status"]
        key = page["next"]
    return view


def _maybe_save(report: ChaosReport) -> None:
    path = os.environ.get("ZLB_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(report)) + "\n")
