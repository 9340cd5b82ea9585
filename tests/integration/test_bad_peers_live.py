"""Peers that lie: absurd HELLO fields, a single-form DONE over the size limit, a payload no budget
could hold, and a burst of big payloads, against a real balancer on fresh loopback ports."""

from __future__ import annotations

import os
import secrets
import time

import pytest
import zmq

from client_node.client import Client
from tests.harness import scaled, start_balancer, wait_until
from wire import limits
from wire import protocol as p
from wire.protocol import MsgType


def raw(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"raw-{secrets.token_hex(6)}".encode())
    sock.connect(endpoint)
    return sock


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("pid", "host"),
    [(2**31, "h"), (-1, "h"), (7, "vm)\n03:00:00.000 Server 7 is dead"), (7, "x\x1b[2J")],
)
def test_a_hello_with_an_impossible_pid_or_a_host_with_control_characters_is_refused(balancer, pid, host):
    """Counted as bad input, never a node (a pid past 2**31 crashed a refused node's liveness check;
    a newline in a host forged a log line)."""
    sock = raw(balancer.endpoints.backend)
    try:
        sock.send_multipart([p.encode(MsgType.HELLO, 3, 1, pid, host, 1, 0), p.encode_tickets([])])
        wait_until(lambda: balancer.call("status")["bad_input"].get("backend.bad_fields", 0) >= 1, 10, "the refusal")
        assert balancer.servers() == {}
        lines = balancer.call("logs", limit=50)
        assert lines and not any("\n" in line or "\x1b" in line for line in lines)  # quoted, never a forged line
    finally:
        sock.close(linger=0)


@pytest.mark.timeout(60)
def test_a_single_form_done_over_the_limit_fails_its_request(procs, endpoints):
    """DONE with a body over --max-message-bytes fails the request saying why, like DONE_BATCH does."""
    start_balancer(procs, endpoints, 100, "--max-message-bytes", "100000")
    node = raw(endpoints.backend)
    try:
        node.send_multipart([p.encode(MsgType.HELLO, 0, 1, os.getpid(), "test", 1, 0), p.encode_tickets([])])
        with Client(endpoints.frontend, client_id=31) as client:
            pending = client.submit(b"work")
            assert node.poll(int(scaled(10) * 1000))
            frames = node.recv_multipart()
            while p.decode(frames[0])[0] is not MsgType.WORK_BATCH:  # WELCOME and PINGs first
                assert node.poll(int(scaled(10) * 1000))
                frames = node.recv_multipart()
            ticket = p.decode(frames[0])[1][0][0][0]
            node.send_multipart([p.encode(MsgType.DONE, ticket, True), b"r" * 500_000])
            result = pending.result(timeout=scaled(10))
        assert result.status == "failed" and b"result of 500000 bytes is over" in result.body
    finally:
        node.close(linger=0)


@pytest.mark.timeout(60)
def test_a_payload_over_the_whole_memory_budget_is_rejected_not_busy(procs, endpoints):
    """A payload no budget could ever hold is a final REJECTED, not "busy" for ever."""
    start_balancer(procs, endpoints, 100, "--max-memory-mb", "1")
    with Client(endpoints.frontend, client_id=32) as client:
        result = client.submit(b"x" * (2 * 1024 * 1024)).result(timeout=scaled(20))
    assert result.status == "rejected" and b"whole --max-memory-mb" in result.body
    assert client.busy_notices == 0


@pytest.mark.timeout(60)
def test_one_drain_takes_at_most_drain_bytes_of_payloads():
    """Three 20 MiB SUBMITs waiting: one frontend drain takes two (the second passes DRAIN_BYTES), so
    a burst of big payloads cannot hold the loop for seconds (it held 3.9 s and a node died). The
    frontend is inproc, where a send is in the receiver's queue when it returns: no race."""
    from tests.harness import balancer_in_process

    big = 20 * 1024 * 1024
    assert 2 * big > limits.DRAIN_BYTES > big
    with balancer_in_process(max_memory_bytes=None) as (balancer, sock):
        for request_id in range(3):
            sock.send_multipart([p.encode(MsgType.SUBMIT, 9, request_id, 5, 1), b"p" * big])
        balancer.client_side.drain(time.monotonic(), 256)
        assert balancer.sched.waiting == 2
        balancer.client_side.drain(time.monotonic(), 256)
        assert balancer.sched.waiting == 3
