"""A child started by the Supervisor ends when the process that started it dies.

A `zlb cluster` killed with SIGKILL cannot stop its children: without this they
were re-parented to PID 1 and ran on (the balancer holding its ports, so the next
`zlb cluster` found them taken). The Supervisor names itself in the child's
environment (SUPERVISOR_PID_ENV); the child, as it starts, asks Linux for a
signal when its parent dies (prctl PR_SET_PDEATHSIG) and, where there is no
prctl, watches its parent from a daemon thread.

The signal is SIGTERM: a node finishes what it runs and the balancer stops in its
usual order, within their grace. Linux sends it when the *thread* that forked
the child ends, so a Supervisor must start children from a thread that lives as
long as it does (the main thread of `zlb cluster`, the gateway's processes thread).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SUPERVISOR_PID_ENV = "ZLB_SUPERVISOR_PID"
# From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
# Without prctl, the parent is looked for this often.
WATCH_EVERY_S = 0.5
PARENT_DEATH_SIGNAL = signal.SIGTERM


def follow_parent() -> None:
    """End this process with SIGTERM when its supervising parent dies (no-op unless a Supervisor started it).

    The variable is taken out of the environment so that this process's own children do not
    inherit a parent that is not theirs.
    """
    named = os.environ.pop(SUPERVISOR_PID_ENV, "")
    if not named.isdigit():
        return
    parent = int(named)
    if not _ask_kernel(PARENT_DEATH_SIGNAL):
        threading.Thread(target=_watch, args=(parent,), name="zlb-parent-watch", daemon=True).start()
    # The parent may have died before the request above: then nobody will send the signal.
    if os.getppid() != parent:
        os.kill(os.getpid(), PARENT_DEATH_SIGNAL)


def _ask_kernel(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum); False where that is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    # Imported here, as only a supervised child asks: every zlb process runs this module. The process's
    # own symbols include libc's, so no ctypes.util.find_library (1.5 MB, and it may run ldconfig).
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_EVERY_S)  # wait-ok: a parent's death signals nothing we could wait on here
    os.kill(os.getpid(), PARENT_DEATH_SIGNAL)
