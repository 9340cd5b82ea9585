"""A newcomer's first runs: each failure names its cause, each process says what it is, nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness import Endpoints, ProcessGroup, scaled, start_balancer, wait_until
from zlb.cli import main


@pytest.fixture
def state_home(procs: ProcessGroup, tmp_path: Path) -> Path:
    """Point XDG_STATE_HOME of every process this test starts under tmp_path, where the default log goes."""
    home = tmp_path / "state"
    procs.env["XDG_STATE_HOME"] = str(home)
    return home


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback TCP port something else listens on for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def zombie(pid: int) -> bool:
    """True while `pid` is a dead child nobody has reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][0] == "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(40)
def test_cluster_with_the_frontend_port_taken_names_the_frontend_and_the_cause(
    procs: ProcessGroup, endpoints: Endpoints, held_port: int, state_home: Path
):
    """`zlb cluster` whose frontend port is in use ends non-zero with the balancer's own words about that endpoint."""
    frontend = f"tcp://127.0.0.1:{held_port}"
    started = time.monotonic()
    done = procs.run("cluster", "--frontend", frontend, timeout=30)
    assert done.returncode != 0
    assert time.monotonic() - started < scaled(20)
    assert frontend in done.stderr and "Address already in use" in done.stderr, done.stderr
    assert endpoints.control not in done.stderr, "the control endpoint is not the culprit"
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(40)
def test_cluster_http_on_a_taken_port_ends_quickly_saying_so(procs: ProcessGroup, held_port: int, state_home: Path):
    """`zlb cluster --http PORT` with PORT in use ends within 15 s, non-zero, saying the port is in use."""
    started = time.monotonic()
    done = procs.run("cluster", "--http", str(held_port), timeout=30)
    assert time.monotonic() - started < scaled(15)
    assert done.returncode != 0
    assert f"port {held_port} is in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (state_home / "zlb" / "balancer.log").exists(), "nothing was started"


@pytest.mark.timeout(60)
def test_plain_cluster_ends_when_its_clients_are_done_and_logs_outside_the_working_directory(
    procs: ProcessGroup, state_home: Path
):
    """Plain `zlb cluster` ends like the README's example; its log goes to the state directory, not the cwd."""
    done = procs.run("cluster", "--cost-ms", "50", "--heartbeat-ms", "200", timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("All 2 clients finished: 4 requests sent, 0 clients failed.")
    assert "keeps running" not in done.stdout
    assert "client-" not in done.stderr, "clients that finish well are not reported as deaths"
    log = state_home / "zlb" / "balancer.log"
    assert "✅ Request 101 assigned to Server" in log.read_text(encoding="utf-8")
    assert not list(procs.workdir.glob("*balancer*.log")), list(procs.workdir.iterdir())


@pytest.mark.timeout(60)
def test_cluster_reaps_a_killed_node_at_once_and_says_so(procs: ProcessGroup, state_home: Path):
    """A node killed with kill -9 under `zlb cluster --stay` is reaped (no <defunct>) and reported on stderr."""
    cluster = procs.start("cluster", "cluster", "--servers", "2", "--clients", "0", "--heartbeat-ms", "100", "--stay")
    table = wait_until(lambda: servers_with_pids(procs, {0, 1}), 20, "two nodes with pids")
    victim = table[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"server-1 (pid {victim}) was killed by signal 9" in cluster.stderr(), 5, "the report")
    assert not zombie(victim)
    assert cluster.popen.poll() is None, "losing a node does not end the cluster"
    cluster.popen.send_signal(signal.SIGINT)
    assert cluster.wait(15) == 0


def servers_with_pids(procs: ProcessGroup, ids: set[int]) -> dict[int, int] | None:
    """{server id: pid} once every id in `ids` is active, else None."""
    done = procs.run("servers", "--json")
    if done.returncode != 0:
        return None
    table = {s["server_id"]: s for s in json.loads(done.stdout)}
    if not all(i in table and table[i]["active"] for i in ids):
        return None
    return {i: table[i]["pid"] for i in ids}


@pytest.mark.timeout(40)
def test_balancer_and_server_say_what_they_run_and_that_they_stopped(procs: ProcessGroup, endpoints: Endpoints):
    """`zlb balancer` and `zlb server` print a start line (endpoints, pid) and, at SIGTERM or Ctrl-C, `stopped`."""
    live = start_balancer(procs, endpoints, 100)
    node = live.start_server(4)
    live.wait_servers_active({4})
    wait_until(lambda: "connecting to" in node.stderr(), 5, "the node's start line")
    start = live.proc.stderr().splitlines()[0]
    assert f"pid {live.proc.pid}" in start and endpoints.frontend in start and endpoints.control in start, start
    assert f"zlb server (pid {node.pid}, id 4): connecting to {endpoints.backend}" in node.stderr()
    node.popen.send_signal(signal.SIGINT)
    assert node.wait(10) == 0
    assert node.stderr().rstrip().endswith(f"zlb server (pid {node.pid}, id 4) stopped")
    live.proc.popen.send_signal(signal.SIGTERM)
    assert live.proc.wait(10) == 0
    assert live.proc.stderr().rstrip().endswith(f"zlb balancer (pid {live.proc.pid}) stopped")


@pytest.mark.timeout(40)
def test_plain_monitor_without_a_balancer_keeps_saying_it_waits_then_follows(procs: ProcessGroup, endpoints: Endpoints):
    """`zlb monitor --plain` with no balancer says it is waiting, again and again, then follows one that starts."""
    mon = procs.start("monitor", "monitor", "--plain")
    waiting = f"waiting for the balancer at {endpoints.control}…"
    wait_until(lambda: mon.stderr().count(waiting) >= 2, 15, "two waiting lines")
    live = start_balancer(procs, endpoints, 100)
    wait_until(lambda: "answers; following its events" in mon.stderr(), 15, "the balancer's return")
    live.call("configure", servers=1, clients=1)
    wait_until(lambda: "System configured with 1 servers and 1 clients." in mon.stdout(), 10, "a followed line")
    assert "stats" not in mon.stdout()


def test_balancer_help_states_where_the_log_goes():
    """`zlb balancer --help` names the default log file in the state directory and how to turn it off."""
    done = CliRunner().invoke(main, ["balancer", "--help"])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "$XDG_STATE_HOME/zlb/balancer.log" in text and "'' for none" in text


@pytest.mark.timeout(60)
def test_send_and_client_without_a_balancer_end_naming_the_endpoint(procs: ProcessGroup, endpoints: Endpoints):
    """With nothing listening, zlb send and zlb client end within 10 s, non-zero, naming the endpoint they tried:
    the frontend, or for zlb client without --first-request-id the control endpoint it asks for unused ids."""
    for args, endpoint in (
        (("send", "--client-id", "1", "--request-id", "1"), endpoints.frontend),
        (("client", "--id", "1", "--requests", "3", "--first-request-id", "1"), endpoints.frontend),
        (("client", "--id", "1", "--requests", "3"), endpoints.control),
    ):
        started = time.monotonic()
        done = procs.run(*args, timeout=15)
        assert time.monotonic() - started < scaled(10)
        assert done.returncode != 0
        assert f"no answer from the balancer at {endpoint}" in done.stderr, done.stderr
