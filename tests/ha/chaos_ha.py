"""The chaos run against an HA group: leader kill -9s, leader pauses and an etcd restart under the node faults.

HaTarget plugs an HaGroup (tests/ha/cluster.py) into tests/reliability/chaos.py: the clients are given both
members' frontends, the nodes both backends, and while the harness kills, resets and stalls nodes, a thread
of its own works through the plan's HA faults in a seeded order:
- `kill`: kill -9 the leader; the takeover is timed to the other member's status saying leader; the killed
  member is started again (a standby on its journal) and caught up;
- `pause`: SIGSTOP the leader for plan.pause_s (past its lease), then SIGCONT; it must come back a standby;
- `etcd`: kill -9 etcd, start it again on its data after a seeded outage; some member leads again.
Before each fault it waits for one leader with its standby in sync, so every fault finds a pair to test.

Meanwhile one sampler thread per member asks that member alone (follow_leader=False) for its status every
SAMPLE_EVERY_S. Two members claim to lead at once when a claim of epoch E is *sent* after a claim of a
newer epoch E' > E by another member was *received*: the newer leadership was already there, so the older
one must have stopped before (its lease ends a quarter of the lease before etcd lets anyone else win).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.ha.cluster import HaGroup, Member
from tests.harness import Proc, port_of, reset_connections, scaled, wait_until
from tests.reliability.chaos import ChaosPlan, ChaosReport, Target
from wire import control_client

SAMPLE_EVERY_S = 0.05
SAMPLE_TIMEOUT_S = 0.5
STEADY_TIMEOUT_S = 30  # a leader, and its standby in sync, before each fault
TAKEOVER_TIMEOUT_S = 15


@dataclass(frozen=True)
class Claim:
    """One member's own status saying it leads: the epoch, and when the question left and the answer came."""

    name: str
    epoch: int
    sent: float
    received: float


def two_leaders(claims: list[Claim]) -> list[str]:
    """Claims sent after another member's claim of a newer epoch had been received (see the module's text)."""
    first_seen: dict[int, Claim] = {}
    for claim in claims:
        seen = first_seen.get(claim.epoch)
        if seen is None or claim.received < seen.received:
            first_seen[claim.epoch] = claim
    found = []
    for claim in claims:
        for epoch, newer in first_seen.items():
            if newer.name == claim.name or epoch < claim.epoch:
                continue
            if epoch == claim.epoch or newer.received < claim.sent:
                found.append(
                    f"{claim.name} said it leads with epoch {claim.epoch} (asked at {claim.sent:.3f}) after "
                    f"{newer.name} had said so with epoch {epoch} (answered at {newer.received:.3f})"
                )
    return found


_LEADERSHIP = re.compile(
    r"^(\S+Z) \w+ +system\.ha_(leading|stepped_down) +Balancer (\S+) (?:leads with epoch|stopped leading \(epoch) (\d+)"
)


def overlaps_in_logs(logs: list[Path]) -> list[str]:
    """From the members' own event logs: a member that stepped down from epoch E after another had started
    leading with a newer epoch (both logged on this host's clock). Valid only for members that were never
    paused: a process resumed from SIGSTOP logs its step-down on its first look, after the other began."""
    leading: list[tuple[float, str, int]] = []
    stepped: list[tuple[float, str, int]] = []
    for log in logs:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _LEADERSHIP.match(line)
            if m:
                at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                (leading if m.group(2) == "leading" else stepped).append((at, m.group(3), int(m.group(4))))
    return [
        f"{old} stepped down from epoch {epoch} {down - began:.3f} s after {new} began leading with epoch {newer}"
        for down, old, epoch in stepped
        for began, new, newer in leading
        if new != old and newer > epoch and began < down
    ]


