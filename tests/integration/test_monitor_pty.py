"""End to end: watching a live cluster — the `zlb monitor` dashboard in a pty, plain output, logs and status."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import LiveBalancer, ProcessGroup, free_port, scaled, start_balancer, timeout_arg, wait_until
from tests.integration.test_cluster_failover import alive

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


@dataclass
class PtyProcess:
    """A process whose terminal is a pty we read from."""

    popen: subprocess.Popen
    master: int
    output: bytearray = field(default_factory=bytearray)

    def read_available(self) -> None:
        """Read whatever the process has written so far, without blocking."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def screen_text(self) -> str:
        """Everything written, with terminal control sequences removed."""
        self.read_available()
        return ANSI.sub("", self.output.decode("utf-8", "replace"))

    def exited(self) -> bool:
        """True once the process has ended; drains its output meanwhile so it never blocks on a full pty."""
        self.read_available()
        return self.popen.poll() is not None

    def latest_frame(self) -> str:
        """The text of the most recently drawn frame (rich homes the cursor before each)."""
        self.read_available()
        text = self.output.decode("utf-8", "replace")
        return ANSI.sub("", text.rsplit("\x1b[H", 1)[-1])


def stop_group(proc: PtyProcess) -> None:
    """Stop a pty process and everything it started (its own session's process group), then close the pty."""
    if proc.popen.poll() is None:
        os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(scaled(10))
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(5)
    os.close(proc.master)


def start_in_pty(env: dict[str, str], cwd: Path, *args: str, cols: int = 80, rows: int = 24) -> PtyProcess:
    """Run `zlb ARGS` in `cwd` with a pty of `cols` x `rows` as its terminal (its state directory there too)."""
    state = cwd / "state"  # not cwd itself: a `zlb` folder in cwd would shadow the package for `python -m zlb`
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    popen = subprocess.Popen(
        [sys.executable, "-m", "zlb", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows), "XDG_STATE_HOME": str(state)},
        cwd=cwd,
        start_new_session=True,
    )
    os.close(slave)
    return PtyProcess(popen, master)


@pytest.fixture
def monitor_pty(procs: ProcessGroup) -> Iterator[PtyProcess]:
    """`zlb monitor` on an 80x24 pseudo-terminal, stopped by PID afterwards (list the balancer fixture first)."""
    proc = start_in_pty(procs.env, procs.workdir, "monitor")
    try:
        yield proc
    finally:
        stop_group(proc)


@pytest.mark.timeout(40)
def test_dashboard_shows_nodes_and_a_killed_node_turns_dead(
    watchful_balancer: LiveBalancer, procs: ProcessGroup, monitor_pty: PtyProcess
):
    """On a terminal the monitor draws the dashboard; after kill -9 the node shows dead; SIGTERM exits cleanly."""
    balancer = watchful_balancer
    balancer.start_server(0)
    victim = balancer.start_server(1)
    balancer.wait_servers_active({0, 1})
    wait_until(lambda: "2/2 servers active" in monitor_pty.screen_text(), 15, "the dashboard to show two nodes")
    frame = monitor_pty.latest_frame()
    assert "zlb monitor" in frame and "IN-FLIGHT" in frame and "Rate" in frame
    procs.kill9(victim)
    dead = balancer.silence_s + 10
    wait_until(lambda: "Server 1 is dead" in monitor_pty.screen_text(), dead, "the node's death in the log pane")
    wait_until(lambda: "1/2 servers active" in monitor_pty.latest_frame(), 5, "the header to count one active node")
    assert re.search(r"^\s*1\s+dead\b", monitor_pty.latest_frame(), re.MULTILINE), monitor_pty.latest_frame()
    monitor_pty.popen.send_signal(signal.SIGTERM)
    assert monitor_pty.popen.wait(scaled(10)) == 0
    monitor_pty.read_available()
    assert b"\x1b[?1049l" in monitor_pty.output, "the alternate screen is left on exit"


def test_monitor_prints_plain_lines_when_piped(balancer: LiveBalancer, procs: ProcessGroup):
    """With stdout not a terminal, `zlb monitor` picks plain log lines by itself (no dashboard escape codes)."""
    mon = procs.start("monitor", "monitor")

    def seen() -> bool:
        balancer.call("configure", servers=1, clients=1)
        return "System configured with 1 servers and 1 clients." in mon.stdout()

    wait_until(seen, 10, "a plain log line from the monitor")
    assert "\x1b[" not in mon.stdout()


def test_logs_follow_prints_backlog_then_new_lines_once(balancer: LiveBalancer, procs: ProcessGroup):
    """`zlb logs --follow` prints the recent backlog, then each new event exactly once as it happens."""
    follower = procs.start("logs", "logs", "--follow", "--json")
    wait_until(lambda: '"kind": "system.started"' in follower.stdout(), 10, "the backlog")
    balancer.start_server(3)
    wait_until(lambda: '"kind": "node.joined"' in follower.stdout(), 10, "a followed event")
    kinds = [json.loads(line)["kind"] for line in follower.stdout().splitlines()]
    assert kinds.count("system.started") == 1
    assert kinds.count("node.joined") == 1


