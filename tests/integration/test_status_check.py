"""`zlb status --check` as a container probe (issue 25): silent exit 0 when the balancer answers, else non-zero soon;
and `zlb server-check`, the server nodes' probe, which reads the node's own --alive-file and asks no balancer.

`--leader` asks whether the balancer leads its --ha group; the balancer without --ha (all this checkout has)
names no role and counts as the leader, so a stand-in control socket plays the member that answers with one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from tests.harness import Endpoints, LiveBalancer, ProcessGroup, free_port, scaled, wait_until
from wire import protocol as p
from zlb.admin_cli import (
    CHECK_MIN_WAIT_S,
    CHECK_TIMEOUT_S,
    EXIT_NOT_LEADER,
    MAX_CHECK_TIMEOUT_S,
    leads,
    status,
)

# What the issue allows a probe against no balancer: non-zero within this many seconds, process start included.
PROBE_BOUND_S = 6.0


def test_check_is_silent_and_succeeds_against_a_live_balancer(balancer: LiveBalancer, procs: ProcessGroup) -> None:
    """Against a running balancer, --check and --check --leader exit 0 and print nothing at all."""
    for args in (("status", "--check"), ("status", "--check", "--leader")):
        done = procs.run(*args)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), args


@pytest.mark.parametrize("timeout_s", [None, MAX_CHECK_TIMEOUT_S])
def test_check_fails_within_the_bound_when_no_balancer_answers(
    procs: ProcessGroup, endpoints: Endpoints, timeout_s: float | None
) -> None:
    """With nothing listening on the control port, --check exits 1 once its --timeout, counted from the process's
    start, has passed, saying why on stderr: no curve diagnostic after it, and the start is not added to it."""
    flags = () if timeout_s is None else ("--timeout", f"{timeout_s:g}")
    expected_s = CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    started = time.monotonic()
    done = procs.run("status", "--check", *flags, timeout=PROBE_BOUND_S * 2)
    took = time.monotonic() - started
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"no answer from the balancer at {endpoints.control} within {expected_s:g} s" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert expected_s <= took < scaled(PROBE_BOUND_S), f"took {took:.1f} s"
    # The command's own start counts within --timeout: what is left over is its exit (and the start, when that
    # alone took longer than --timeout: then it still waits CHECK_MIN_WAIT_S for an answer).
    assert took < expected_s + CHECK_MIN_WAIT_S + scaled(1), f"took {took:.1f} s"


def test_process_age_counts_from_the_process_start() -> None:
    """process_age_s() in a fresh process: at least the time it spent sleeping, and not more than it lived."""
    pause = "time.sleep(0.3)"  # wait-ok: the child's age to measure, not a wait for anything
    code = f"import time; {pause}; from zlb.admin_cli import process_age_s; print(process_age_s())"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(20))
    lived = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    age = float(done.stdout)
    assert 0.3 <= age <= lived + 0.02  # starttime has clock-tick resolution (10 ms)


def _answer_status(reply: dict, *check_args: str) -> subprocess.CompletedProcess:
    """Run `zlb status --check ARGS` against a stand-in control socket that answers `status` with `reply`."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    control = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(control)
    probe = subprocess.Popen(
        [sys.executable, "-m", "zlb", "status", "--check", "--control", control, "--timeout", "5", *check_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sock.poll(int(scaled(10) * 1000)), "the probe never asked"
        route, request = sock.recv_multipart()
        assert p.decode_map(request)["cmd"] == "status"
        sock.send_multipart([route, p.encode_map({"ok": True, "result": reply})])
        out, err = probe.communicate(timeout=scaled(10))
        return subprocess.CompletedProcess(probe.args, probe.returncode, out, err)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait(5)
        sock.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    ("reply", "args", "code"),
    [
        ({"role": "leader"}, ("--leader",), 0),
        ({"role": "standby"}, ("--leader",), EXIT_NOT_LEADER),
        ({"role": "standby"}, (), 0),  # alive: what a liveness probe asks of either member
        ({}, ("--leader",), 0),  # no --ha: the one balancer leads
    ],
)
def test_leader_check_follows_the_role_in_the_status_reply(reply: dict, args: tuple[str, ...], code: int) -> None:
    """--check --leader exits 0 only for a reply whose role is leader or absent; --check alone for any reply."""
    done = _answer_status(reply, *args)
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert (done.stderr == "") == (code == 0)
    if code == EXIT_NOT_LEADER:
        assert "not the leader (role 'standby')" in done.stderr


def test_leads_reads_the_role_field() -> None:
    """A reply without a role is the leader's (no --ha); any other role than leader is not."""
    assert leads({}) and leads({"role": "leader"})
    assert not leads({"role": "standby"}) and not leads({"role": "candidate"})


def test_leader_without_check_and_a_long_check_are_usage_errors() -> None:
    """--leader needs --check, and --check refuses to wait beyond 5 s (a probe's time is bounded)."""
    runner = CliRunner()
    alone = runner.invoke(status, ["--leader"])
    assert alone.exit_code == 2 and "--leader goes with --check" in alone.output
    long = runner.invoke(status, ["--check", "--timeout", "9"])
    assert long.exit_code == 2 and "--check waits at most 5 s" in long.output


def _server_check(procs: ProcessGroup, alive: Path, *flags: str) -> tuple[int, str]:
    done = procs.run("server-check", "--alive-file", str(alive), *flags)
    assert done.stdout == ""
    return done.returncode, done.stderr


def test_a_node_is_alive_without_a_balancer_and_dead_when_stopped(procs: ProcessGroup, tmp_path: Path) -> None:
    """With no balancer, a node is alive (a balancer outage restarts no node) but not joined; SIGSTOPped, it
    stops writing its --alive-file and fails the check; SIGCONT, it passes again."""
    alive = tmp_path / "node.alive"
    node = procs.start("server", "server", "--alive-file", str(alive))
    wait_until(lambda: _server_check(procs, alive)[0] == 0, 20, "the node's first sign of life")
    code, said = _server_check(procs, alive, "--joined")
    assert code == 1 and "has not joined a balancer" in said
    os.kill(node.pid, signal.SIGSTOP)
    try:
        stale = lambda: _server_check(procs, alive, "--max-age", "2")[0] == 1  # noqa: E731
        wait_until(stale, 20, "the stopped node's check to fail")
        code, said = _server_check(procs, alive, "--max-age", "2")
        assert code == 1 and "its loop does not run" in said
    finally:
        os.kill(node.pid, signal.SIGCONT)
    wait_until(lambda: _server_check(procs, alive, "--max-age", "2")[0] == 0, 20, "the resumed node's check")


def test_a_node_that_joined_is_ready(balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path) -> None:
    """--joined passes once the balancer took the node in; a file nobody keeps fails, saying why."""
    alive = tmp_path / "node.alive"
    balancer.start_server(None, "--alive-file", str(alive))
    wait_until(lambda: _server_check(procs, alive, "--joined") == (0, ""), 20, "the node to join")
    code, said = _server_check(procs, tmp_path / "nobody.alive")
    assert code == 1 and "cannot read" in said