class Sampler(threading.Thread):
    """Asks one member for its own status, again and again, until stopped; keeps its leader claims."""

    def __init__(self, member: Member, halt: threading.Event) -> None:
        super().__init__(name=f"sample-{member.name}", daemon=True)
        self.member, self.halt = member, halt
        self.claims: list[Claim] = []
        self.samples = 0

    def run(self) -> None:
        endpoint = self.member.endpoints.control
        while not self.halt.is_set():
            sent = time.monotonic()
            try:
                status = control_client.call(endpoint, "status", timeout_s=SAMPLE_TIMEOUT_S, follow_leader=False)
            except (control_client.BalancerUnreachable, control_client.ControlError):
                status = None
            received = time.monotonic()
            self.samples += status is not None
            if status is not None and status.get("role") == "leader":
                self.claims.append(Claim(self.member.name, int(status.get("epoch") or 0), sent, received))
            self.halt.wait(SAMPLE_EVERY_S)  # wait-ok: the sampling period, not a synchronisation


class HaTarget(Target):
    """An HA group as the chaos run's target: both members in every list, the HA faults on a thread."""

    def __init__(self, group: HaGroup, plan: ChaosPlan) -> None:
        assert plan.count_executions, "the group's nodes run the counting handler"
        self.group, self.plan = group, plan
        self.frontend = group.list_of("frontend")
        self.env = group.env()
        self.rng = random.Random(plan.seed * 7919 + 21)  # its own stream: the node faults keep theirs
        self.halt = threading.Event()
        self.samplers = [Sampler(m, self.halt) for m in group.members]
        self.faults = threading.Thread(target=self._faults, name="ha-faults", daemon=True)
        self.report: ChaosReport | None = None
        self.error: str | None = None
        self.t0 = 0.0

    # ---- the Target --------------------------------------------------------------

    def start_node(self, node_id: int, plan: ChaosPlan, env: dict[str, str]) -> Proc:
        return self.group.start_node(node_id, plan.capacity, "counting", env)

    def wait_nodes(self, ids: set[int]) -> None:
        def active() -> bool:
            try:
                servers = control_client.call(self.control(), "servers", timeout_s=scaled(3))
            except (control_client.BalancerUnreachable, control_client.ControlError):
                return False
            return ids <= {s["server_id"] for s in servers if s["active"]}

        wait_until(active, 15, f"servers {sorted(ids)} active at the leader")

    def reset(self, node: Proc) -> int:
        return sum(reset_connections(node.pid, port_of(m.endpoints.backend)) for m in self.group.members)

    def begin(self, report: ChaosReport) -> None:
        self.report = report
        self.t0 = time.monotonic()
        for sampler in self.samplers:
            sampler.start()
        self.faults.start()

    def busy(self) -> bool:
        return self.faults.is_alive()

    def finish(self, report: ChaosReport) -> None:
        self.halt.set()
        self.faults.join(scaled(60))
        if self.faults.is_alive():
            report.errors.append("the HA faults did not finish")
        for sampler in self.samplers:
            sampler.join(scaled(5))
        if self.error:
            report.errors.append(self.error)
        claims = sorted((c for s in self.samplers for c in s.claims), key=lambda c: c.sent)
        report.status_samples = sum(s.samples for s in self.samplers)
        report.two_leaders = two_leaders(claims)

    def balancer_faults(self, report: ChaosReport) -> int:
        return report.leader_kills + report.leader_pauses + report.etcd_restarts

    def control(self) -> str:
        return self.group.list_of("control")

    # ---- the HA faults ---------------------------------------------------------

    def _faults(self) -> None:
        plan, rng = self.plan, self.rng
        rest = ["kill"] * (plan.leader_kills - 1) + ["pause"] * plan.leader_pauses + ["etcd"] * plan.etcd_restarts
        rng.shuffle(rest)
        order = (["kill"] if plan.leader_kills else []) + rest  # a kill first: the burst of `zlb client` sees it
        try:
            for i, fault in enumerate(order):
                self._steady()
                gap = rng.uniform(1.0, 2.5) if i else rng.uniform(1.0, 2.0)
                if self.halt.wait(gap):  # wait-ok: traffic under the pair before the fault (a schedule)
                    return
                {"kill": self._kill, "pause": self._pause, "etcd": self._etcd}[fault]()
            self._steady()
        except BaseException as exc:  # noqa: BLE001 - reported by the run
            self.error = f"HA faults: {exc.__class__.__name__}: {exc}"

    def _leader(self) -> Member | None:
        leaders = [m for m in self.group.members if m.role() == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def _steady(self) -> Member:
        """One leader, its standby in sync (after a fault: the pair is whole again)."""

        def in_sync() -> Member | None:
            leader = self._leader()
            status = None if leader is None else leader.status()
            return leader if status and status.get("ha", {}).get("in_sync") else None

        return wait_until(in_sync, STEADY_TIMEOUT_S, "one leader with its standby in sync")

    def _other(self, member: Member) -> Member:
        return next(m for m in self.group.members if m is not member)

    def _epoch(self, member: Member) -> int:
        return int((member.status() or {}).get("epoch") or 0)

    def _took(self, fault: str, at: float, old: Member, new: Member, took_s: float) -> None:
        assert self.report is not None
        self.report.takeovers.append(
            {
                "fault": fault,
                "at_s": round(at - self.t0, 2),
                "from": old.name,
                "to": new.name,
                "epoch": self._epoch(new),
                "took_s": round(took_s, 3),
            }
        )

    def _kill(self) -> None:
        assert self.report is not None
        old = self._steady()
        new = self._other(old)
        killed_at = self.group.kill9(old)
        self.report.leader_kills += 1
        took = self.group.wait_leader(new, TAKEOVER_TIMEOUT_S) - killed_at
        self._took("kill", killed_at, old, new, took)
        self.group.launch(old)
        wait_until(lambda: old.role() == "standby", 20, f"{old.name} to come back as a standby")

    def _pause(self) -> None:
        assert self.report is not None
        old = self._steady()
        new = self._other(old)
        assert old.proc is not None
        os.kill(old.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        self.report.leader_pauses += 1
        led_at = None
        try:
            until = stopped_at + self.plan.pause_s
            while time.monotonic() < until:  # the pause itself; meanwhile, when does the other lead?
                if led_at is None and new.role() == "leader":
                    led_at = time.monotonic()
                self.halt.wait(0.02)  # wait-ok: polls the other member during a deliberate pause
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)
        if led_at is None:
            led_at = self.group.wait_leader(new, TAKEOVER_TIMEOUT_S)
        self._took("pause", stopped_at, old, new, led_at - stopped_at)
        wait_until(lambda: old.role() == "standby", 6, f"{old.name} to resume as a standby")

    def _etcd(self) -> None:
        assert self.report is not None
        old = self._steady()
        etcd = self.group.etcd
        etcd.stop()
        killed_at = time.monotonic()
        self.report.etcd_restarts += 1
        down_until = killed_at + self.rng.uniform(*self.plan.etcd_down_s)
        wait_until(lambda: time.monotonic() >= down_until, 10, "the end of etcd's outage")
        etcd.start()
        back_at = time.monotonic()
        new = wait_until(self._leader, TAKEOVER_TIMEOUT_S, "a leader once etcd is back")
        self._took("etcd", killed_at, old, new, time.monotonic() - back_at)  # from etcd answering again
        self.report.takeovers[-1]["etcd_down_s"] = round(back_at - killed_at, 3)


def ha_figures(report: ChaosReport) -> str:
    """One line for the test's output."""
    takeovers = ", ".join(f"{t['fault']}@{t['at_s']}s {t['from']}->{t['to']} {t['took_s']}s" for t in report.takeovers)
    return (
        f"seed {report.seed}: {report.results}/{report.requests} answered in {report.seconds} s; "
        f"{report.leader_kills} leader kills, {report.leader_pauses} pauses, {report.etcd_restarts} etcd restarts; "
        f"takeovers [{takeovers}]; node kills {report.node_kills}, resets {report.resets}, stalls {report.stalls}; "
        f"extra runs {report.extra_runs} (bound {report.extra_runs_bound}); resent {report.resent}; "
        f"{report.status_samples} status samples, {len(report.two_leaders)} two-leader moments"
    )