def test_status_reads_as_labelled_lines(balancer: LiveBalancer, procs: ProcessGroup):
    """`zlb status` prints uptime, totals, queue, rates, bad input, the log file and retention as labelled lines."""
    done = procs.run("status")
    assert done.returncode == 0, done.stderr
    headings = [line.split()[0] for line in done.stdout.splitlines()]
    # The balancer's own counters (journal figures apart) follow the bad-input line when there are any.
    counters = ["Counters"] if balancer.call("status")["counters"] else []
    assert headings == [
        "Balancer",
        "Endpoints",
        "Servers",
        "Queue",
        "In",
        "Services",
        "Dead",
        "Requests",
        "Rates",
        "Bad",
        *counters,
        "Log",
        "Retention",
    ]
    [retention] = [line for line in done.stdout.splitlines() if line.startswith("Retention")]
    assert "finished ones with their results for 300 s" in retention and "then their ids for 86400 s" in retention
    assert "Past the results: a re-sent id is answered 'processed earlier; the result is no longer kept'" in retention
    [log_line] = [line for line in done.stdout.splitlines() if line.startswith("Log")]
    assert log_line.rstrip().endswith("balancer.log")  # the file, and no DEGRADED after it


def test_client_shows_progress_on_a_terminal_and_plain_lines_in_a_pipe(balancer: LiveBalancer, procs: ProcessGroup):
    """`zlb client` with many requests draws a progress bar with a rate on a terminal; piped, it prints result lines."""
    balancer.start_server(0, "--capacity", "8")
    balancer.wait_servers_active({0})
    args = ("client", "--id", "1", "--requests", "300", "--timeout", timeout_arg(20))
    client = start_in_pty(procs.env, procs.workdir, *args)
    try:
        wait_until(client.exited, 25, "the client to finish")
        assert client.popen.returncode == 0
        text = client.screen_text()
        assert "req/s" in text
        assert "300 requests: 300 processed, 0 not" in text
    finally:
        stop_group(client)
    piped = procs.run("client", "--id", "2", "--requests", "60", "--timeout", timeout_arg(20))
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert len(lines) == 60 and all(" processed by Server 0 " in line for line in lines)
    assert "req/s" not in piped.stdout


@pytest.mark.timeout(40)
def test_dashboard_survives_a_balancer_restart_and_says_so(
    balancer: LiveBalancer, procs: ProcessGroup, monitor_pty: PtyProcess
):
    """When the balancer goes away the dashboard says it is unreachable and no node `active`; back, it restarted."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    wait_until(lambda: "1/1 servers active" in monitor_pty.latest_frame(), 15, "the dashboard to show the node")
    assert "● live" in monitor_pty.latest_frame()
    assert monitor_pty.latest_frame().count("reconnected") == 0, "the first contact is no reconnection"
    balancer.proc.popen.send_signal(signal.SIGTERM)
    assert balancer.proc.wait(10) == 0
    wait_until(lambda: "balancer unreachable at" in monitor_pty.latest_frame(), 10, "the unreachable notice")
    frame = monitor_pty.latest_frame()
    assert "● unreachable" in frame or "● balancer unreachable" in frame, frame
    assert re.search(r"^\s*0\s+unknown\b", frame, re.MULTILINE), frame
    assert not re.search(r"^\s*0\s+active\b", frame, re.MULTILINE), frame
    start_balancer(procs, balancer.endpoints, balancer.heartbeat_ms)
    wait_until(lambda: "state reloaded" in monitor_pty.latest_frame(), 10, "the restart notice")
    assert "● live" in monitor_pty.latest_frame()
    assert monitor_pty.popen.poll() is None


def post_json(url: str, body: dict) -> dict:
    """POST a JSON body and return the JSON answer."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
        return json.loads(reply.read())


@pytest.mark.timeout(40)
def test_cluster_http_is_the_seed_experience_in_one_command(procs: ProcessGroup):
    """`zlb cluster --http` serves the seed API and draws the dashboard; SIGTERM stops every process it started."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("cluster", "--http", str(port), "--heartbeat-ms", "100", "--cost-ms", "100")
    cluster = start_in_pty(procs.env, procs.workdir, *args)
    try:
        wait_until(lambda: f"REST API {url}" in cluster.latest_frame(), 20, "the dashboard")
        spec = {"num_servers": 1, "num_clients": 1, "requests_per_client": 2}
        assert post_json(f"{url}/configure", spec) == {"servers": 1, "clients": 1, "requests_per_client": 2}
        sent = post_json(f"{url}/send_request", {"client_id": 0, "request_id": 101, "priority": 1})
        assert sent == {"message": "Request 101 added successfully!"}
        wait_until(lambda: "1/1 servers active" in cluster.latest_frame(), 15, "the configured node on screen")
        wait_until(lambda: "Request 101 from Client 0 processed" in cluster.screen_text(), 15, "the request's result")
        with urllib.request.urlopen(f"{url}/servers", timeout=scaled(10)) as reply:
            (node,) = json.loads(reply.read())
        cluster.popen.send_signal(signal.SIGTERM)
        wait_until(cluster.exited, 20, "the cluster to stop")
        assert cluster.popen.returncode == 0
        assert not alive(node["pid"])
    finally:
        stop_group(cluster)
