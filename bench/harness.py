"""Starting the systems under test and driving load against them.

A `Bench` owns one ProcessSet and a scratch directory; every scenario starts
what it needs through it (a zlb balancer with nodes, the minimal relay, the
zmq.proxy floor, simulated nodes, load generators) and stops it again.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import defaults, procstat, stats
from bench.procs import ProcessSet, python_argv
from process_supervisor.supervisor import zlb_argv
from wire import control_client

START_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.02
# What each further node adds to the wait for a balancer's nodes to be active.
NODE_START_S = 0.5


class BenchError(Exception):
    """Something the bench started did not come up or behave; a one-line reason."""


def free_endpoint() -> str:
    """A tcp endpoint on 127.0.0.1 with a port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class LineReader:
    """Lines from a child's stdout pipe, read with a deadline (never a hang)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def line(self, timeout_s: float, what: str) -> str:
        """The next line; BenchError if none comes within the timeout."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
            readable, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchError(f"{what}: the process exited with code {self.proc.wait()}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace").strip()


@dataclass
class Target:
    """A running system under test: where clients connect and whose CPU counts."""

    name: str
    frontend: str
    backend: str
    broker: subprocess.Popen
    control: str | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)
    events: str | None = None

    @property
    def pid(self) -> int:
        return self.broker.pid


@dataclass
class LoadResult:
    """What a set of load generators measured, merged."""

    requests_per_s: float | None
    latency_us: dict[str, float | None]
    completed: int
    sent: int
    unanswered: int
    duplicates: int
    rejected: int
    failed: int
    broker_cpu_s: float
    clients: list[dict[str, Any]]
    # CPU of the broker's child processes over the same window (zlb's log writer; 0 for the baselines).
    helper_cpu_s: float = 0.0
    # Every measured round trip in nanoseconds, so runs can be pooled (baselines.pooled).
    latencies_ns: array = field(default_factory=lambda: array("q"))

    @property
    def cpu_us_per_request(self) -> float | None:
        return stats.per_item(self.broker_cpu_s * 1e6, self.completed)

    @property
    def helper_cpu_us_per_request(self) -> float | None:
        return stats.per_item(self.helper_cpu_s * 1e6, self.completed)

    @property
    def errors(self) -> int:
        return self.unanswered + self.duplicates + self.rejected + self.failed


@dataclass
class Clients:
    """Load generators that have been told to go."""

    procs: list[subprocess.Popen]
    latency_files: list[str]
    cpu_before: float
    target: Target
    helper_cpu_before: float = 0.0


