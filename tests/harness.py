"""Test harness: reserved loopback ports, real zlb processes, waiting with deadlines that stretch on a busy machine."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire import control_client

ROLES = ("frontend", "backend", "events", "control")
REPO = str(Path(__file__).resolve().parents[1])

# ---- time on a busy machine -------------------------------------------------
#
# The deadlines in this suite are what a quiet machine needs. On a busy one (another suite, a benchmark)
# every process gets about cpus / load of a CPU, so starting a Python process or answering a request takes
# that many times longer: each deadline stretches by `slack()`, and so does each test's pytest timeout
# (tests/conftest.py). A wait that succeeds returns as soon as it does, so the stretch costs a passing run
# nothing. ZLB_TEST_SLACK multiplies it further (a sanitizer build, a slow CI runner).
MAX_SLACK = 8.0


def slack() -> float:
    """How many times slower than a quiet machine this one runs now: load average per CPU, 1 to MAX_SLACK."""
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(MAX_SLACK, max(1.0, per_cpu)) * float(os.environ.get("ZLB_TEST_SLACK", "1"))


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on a quiet machine, stretched for the load right now."""
    return seconds * slack()


def timeout_arg(seconds: float) -> str:
    """`scaled(seconds)` as the value of a zlb command's --timeout option."""
    return f"{scaled(seconds):.0f}"


# ---- liveness ---------------------------------------------------------------
#
# Heartbeats every 100 ms. A silent node is declared dead after heartbeat x liveness; the balancer
# tells its nodes both in WELCOME, so they judge the balancer the same way. A test about something else
# uses STEADY_LIVENESS: 5 s of silence, which no starved machine imposes on a process that mostly sleeps,
# so no node "dies" of load in the middle of it. A test that kills or stops a node and waits for the
# death uses WATCHFUL_LIVENESS: 1 s (at load 40 on 2 cores, 300 ms gave no false death in a minute).
# A balancer that itself stalls (SIGSTOP, a starved machine) does not count its own stall against its
# nodes: their deadlines run on the time its loop could listen (balancer/nodes.py).
HEARTBEAT_MS = 100
STEADY_LIVENESS = 50
WATCHFUL_LIVENESS = 10

# ---- ports ------------------------------------------------------------------
#
# A port picked by binding port 0 and closing is free only until someone else takes it: another suite
# running at the same time picks ports the same way, and any connect() may be given it as its local port.
# (It happened: a POST meant for `zlb cluster --http PORT` reached another suite's ZMQ socket on PORT.)
# So a picked port stays bound in this process, with SO_REUSEADDR and never listening, until the test
# ends (`release_ports`, called by an autouse fixture in conftest.py): the kernel gives a bound port to
# no bind(0) and no connect(), while a zlb process still binds it (ZMQ and uvicorn set SO_REUSEADDR,
# and Linux lets sockets with it share a port as long as at most one listens).
_held: list[socket.socket] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 reserved for this test: nothing listens on it, and nothing else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _held.append(sock)
    return sock.getsockname()[1]


def release_ports() -> None:
    """Give back every port `free_port` reserved."""
    while _held:
        _held.pop().close()


@dataclass
class Endpoints:
    """The balancer's four endpoints on fresh loopback ports."""

    frontend: str
    backend: str
    events: str
    control: str

    @classmethod
    def fresh(cls) -> Endpoints:
        return cls(*(f"tcp://127.0.0.1:{free_port()}" for _ in ROLES))

    def env(self) -> dict[str, str]:
        """ZLB_* variables pointing every zlb command at these endpoints."""
        return {f"ZLB_{role.upper()}": getattr(self, role) for role in ROLES}


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s, stretched by `slack()`."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        waited = time.monotonic() - start
        if waited > timeout and waited > scaled(timeout):
            raise AssertionError(f"timed out after {waited:.1f} s ({timeout:g} s x slack) waiting for {message}")
        time.sleep(0.02)  # wait-ok: the poll interval of a deadline-bounded wait


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def reset_connections(pid: int, backend_port: int) -> int:
    """Destroy the TCP connections of process `pid` to the backend port (both ends) with `ss -K`; return how many.

    PermissionError where `ss -K` may not destroy sockets (it needs CAP_NET_ADMIN, and then exits 0 anyway)."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", "dst", f"127.0.0.1:{backend_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    local_ports = [
        int(m.group(1))
        for line in listing.splitlines()
        if f"pid={pid}," in line
        for m in [re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:" + str(backend_port), line)]
        if m
    ]
    for port in local_ports:
        for direction in (["src", f"127.0.0.1:{port}"], ["dst", f"127.0.0.1:{port}"]):
            done = subprocess.run(["ss", "-K", "state", "established", *direction], capture_output=True, check=True)
            if b"not permitted" in done.stderr:
                raise PermissionError(f"ss -K: {done.stderr.decode(errors='replace').strip()}")
    return len(local_ports)


@dataclass
class Proc:
    """A started zlb process and where its output goes."""

    name: str
    popen: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code, waiting up to `timeout` s (stretched by `slack()`)."""
        return self.popen.wait(scaled(timeout))


