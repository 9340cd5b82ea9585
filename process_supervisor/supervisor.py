"""Starting and stopping zlb processes on this machine.

Used by `zlb cluster`, the HTTP gateway's /configure and `zlb bench`: every
process it starts it can stop by PID, politely (SIGTERM) and then firmly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from process_supervisor.parent_watch import SUPERVISOR_PID_ENV
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
    # stderr of the processes started with `keep_stderr`, so a failure can be told in its own words.
    _stderr: dict[str, IO[bytes]] = field(default_factory=dict)
    _reported: set[int] = field(default_factory=set)

    def start(self, name: str, *args: str, keep_stderr: bool = False) -> subprocess.Popen:
        """Start `zlb ARGS` as process `name` (replacing a dead one of that name).

        With `keep_stderr`, its stderr goes to a temporary file that `last_error` reads.
        """
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {old.pid})")
        # Children's output would interleave with the cluster's own log; stderr is kept on request.
        out = subprocess.DEVNULL
        err: int | IO[bytes] = out
        if keep_stderr:
            self._close_stderr(name)
            err = self._stderr[name] = tempfile.TemporaryFile()
        # The child ends if this process dies without stopping it (process_supervisor/parent_watch.py).
        env = {**self.env, SUPERVISOR_PID_ENV: str(os.getpid())}
        proc = subprocess.Popen(zlb_argv(*args), env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def last_error(self, name: str) -> str:
        """The last line process `name` wrote to stderr ('' when none was kept)."""
        err = self._stderr.get(name)
        if err is None:
            return ""
        err.seek(0)
        lines = [line.strip() for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
        # click prefixes its one-line errors with "Error: "; the caller says whose error it is.
        return lines[-1].removeprefix("Error: ") if lines else ""

    def why_exited(self, name: str) -> str:
        """`NAME exited with code N: <its last stderr line>` for a process that has ended."""
        proc = self.procs[name]
        code = proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        said = self.last_error(name)
        return f"{name} (pid {proc.pid}) {how}" + (f": {said}" if said else "")

    def reap(self) -> list[str]:
        """Collect children that ended since the last call, so no zombie lingers; return their names."""
        ended = []
        for name, proc in self.procs.items():
            if proc.pid not in self._reported and proc.poll() is not None:
                self._reported.add(proc.pid)
                ended.append(name)
        return ended

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
        self._close_stderr(name)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop everything started here, newest first, balancer last."""
        procs = list(reversed(self.procs.values()))
        self.procs.clear()
        terminate(procs, timeout_s)
        for name in list(self._stderr):
            self._close_stderr(name)

    def _close_stderr(self, name: str) -> None:
        err = self._stderr.pop(name, None)
        if err is not None:
            err.close()

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


def wait_for_balancer(
    control: str, timeout_s: float = 10.0, exited: Callable[[], str | None] | None = None, pid: int | None = None
) -> None:
    """Block until the balancer answers on `control`, or raise RuntimeError.

    `exited()` returns why the balancer process ended, or None while it runs. With `pid`, only the
    balancer of that pid counts: another one still bound to the port (left over from an earlier run)
    answers too, and a cluster that took it for its own configured it and printed its events.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        why = exited() if exited is not None else None
        if why is not None:
            raise RuntimeError(why)
        try:
            answer = control_client.call(control, "ping", timeout_s=0.5)
            if pid is None or (isinstance(answer, dict) and answer.get("pid") == pid):
                return
            time.sleep(0.05)  # wait-ok: ours is still starting (or failing to bind); poll within the deadline
        except control_client.BalancerUnreachable:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no balancer answered at {control} within {timeout_s:g} s") from None
