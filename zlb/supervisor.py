"""Starting and stopping zlb processes on this machine.

Used by `zlb cluster`, the HTTP gateway's /configure and `zlb bench`: every
process it starts it can stop by PID, politely (SIGTERM) and then firmly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from wire import control_client

STOP_TIMEOUT_S = 5.0


def zlb_argv(*args: str) -> list[str]:
    """The command line that runs `zlb ARGS` with this interpreter."""
    return [sys.executable, "-m", "zlb", *args]


@dataclass
class Supervisor:
    """Processes started here, by name."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    quiet: bool = True

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start `zlb ARGS` as process `name` (replacing a dead one of that name)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {old.pid})")
        out = subprocess.DEVNULL if self.quiet else None
        proc = subprocess.Popen(zlb_argv(*args), env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def start_server(self, node_id: int, capacity: int, heartbeat_ms: int, liveness: int) -> subprocess.Popen:
        """Start `zlb server --id N` as process `server-N`."""
        return self.start(
            f"server-{node_id}",
            "server",
            *("--id", str(node_id), "--capacity", str(capacity)),
            *("--heartbeat-ms", str(heartbeat_ms), "--liveness", str(liveness)),
        )

    def stop(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM one process, SIGKILL it if it outlives the timeout."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            terminate([proc], timeout_s)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop everything started here, newest first, balancer last."""
        procs = list(reversed(self.procs.values()))
        self.procs.clear()
        terminate(procs, timeout_s)

    def running(self, prefix: str = "") -> list[str]:
        """Names of live processes whose name starts with `prefix`."""
        return [n for n, p in self.procs.items() if n.startswith(prefix) and p.poll() is None]


def terminate(procs: list[subprocess.Popen], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM these processes, then SIGKILL any that outlive the timeout; reap them all."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass  # it exited between poll() and the signal
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_balancer(control: str, timeout_s: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Block until the balancer answers on `control`, or raise RuntimeError."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the balancer exited with code {proc.returncode} (is {control} or a port in use?)")
        try:
            control_client.call(control, "ping", timeout_s=0.5)
            return
        except control_client.BalancerUnreachable:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no balancer answered at {control} within {timeout_s:g} s") from None
