"""Where a balancer's memory goes with big payloads, measured on real processes.

    python -m tests.reliability.measure_memory [--budget-mb 64] [--payload-mb 16] [--clients 4]
        [--per-client 4] [--nodes 2] [--runs 1] [--probe [--trace] [--series FILE] [--profile FILE]]

Starts a real `zlb balancer --max-memory-mb BUDGET` (-1: its default), NODES
`zlb server --handler echo` and CLIENTS client processes, each submitting
PER_CLIENT payloads of PAYLOAD_MB at once through the Client API and checking
that every result is its own payload. Prints the balancer's RSS after start-up
(base), at its peak, sampled from /proc/PID/status every few milliseconds while
the clients run (with /proc/PID/smaps_rollup at that moment), and once all
results are back, and the most the budget counted (`zlb status` "memory").

--probe runs the balancer under tests/reliability/memory_probe.py (the same
`zlb balancer`, in a process of its own, with a thread in it that samples every
5 ms its RSS, glibc's heap (mallinfo2: bytes in use and free-but-kept in the
heap, bytes in mmapped chunks), what the budget counts (live, reserved, unsent,
kept) and, with --trace, what Python allocated (tracemalloc; slows the
balancer down)). It prints the sample of highest RSS: RSS beyond what the
budget counts is libzmq's (messages received before the loop read them) or
glibc's (freed, not returned). --series writes every sample, one JSON line each;
--profile FILE runs the balancer under cProfile (read FILE with pstats).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import Endpoints, wait_until
from wire import control_client

MIB = 2**20
MODULE = "tests.reliability.measure_memory"
PROBE_MODULE = "tests.reliability.memory_probe"
REPO = Path(__file__).resolve().parents[2]


def rss(pid: int) -> int:
    """Resident set size of a process in bytes, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes (Rss, Anonymous, ...)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


# ---- the clients ---------------------------------------------------------------------------------


def payload_of(client_id: int, index: int, size: int) -> bytes:
    """A payload whose every byte says whose it is, so a mix-up cannot go unseen."""
    seed = hashlib.sha256(f"{client_id}/{index}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def client(argv: list[str]) -> None:
    """`client FRONTEND CLIENT_ID COUNT SIZE TIMEOUT`: submit COUNT payloads of SIZE bytes at once, wait for
    every result, print a JSON line: how many came back right, busy answers, re-sends, seconds."""
    from client_node.client import Client

    frontend, client_id, count, size, timeout = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    started = time.monotonic()
    right = 0
    with Client(frontend, client_id=client_id) as c:
        pending = [c.submit(payload_of(client_id, i, size), request_id=i + 1) for i in range(count)]
        for i, waiting in enumerate(pending):
            result = waiting.result(timeout=max(1.0, started + timeout - time.monotonic()))
            expected = hashlib.sha256(payload_of(client_id, i, size)).digest()
            right += result.ok and hashlib.sha256(result.body).digest() == expected
        seconds = round(time.monotonic() - started, 1)
        report = {"client": client_id, "right": right, "busy": c.busy_notices, "resent": c.resent, "s": seconds}
    print(json.dumps(report), flush=True)


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """What one run saw of the balancer (bytes)."""

    base: int = 0  # RSS after start-up, nodes joined, the control path warm
    peak: int = 0  # highest RSS sampled while the clients ran
    after: int = 0  # RSS once every client had its results
    held_peak: int = 0  # the most the budget counted (zlb status "memory" held_bytes)
    status_unanswered: int = 0  # status queries not answered within 5 s while the clients ran
    rollup_at_peak: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)  # zlb status at the end
    clients: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def results_right(self) -> int:
        return sum(c.get("right", 0) for c in self.clients)

    def summary(self, bound_mb: float) -> str:
        c = self.status.get("requests", {})
        lines = [
            f"RSS base {self.base / MIB:.0f} MiB, peak +{(self.peak - self.base) / MIB:.0f} MiB"
            f" (bound +{bound_mb:.0f}),"
            f" after +{(self.after - self.base) / MIB:.0f}; results right {self.results_right};"
            f" budget counted at most {self.held_peak / MIB:.0f} MiB; submitted {c.get('submitted')},"
            f" busy {c.get('busy')}, duplicates {c.get('duplicates')}, loop_max_ms {self.status.get('loop_max_ms')}"
            + (f", {self.status_unanswered} status queries unanswered in 5 s" if self.status_unanswered else ""),
            f"  at the peak: anonymous {self.rollup_at_peak.get('Anonymous', 0) / MIB:.0f} MiB,"
            f" file-backed {(self.rollup_at_peak.get('Rss', 0) - self.rollup_at_peak.get('Anonymous', 0)) / MIB:.0f}",
        ]
        peak = self.probe.get("peak")
        if peak:
            shown = {k: (v if k == "in_flight" else round(v / MIB)) for k, v in peak.items() if k != "rss"}
            lines.append(f"  probe's peak: rss +{(peak['rss'] - self.base) / MIB:.0f} MiB; MiB: {shown}")
        lines += [f"  {json.dumps(c)}" for c in self.clients]
        return "\n".join(lines)


