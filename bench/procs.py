"""Every process the bench starts, so that each one is stopped by its PID.

Children run in their own session (a Ctrl-C at the terminal reaches only the
bench, which then stops them in order) and, on Linux, ask the kernel to
SIGTERM them should the bench itself die without cleaning up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from process_supervisor.supervisor import terminate

STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: tie the child's life to the bench.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def python_argv(module: str, *args: str) -> list[str]:
    """The command line that runs `python -m MODULE ARGS` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass
class ProcessSet:
    """Processes started for one benchmark run; `stop_all` ends each by PID."""

    workdir: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    live: list[subprocess.Popen] = field(default_factory=list)
    started_pids: list[int] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], stdin: Any = subprocess.DEVNULL, stdout: Any = None
    ) -> subprocess.Popen:
        """Start a process; its stderr goes to WORKDIR/NAME.err for post-mortems."""
        err: IO[bytes] = open(os.path.join(self.workdir, f"{name}.err"), "wb")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdin=stdin,
                stdout=subprocess.DEVNULL if stdout is None else stdout,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            err.close()
        self.live.append(proc)
        self.started_pids.append(proc.pid)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        """SIGKILL one process, as a crash would, and reap it."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)
        self._forget(proc)

    def stop(self, procs: list[subprocess.Popen], timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM these processes, then SIGKILL any that outlive the timeout."""
        terminate(procs, timeout_s)
        for proc in procs:
            self._forget(proc)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every live process, newest first."""
        self.stop(list(reversed(self.live)), timeout_s)

    def _forget(self, proc: subprocess.Popen) -> None:
        if proc in self.live:
            self.live.remove(proc)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def stderr_tail(self, name: str, limit: int = 400) -> str:
        """The end of a process's stderr file, for an error message."""
        try:
            with open(os.path.join(self.workdir, f"{name}.err"), encoding="utf-8", errors="replace") as fh:
                return fh.read()[-limit:].strip()
        except OSError:
            return ""
