"""How soon `zlb status` says a journal fails after rm -rf of its directory, and recovers after mkdir (by hand).

    .venv/bin/python -m tests.reliability.measure_journal_failure [--runs 5] [--heartbeat-ms 500]

A real `zlb balancer --journal DIR/zlb.journal` on fresh loopback ports; each
run removes DIR, polls `status` until its journal section says failing, makes
DIR again and polls until it says healthy. Not a test: the figures go to
docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.harness import Endpoints, wait_until
from wire import control_client


def healthy(control: str) -> bool:
    return control_client.call(control, "status", timeout_s=3)["journal"]["healthy"]


def answers(control: str) -> bool:
    try:
        control_client.call(control, "ping", timeout_s=1)
        return True
    except control_client.BalancerUnreachable:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--heartbeat-ms", type=int, default=500)
    args = parser.parse_args()
    eps = Endpoints.fresh()
    work = tempfile.mkdtemp(prefix="zlb-journal-failure-")
    folder = os.path.join(work, "journal-dir")
    os.mkdir(folder)
    argv = [sys.executable, "-m", "zlb", "balancer", "--log-file", "", "--heartbeat-ms", str(args.heartbeat_ms)]
    argv += ["--journal", os.path.join(folder, "zlb.journal")]
    proc = subprocess.Popen(argv, env={**os.environ, **eps.env()}, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers(eps.control), 20, "the balancer to answer")
        for run in range(args.runs):
            shutil.rmtree(folder)
            removed = time.monotonic()
            wait_until(lambda: not healthy(eps.control), 10, "the journal to be said failing")
            noticed = time.monotonic() - removed
            os.mkdir(folder)
            made = time.monotonic()
            wait_until(lambda: healthy(eps.control), 20, "the journal to be written again")
            back = time.monotonic() - made
            print(f"run {run}: failing said {noticed:.3f} s after rm -rf; healthy {back:.3f} s after mkdir")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
