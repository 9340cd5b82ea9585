"""`zlb status --check` as a container probe (issue 25): silent exit 0 when the balancer answers, else non-zero soon.

`--leader` asks whether the balancer leads its --ha group; the balancer without --ha (all this checkout has)
names no role and counts as the leader, so a stand-in control socket plays the member that answers with one.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import zmq
from click.testing import CliRunner

from tests.harness import Endpoints, LiveBalancer, ProcessGroup, free_port, scaled
from wire import protocol as p
from zlb.admin_cli import CHECK_TIMEOUT_S, EXIT_NOT_LEADER, leads, status

# What the issue allows a probe against no balancer: non-zero within this many seconds, process start included.
PROBE_BOUND_S = 6.0


def test_check_is_silent_and_succeeds_against_a_live_balancer(balancer: LiveBalancer, procs: ProcessGroup) -> None:
    """Against a running balancer, --check and --check --leader exit 0 and print nothing at all."""
    for args in (("status", "--check"), ("status", "--check", "--leader")):
        done = procs.run(*args)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), args


def test_check_fails_within_the_bound_when_no_balancer_answers(procs: ProcessGroup, endpoints: Endpoints) -> None:
    """With nothing listening on the control port, --check exits 1 within its timeout, saying why on stderr."""
    started = time.monotonic()
    done = procs.run("status", "--check", timeout=PROBE_BOUND_S * 2)
    took = time.monotonic() - started
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"no answer from the balancer at {endpoints.control} within {CHECK_TIMEOUT_S:g} s" in done.stderr
    assert CHECK_TIMEOUT_S <= took < scaled(PROBE_BOUND_S), f"took {took:.1f} s"


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