class Cluster:
    """A balancer, echo nodes and client processes on fresh loopback ports; stop() ends each by its PID."""

    def __init__(self, workdir: Path, heartbeat_ms: int = 1000) -> None:
        self.workdir = workdir
        self.endpoints = Endpoints.fresh()
        self.heartbeat_ms = heartbeat_ms  # generous: a busy machine must not make nodes look dead
        self.env = {
            **os.environ,
            **self.endpoints.env(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),  # the clients and the probe run this module
            "XDG_STATE_HOME": str(workdir / "state"),
        }
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.workdir / f"{name}.out", "wb") as out, open(self.workdir / f"{name}.err", "wb") as err:
            streams = {"stdout": out, "stderr": err, "stdin": subprocess.DEVNULL}
            popen = subprocess.Popen([sys.executable, *args], cwd=self.workdir, env=self.env, **streams)
        self.procs.append(popen)
        return popen

    def output(self, name: str) -> str:
        return (self.workdir / f"{name}.out").read_text() + (self.workdir / f"{name}.err").read_text()

    def call(self, cmd: str) -> Any:
        return control_client.call(self.endpoints.control, cmd, timeout_s=5.0)

    def start_balancer(self, budget_mb: int | None, probe_options: list[str] | None = None) -> int:
        """`zlb balancer` (under the probe with `probe_options`); its pid once it answers."""
        args = ["balancer", "--heartbeat-ms", str(self.heartbeat_ms), "--liveness", "10", "--log-file", "balancer.log"]
        if budget_mb is not None:
            args += ["--max-memory-mb", str(budget_mb)]
        if probe_options is None:
            proc = self.start("balancer", "-m", "zlb", *args)
        else:
            proc = self.start("balancer", "-m", PROBE_MODULE, *probe_options, "--", *args)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"balancer exited with {proc.returncode}: {self.output('balancer')}")
            try:
                self.call("ping")
                return True
            except control_client.BalancerUnreachable:
                return False

        wait_until(answers, 30, "the balancer to answer ping")
        return proc.pid

    def start_nodes(self, count: int) -> None:
        beat = ["--heartbeat-ms", str(self.heartbeat_ms), "--liveness", "10"]
        for i in range(count):
            self.start(f"node-{i}", "-m", "zlb", "server", "--id", str(i), "--handler", "echo", *beat)
        wait_until(lambda: sum(s["active"] for s in self.call("servers")) == count, 30, f"{count} nodes active")

    def start_clients(self, count: int, per_client: int, size: int, timeout: float) -> list[subprocess.Popen]:
        front = self.endpoints.frontend
        return [
            self.start(f"client-{c}", "-m", MODULE, "client", front, str(c), str(per_client), str(size), str(timeout))
            for c in range(1, count + 1)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def measure(
    workdir: Path,
    budget_mb: int | None = 64,
    payload_mb: int = 16,
    clients: int = 4,
    per_client: int = 4,
    nodes: int = 2,
    probe_options: list[str] | None = None,
    timeout: float = 240.0,
) -> Measurement:
    """Run the clients through a fresh balancer and echo nodes, sampling the balancer's RSS all along."""
    cluster = Cluster(workdir)
    report = workdir / "probe.json"
    m = Measurement()
    try:
        pid = cluster.start_balancer(budget_mb, None if probe_options is None else [str(report), *probe_options])
        cluster.start_nodes(nodes)
        cluster.call("status")  # the control path warm before the base is taken
        m.base = m.peak = rss(pid)
        running = cluster.start_clients(clients, per_client, payload_mb * MIB, timeout)
        deadline = time.monotonic() + timeout + 30
        next_status = 0.0
        while any(p.poll() is None for p in running):
            if time.monotonic() > deadline:
                raise AssertionError(f"clients still running after {timeout + 30:.0f} s")
            now = rss(pid)
            if now > m.peak:
                m.peak = now
                m.rollup_at_peak = rollup(pid)
            if time.monotonic() >= next_status:
                try:
                    m.held_peak = max(m.held_peak, cluster.call("status")["memory"]["held_bytes"])
                except control_client.BalancerUnreachable:
                    m.status_unanswered += 1  # a stalled loop: reported, not fatal to the measurement
                next_status = time.monotonic() + 0.1
            time.sleep(0.002)  # wait-ok: the sampling interval, not a synchronisation
        m.after = rss(pid)
        m.status = cluster.call("status")
        m.held_peak = max(m.held_peak, m.status["memory"]["held_bytes"])
        for c in range(1, clients + 1):
            text = cluster.output(f"client-{c}").strip()
            try:
                m.clients.append(json.loads(text.splitlines()[-1]))
            except (ValueError, IndexError):
                m.clients.append({"client": c, "error": text[-600:]})
    finally:
        cluster.stop()
    if report.exists():
        m.probe = json.loads(report.read_text())
    return m


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mb", type=int, default=64, help="--max-memory-mb; -1: the balancer's default")
    parser.add_argument("--payload-mb", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="repeat, then print the median and the worst")
    parser.add_argument("--probe", action="store_true", help="sample the budget, heap and mmaps inside the balancer")
    parser.add_argument("--trace", action="store_true", help="with --probe: tracemalloc too (slower)")
    parser.add_argument("--series", metavar="FILE", help="with --probe: every sample to FILE, a JSON line each")
    parser.add_argument("--profile", metavar="FILE", help="with --probe: cProfile the balancer into FILE (pstats)")
    args = parser.parse_args()
    from balancer.budget import DEFAULT_MAX_MEMORY_MB

    budget = None if args.budget_mb < 0 else args.budget_mb
    bound = (DEFAULT_MAX_MEMORY_MB if budget is None else budget) + 48  # issue 20's, with 16 MiB payloads
    options = None
    if args.probe:
        options = ["--trace"] if args.trace else []
        options += ["--series", args.series] if args.series else []
        options += ["--profile", args.profile] if args.profile else []
    print(
        f"--max-memory-mb {budget if budget is not None else f'{DEFAULT_MAX_MEMORY_MB} (default)'}, {args.clients}"
        f" clients x {args.per_client} x {args.payload_mb} MiB, {args.nodes} echo nodes",
        flush=True,
    )
    peaks, probed, seconds = [], [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(Path(tmp), budget, args.payload_mb, args.clients, args.per_client, args.nodes, options)
        print(f"run {run}: {m.summary(bound)}", flush=True)
        peaks.append((m.peak - m.base) / MIB)
        seconds.append(max(c.get("s", 0) for c in m.clients))
        if m.probe.get("peak"):
            probed.append((m.probe["peak"]["rss"] - m.base) / MIB)
    if args.runs > 1:
        line = f"{args.runs} runs: peak over base median +{statistics.median(peaks):.0f} MiB, worst +{max(peaks):.0f}"
        if probed:
            line += f"; probe's median +{statistics.median(probed):.0f}, worst +{max(probed):.0f}"
        print(f"{line}; clients done in a median {statistics.median(seconds):.0f} s")


if __name__ == "__main__":
    main()