class Bench:
    """Starts and stops everything for one `zlb bench` run."""

    def __init__(self, workdir: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.procs = ProcessSet(workdir, env or dict(os.environ))
        self._names = 0
        # Ids above 256: Python caches small ints, which would hide the real per-request cost.
        self._client_ids = 1000
        # The balancer options the running scenario set away from their defaults (bench/defaults.py).
        self.non_default: dict[str, str] = {}

    def name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}-{self._names}"

    # ---- systems under test ---------------------------------------------

    def start_zlb(
        self,
        nodes: int,
        capacity: int,
        handler: str = "echo",
        heartbeat_ms: int | None = None,
        with_ids: bool = False,
        extra: tuple[str, ...] = (),
    ) -> Target:
        """A zlb balancer (its defaults, plus `extra` options) and `nodes` real `zlb server` processes, all active."""
        frontend, backend, events, control = (free_endpoint() for _ in range(4))
        hb = [] if heartbeat_ms is None else ["--heartbeat-ms", str(heartbeat_ms)]
        name = self.name("balancer")
        argv = zlb_argv(
            "balancer",
            *("--frontend", frontend, "--backend", backend, "--events", events, "--control", control),
            *("--log-file", os.path.join(self.workdir, f"{name}.log")),
            *hb,
            *extra,
        )
        self.non_default.update(
            {k: v.replace(self.workdir, "SCRATCH") for k, v in defaults.changed([*hb, *extra]).items()}
        )
        broker = self.procs.start(name, argv)
        target = Target("zlb", frontend, backend, broker, control, events=events)
        self.wait_zlb_up(target, name)
        for i in range(nodes):
            self.add_zlb_node(target, capacity, handler, hb, node_id=i if with_ids else None)
        # 64 nodes starting at once on 2 busy cores take longer than one.
        self.wait_zlb_nodes(target, nodes, START_TIMEOUT_S + nodes * NODE_START_S)
        return target

    def add_zlb_node(
        self, target: Target, capacity: int, handler: str, hb: list[str], node_id: int | None = None
    ) -> subprocess.Popen:
        """Start one `zlb server` against the target's backend."""
        ids = [] if node_id is None else ["--id", str(node_id)]
        argv = zlb_argv(
            "server", "--backend", target.backend, "--handler", handler, "--capacity", str(capacity), *ids, *hb
        )
        node = self.procs.start(self.name("node"), argv)
        target.nodes.append(node)
        return node

    def wait_zlb_up(self, target: Target, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if target.broker.poll() is not None:
                raise BenchError(f"the balancer exited with code {target.broker.returncode}: {self.stderr(name)}")
            try:
                control_client.call(target.control, "ping", timeout_s=0.5)
                return
            except control_client.BalancerUnreachable:
                if time.monotonic() > deadline:
                    raise BenchError(f"the balancer did not answer within {START_TIMEOUT_S:g} s") from None

    def wait_zlb_nodes(self, target: Target, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the balancer counts `count` active nodes."""
        self.wait_status(target, lambda s: s["servers_active"] >= count, f"{count} active nodes", timeout_s)

    def status(self, target: Target) -> dict[str, Any]:
        return control_client.call(target.control, "status", timeout_s=10.0)

    def wait_status(self, target: Target, ready: Any, what: str, timeout_s: float) -> dict[str, Any]:
        """Poll the balancer's status until `ready(status)`; BenchError at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            if target.broker.poll() is not None:
                raise BenchError(f"the balancer exited with code {target.broker.returncode} waiting for {what}")
            status = self.status(target)
            if ready(status):
                return status
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(POLL_INTERVAL_S)  # wait-ok: poll interval of a deadline-bounded wait

    def start_relay(self, nodes: int, capacity: int) -> Target:
        """The minimal relay from bench/ plus `nodes` real `zlb server` echo nodes."""

        def add_node(target: Target) -> None:
            self.add_zlb_node(target, capacity, "echo", [])

        return self.start_announcing_relay("bench.relay", "relay", nodes, add_node)

    def start_announcing_relay(
        self, module: str, label: str, nodes: int, add_node: Callable[[Target], None], node_noun: str = "nodes"
    ) -> Target:
        """`module` (a relay: bench.relay, bench.framerelay) started with --announce, then `nodes` nodes added,
        each awaited as its HELLO line.

        The module's full name is spelled out by every caller, so a search for it (and the wheel test's
        reachability walk) finds where it is launched.
        """
        frontend, backend = free_endpoint(), free_endpoint()
        argv = python_argv(module, "--frontend", frontend, "--backend", backend, "--announce")
        relay = self.procs.start(self.name(module.rpartition(".")[2]), argv, stdout=subprocess.PIPE)
        target = Target(label, frontend, backend, relay)
        reader = LineReader(relay)
        if reader.line(START_TIMEOUT_S, f"the {label} to bind") != "ready":
            raise BenchError(f"the {label} did not start")
        for _ in range(nodes):
            add_node(target)
        for _ in range(nodes):
            reader.line(START_TIMEOUT_S, f"{nodes} {node_noun} to say HELLO to the {label}")
        return target

    def start_proxy(self, nodes: int) -> Target:
        """zmq.proxy plus `nodes` raw echo workers."""
        frontend, backend = free_endpoint(), free_endpoint()
        argv = python_argv("bench.proxy", "--frontend", frontend, "--backend", backend)
        proxy = self.procs.start(self.name("proxy"), argv)
        target = Target("zmq.proxy", frontend, backend, proxy)
        readers = []
        for _ in range(nodes):
            worker = self.procs.start(
                self.name("rawecho"), python_argv("bench.rawecho", "--backend", backend), stdout=subprocess.PIPE
            )
            target.nodes.append(worker)
            readers.append(LineReader(worker))
        for reader in readers:
            reader.line(START_TIMEOUT_S, "a raw echo worker to connect")
        return target

    def start_simnodes(self, target: Target, count: int, procs: int, capacity: int, heartbeat_ms: int) -> None:
        """`count` simulated nodes spread over `procs` processes."""
        per_proc = -(-count // procs)
        first = 0
        while first < count:
            n = min(per_proc, count - first)
            argv = python_argv(
                "bench.simnodes",
                *("--backend", target.backend, "--count", str(n), "--first-id", str(first)),
                *("--capacity", str(capacity), "--heartbeat-ms", str(heartbeat_ms)),
            )
            target.nodes.append(self.procs.start(self.name("simnodes"), argv))
            first += n

    def scheduler_bytes_per_request(self, count: int) -> float:
        """bench.memory in a fresh process: the scheduler's own bytes per waiting request."""
        proc = self.procs.start(
            self.name("memory"), python_argv("bench.memory", "--count", str(count)), stdout=subprocess.PIPE
        )
        line = LineReader(proc).line(600, "the scheduler memory measurement")
        self.procs.stop([proc])
        return json.loads(line)["bytes_per_waiting_request"]

    def stop(self, target: Target) -> None:
        """Stop a target's nodes, then its broker."""
        self.procs.stop([*target.nodes, target.broker])
        target.nodes.clear()

    def stderr(self, name: str) -> str:
        return self.procs.stderr_tail(name)

    # ---- load -----------------------------------------------------------

    def start_clients(
        self,
        target: Target,
        count: int,
        window: int,
        duration: float | None = None,
        requests: int | None = None,
        warmup_s: float = 0.0,
        payload_bytes: int = 16,
        payload: str | None = None,
        priority: int = 5,
        rate: float = 0.0,
        record_replies: bool = False,
        drain_s: float | None = None,
    ) -> Clients:
        """Start `count` load generators, wait until each is connected, then say go.

        Every generator gets a client id never used before in this run: the
        balancer remembers finished (client, request) pairs and would answer a
        reused pair from memory.
        """
        procs, files = [], []
        for _ in range(count):
            self.next_client_id()
            name = self.name("client")
            lat_file = os.path.join(self.workdir, f"{name}.lat")
            argv = python_argv(
                "bench.loadgen",
                *("--frontend", target.frontend, "--client-id", str(self._client_ids), "--window", str(window)),
                *("--warmup-s", str(warmup_s), "--payload-bytes", str(payload_bytes), "--priority", str(priority)),
                *("--rate", str(rate), "--latency-file", lat_file, "--wait-go"),
            )
            argv += ["--requests", str(requests)] if requests is not None else ["--duration", str(duration)]
            argv += ["--payload", payload] if payload is not None else []
            argv += ["--record-replies"] if record_replies else []
            argv += ["--drain-s", str(drain_s)] if drain_s is not None else []
            procs.append(self.procs.start(name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            files.append(lat_file)
        return self.go(target, procs, files)

    def next_client_id(self) -> int:
        """A client id never used before in this run."""
        self._client_ids += 1
        return self._client_ids

    def go(self, target: Target, procs: list[subprocess.Popen], files: list[str]) -> Clients:
        """Wait until every load process says ready, note the broker's CPU, then tell them all to go."""
        for proc in procs:
            if LineReader(proc).line(START_TIMEOUT_S, "a load generator to connect") != "ready":
                raise BenchError("a load generator did not start")
        cpu_before = procstat.cpu_seconds(target.pid)
        helper_before = procstat.children_cpu_seconds(target.pid)
        for proc in procs:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        return Clients(procs, files, cpu_before, target, helper_before)

    def collect(self, clients: Clients, timeout_s: float) -> LoadResult:
        """Wait for load generators to finish and merge what they measured."""
        deadline = time.monotonic() + timeout_s
        outputs = []
        for proc in clients.procs:
            try:
                out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"a load generator ran past {timeout_s:g} s") from None
            if proc.returncode != 0:
                raise BenchError(f"a load generator exited with code {proc.returncode}")
            outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
        cpu_s = procstat.cpu_seconds(clients.target.pid) - clients.cpu_before
        helper_s = procstat.children_cpu_seconds(clients.target.pid) - clients.helper_cpu_before
        self.procs.stop(clients.procs)
        latencies = array("q")
        for path in clients.latency_files:
            with open(path, "rb") as fh:
                latencies.frombytes(fh.read())
            os.remove(path)
        total = sum(o["completed"] for o in outputs)
        rps = sum(stats.rate(o["in_window"], o["window_s"]) or 0.0 for o in outputs)
        return LoadResult(
            requests_per_s=round(rps, 1) if total else None,
            latency_us=stats.latency_summary_us(latencies),
            completed=total,
            sent=sum(o["sent"] for o in outputs),
            unanswered=sum(o["unanswered"] for o in outputs),
            duplicates=sum(o["duplicates"] for o in outputs),
            rejected=sum(o["rejected"] for o in outputs),
            failed=sum(o["failed"] for o in outputs),
            broker_cpu_s=cpu_s,
            clients=outputs,
            helper_cpu_s=max(0.0, helper_s),
            latencies_ns=latencies,
        )

    def load(self, target: Target, count: int, window: int, duration: float, warmup_s: float, **kw: Any) -> LoadResult:
        """Run load generators for a duration and return the merged result."""
        clients = self.start_clients(target, count, window, duration=duration, warmup_s=warmup_s, **kw)
        return self.collect(clients, warmup_s + duration + 60)