@dataclass
class ProcessGroup:
    """Every process a test starts; `stop_all` ends each one by PID."""

    workdir: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, *args: str, extra_env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> Proc:
        """Run `zlb ARGS` in the background with output captured to files (`command`: instead of `python -m zlb`)."""
        out = self.workdir / f"{name}.out"
        err = self.workdir / f"{name}.err"
        env = {**self.env, **(extra_env or {})}
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                [*(command or [sys.executable, "-m", "zlb"]), *args],
                cwd=self.workdir,
                env=env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """Run `zlb ARGS` to completion (within `timeout` s, stretched by `slack()`) and capture its output."""
        return subprocess.run(
            [sys.executable, "-m", "zlb", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
            stdin=subprocess.DEVNULL,
        )

    def kill9(self, proc: Proc) -> None:
        """SIGKILL a process, as a crash would."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def stop_all(self) -> None:
        """SIGTERM every live process, then SIGKILL whatever lingers."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + scaled(5)
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)


@dataclass
class LiveBalancer:
    """A running balancer process plus helpers to drive it."""

    endpoints: Endpoints
    procs: ProcessGroup
    proc: Proc
    heartbeat_ms: int
    liveness: int = STEADY_LIVENESS

    @property
    def silence_s(self) -> float:
        """How long a node may stay silent before this balancer declares it dead."""
        return self.heartbeat_ms * self.liveness / 1000

    def call(self, cmd: str, **args: Any) -> Any:
        return control_client.call(self.endpoints.control, cmd, timeout_s=scaled(3.0), **args)

    def servers(self) -> dict[int, dict[str, Any]]:
        return {s["server_id"]: s for s in self.call("servers")}

    def start_server(
        self, node_id: int | None = None, *extra: str, handler: str | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """`zlb server` with this balancer's timing; `handler` names one in tests/reliability/handlers.py."""
        args = ["server", "--heartbeat-ms", str(self.heartbeat_ms), "--liveness", str(self.liveness)]
        if node_id is not None:
            args += ["--id", str(node_id)]
        env = dict(env or {})
        if handler is not None:
            args += ["--handler", f"tests.reliability.handlers:{handler}"]
            env["PYTHONPATH"] = REPO
        return self.procs.start(f"server-{node_id}-{len(self.procs.procs)}", *args, *extra, extra_env=env)

    def wait_servers_active(self, ids: set[int], timeout: float = 10.0) -> None:
        def ready() -> bool:
            servers = self.servers()
            return all(i in servers and servers[i]["active"] for i in ids)

        wait_until(ready, timeout, f"servers {sorted(ids)} active")

    def wait_dead(self, node_id: int) -> None:
        """Wait until the balancer has declared node `node_id` dead: its silence, plus a margin."""
        wait_until(lambda: self.servers()[node_id]["state"] == "dead", self.silence_s + 5, f"server {node_id} dead")


def start_balancer(
    procs: ProcessGroup,
    endpoints: Endpoints,
    heartbeat_ms: int = HEARTBEAT_MS,
    *extra: str,
    liveness: int = STEADY_LIVENESS,
) -> LiveBalancer:
    """Start `zlb balancer` on the given endpoints and wait until it answers."""
    timing = ("--heartbeat-ms", str(heartbeat_ms), "--liveness", str(liveness))
    proc = procs.start("balancer", "balancer", *timing, "--log-file", "balancer.log", *extra)
    live = LiveBalancer(endpoints, procs, proc, heartbeat_ms, liveness)

    def answers() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"balancer exited with {proc.popen.returncode}: {proc.stderr()}")
        try:
            live.call("ping")
            return True
        except control_client.BalancerUnreachable:
            return False

    wait_until(answers, 15, "the balancer to answer ping")
    return live


@contextmanager
def balancer_in_process(**config: Any) -> Iterator[tuple[Any, Any]]:
    """A Balancer object in this process, its frontend on inproc, and a DEALER connected to it.

    Over inproc a message is in the frontend's queue when its send returns, so a test can call the
    loop's drains directly and know exactly what waits: no race with a TCP transfer.
    """
    import zmq

    from balancer.config import BalancerConfig
    from balancer.loop import Balancer

    eps = {role: f"tcp://127.0.0.1:{free_port()}" for role in ("backend", "events", "control")}
    eps["frontend"] = f"inproc://frontend-{os.getpid()}-{time.monotonic_ns()}"
    ctx = zmq.Context()
    balancer = Balancer(BalancerConfig(**eps, log_file=None, **config), context=ctx)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(eps["frontend"])
    try:
        yield balancer, sock
    finally:
        sock.close(linger=0)
        balancer.close()
        ctx.term()
