"""Measure whether per-socket ZAP domains (`--node-allow`) cost the request path anything under curve.

    python -m tests.reliability.measure_curve_roles [REQUESTS] [ROUNDS]

Real processes on free loopback ports: a curve balancer, two `zlb server --handler echo
--capacity 50` nodes and this process as the client, sending REQUESTS small requests in
windows of 1,000; without `--node-allow` (every --allow key may serve, as before) and with it
(the backend a ZAP domain of its own), ROUNDS times each, which one first alternating. The role
is settled once, at the handshake, so the two should not differ beyond noise (requests/s).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client_node.client import Client
from tests.harness import Endpoints, wait_until
from wire import control_client, security

WINDOW = 1000


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "zlb", *args],
            env=env,
            stderr=err,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(tmp: Path, node_allow: bool, requests: int) -> tuple[float, float]:
    """Requests/s, and the balancer's CPU microseconds per request (steadier on a busy machine)."""
    ends = Endpoints.fresh()
    base = {**os.environ, **ends.env(), "XDG_STATE_HOME": str(tmp / "state")}
    keys = {who: str(tmp / "keys" / f"{who}.key_secret") for who in ("client", "node")}
    server_key = str(tmp / "keys" / "balancer.key")
    as_node = {**base, security.CURVE_SECRET_ENV: keys["node"], security.SERVER_KEY_ENV: server_key}
    os.environ.update({security.CURVE_SECRET_ENV: keys["client"], security.SERVER_KEY_ENV: server_key})
    curve = ["--curve-secret", str(tmp / "keys" / "balancer.key_secret"), "--allow", str(tmp / "allow")]
    roles = ["--node-allow", str(tmp / "nodes")] if node_allow else []
    hb = ["--heartbeat-ms", "1000", "--liveness", "10"]
    procs = [start(["balancer", *hb, "--log-file", "", *curve, *roles], base, tmp / "balancer.err")]
    try:
        for node_id in (0, 1):
            node = ["server", *hb, "--id", str(node_id), "--handler", "echo", "--capacity", "50"]
            procs.append(start(node, as_node, tmp / f"node{node_id}.err"))

        def joined() -> bool:
            try:
                return len(control_client.call(ends.control, "servers", timeout_s=1.0)) == 2
            except control_client.BalancerUnreachable:
                return False

        wait_until(joined, 30, "two nodes to join")
        with Client(ends.frontend, client_id=1) as client:
            started, cpu = time.perf_counter(), cpu_s(procs[0].pid)
            for first in range(0, requests, WINDOW):
                pending = client.submit_many([b"x" * 64] * min(WINDOW, requests - first))
                assert all(p.result(timeout=60).ok for p in pending)
            rate = requests / (time.perf_counter() - started)
            return rate, (cpu_s(procs[0].pid) - cpu) / requests * 1e6
    finally:
        for proc in procs:  # each by its PID
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for who in ("balancer", "client", "node"):
            security.generate_keys(str(tmp / "keys"), who)
        (tmp / "allow").mkdir()
        (tmp / "nodes").mkdir()
        shutil.copy(tmp / "keys" / "client.key", tmp / "allow")
        shutil.copy(tmp / "keys" / "node.key", tmp / "nodes")
        shutil.copy(tmp / "keys" / "node.key", tmp / "allow")  # without --node-allow the node needs --allow
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for round_number in range(rounds):
            # Alternate which goes first: on a shared machine the second run of a pair tends to be slower.
            for node_allow in (False, True) if round_number % 2 == 0 else (True, False):
                rate, cpu_us = one_round(tmp, node_allow, requests)
                runs[node_allow].append((rate, cpu_us))
                label = "with" if node_allow else "without"
                print(f"{label} --node-allow: {rate:,.0f} requests/s, balancer {cpu_us:.1f} CPU us/request")
        for node_allow, got in runs.items():
            rate, cpu_us = (statistics.median(x) for x in zip(*got))
            label = "with" if node_allow else "without"
            print(f"median {label} --node-allow: {rate:,.0f} requests/s, balancer {cpu_us:.1f} CPU us/request")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
