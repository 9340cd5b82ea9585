"""Memory under pressure, measured on a live balancer's RSS from /proc.

A client that submits without ever reading its results, big payloads from
several clients at once, and a burst of garbage on every socket: the
balancer's resident memory stays within its budget plus a fixed allowance,
every request is answered, other clients are served meanwhile, and every bad
message is counted.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from balancer.budget import DEFAULT_MAX_MEMORY_MB
from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from tests.reliability.measure_memory import measure
from wire import limits
from wire import protocol as p
from wire.protocol import MsgType

MIB = 2**20
# Beyond the budget with big payloads, as issue 20 asked: what is left once nothing big arrives unasked
# and result room is charged from admission (protocol version 7) is the base and libzmq's own buffers.
BIG_ALLOWANCE_MB = 48


def rss(pid: int) -> int:
    """Resident set size of a process in bytes, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's RSS whenever asked and keeps the highest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = rss(pid)
        self.peak = self.base

    def sample(self) -> int:
        now = rss(self.pid)
        self.peak = max(self.peak, now)
        return now

    def sampling(self, predicate: Callable[[], bool]) -> Callable[[], bool]:
        """`predicate`, sampling the RSS on each call (for wait_until)."""

        def check() -> bool:
            self.sample()
            return predicate()

        return check


def flood_without_reading(
    balancer: LiveBalancer, count: int, peak: PeakRss, payload: bytes = json_payload(0, "x" * 1000)
) -> zmq.Socket:
    """Submit `count` requests (of about 1 KiB unless told) from a raw DEALER that never reads; return the socket."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10)  # never read: its pipe and then TCP fill, and the balancer's send says EAGAIN
    sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a blocked send fails the test instead of hanging it
    sock.connect(balancer.endpoints.frontend)
    sock.send(p.encode(MsgType.CLIENT_HELLO, 1, 77, os.getpid(), "flooder"))
    for rid in range(count):
        sock.send_multipart([p.encode(MsgType.SUBMIT, 1, rid, 5, 77), payload])
        if rid % 10_000 == 0:
            peak.sample()
    return sock


def run_non_reading_client(procs: ProcessGroup, endpoints: Endpoints, budget_mb: int, count: int) -> None:
    balancer = start_balancer(procs, endpoints, 100, "--max-memory-mb", str(budget_mb))
    balancer.start_server(1)
    balancer.start_server(2)
    balancer.wait_servers_active({1, 2}, timeout=15)
    peak = PeakRss(balancer.proc.pid)
    sock = flood_without_reading(balancer, count, peak)
    try:
        # The flood is in: wait until the balancer has read all of it (each submit is counted one way or another).
        # Its results pile up unread until the balancer pauses it; on a fast machine the reading can finish
        # before the nodes have answered enough to fill the pipe, so both are waited for.
        seen: dict = {}

        def all_read_and_paused() -> bool:
            seen.update(balancer.call("status"))
            c = seen["requests"]
            return c["submitted"] + c["busy"] >= count and seen["paused_clients"] == 1

        wait_until(peak.sampling(all_read_and_paused), 120, f"the balancer to read {count} submits and pause it")
        status = seen
        assert status["requests"]["busy"] > 0, status["requests"]
        assert status["memory"]["held_bytes"] <= budget_mb * MIB, status["memory"]
        # Another client is served meanwhile.
        with Client(endpoints.frontend, client_id=2, retry_s=1.0) as other:
            pending = [other.submit(json_payload(0, i), request_id=i) for i in range(10)]
            results = [r.result(timeout=30) for r in pending]
            peak.sample()
        assert [r.value()["echo"] for r in results] == list(range(10))
        assert all(r.ok for r in results)
    finally:
        sock.close(linger=0)
    limit = peak.base + (budget_mb + 100) * MIB
    print(
        f"non-reading client: {count} x 1 KiB, budget {budget_mb} MiB: RSS base {peak.base / MIB:.0f} MiB,"
        f" peak {peak.peak / MIB:.0f} MiB; held {status['memory']['held_bytes'] / MIB:.1f} MiB,"
        f" busy {status['requests']['busy']}, submitted {status['requests']['submitted']}"
    )  # for -s runs
    assert peak.peak < limit, f"RSS peaked at {peak.peak / MIB:.0f} MiB, base {peak.base / MIB:.0f} MiB"


@pytest.mark.timeout(180)
def test_a_client_that_never_reads_is_paused_within_its_budget_and_others_are_served(
    procs: ProcessGroup, endpoints: Endpoints
):
    """40,000 x 1 KiB from a client that never reads under a 16 MiB budget: RSS bounded, another client served."""
    run_non_reading_client(procs, endpoints, 16, 40_000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_hundred_thousand_unread_requests_under_a_64_mb_budget(procs: ProcessGroup, endpoints: Endpoints):
    """Issue 10's figure: 200,000 x 1 KiB never read, --max-memory-mb 64: RSS under base + 164 MiB."""
    run_non_reading_client(procs, endpoints, 64, 200_000)


@pytest.mark.timeout(180)
def test_big_results_a_client_never_reads_count_against_its_share(procs: ProcessGroup, endpoints: Endpoints):
    """300 x 1 MiB from a client that never reads, --max-memory-mb 16: its results waiting in libzmq's pipe
    count as unsent until they leave, so it is answered busy instead of piling them up; RSS stays under
    base + 16 + 32 MiB (1aa9471 ran 64 of 200 and went 41 -> 106 MiB, counting no unsent bytes)."""
    balancer = start_balancer(procs, endpoints, 100, "--max-memory-mb", "16")
    for node_id in (1, 2):
        balancer.start_server(node_id, "--handler", "echo")
    balancer.wait_servers_active({1, 2}, timeout=15)
    balancer.call("status")  # the control path warm before the base is taken
    peak = PeakRss(balancer.proc.pid)
    sock = flood_without_reading(balancer, 300, peak, payload=b"b" * MIB)
    try:

        def all_read_and_run() -> bool:
            status = balancer.call("status")
            c = status["requests"]
            return c["submitted"] + c["busy"] >= 300 and not status["in_flight"] and not status["queue_depth"]

        wait_until(peak.sampling(all_read_and_run), 120, "the balancer to read and run 300 submits")
        status = balancer.call("status")
    finally:
        sock.close(linger=0)
    print(
        f"big unread results: RSS base {peak.base / MIB:.0f} MiB, peak {peak.peak / MIB:.0f} MiB;"
        f" memory {status['memory']}, submitted {status['requests']['submitted']}, busy {status['requests']['busy']}"
    )  # for -s runs
    assert status["memory"]["unsent_bytes"] > 0, status["memory"]  # its results, waiting in the pipe, counted
    assert status["requests"]["busy"] > 0, status["requests"]
    assert peak.peak - peak.base < (16 + 32) * MIB, f"RSS {peak.base / MIB:.0f} -> {peak.peak / MIB:.0f} MiB"


@pytest.mark.timeout(120)
def test_a_big_request_holds_room_for_its_result_through_its_nodes_death(procs: ProcessGroup, endpoints: Endpoints):
    """A big request counts its payload and room for its result as big from its admission (limits.request_cost),
    through the death of the node running it and its wait in the queue, until it finishes on another node;
    then the budget holds nothing but the kept result."""
    balancer = start_balancer(procs, endpoints, 100)
    stuck = balancer.start_server(1)  # `simulate` sleeps the payload's cost_ms on a handler thread
    balancer.wait_servers_active({1}, timeout=15)
    payload = json_payload(600_000, "x" * 40_000)  # over LONE_PAYLOAD_BYTES: WORK in a frame of its own

    def memory() -> dict[str, int]:
        return balancer.call("status")["memory"]

    with Client(endpoints.frontend, client_id=5, retry_s=None) as client:
        pending = client.submit(payload, request_id=1)
        wait_until(lambda: balancer.call("status")["in_flight"] == 1, 15, "the request running")
        assert memory()["live_bytes"] == limits.request_cost(len(payload))
        procs.kill9(stuck)
        wait_until(lambda: balancer.call("status")["queue_depth"] == 1, 15, "the request back in the queue")
        assert memory()["live_bytes"] == limits.request_cost(len(payload))
        balancer.start_server(2, "--handler", "echo")
        result = pending.result(timeout=30)
    assert result.ok and result.body == payload
    wait_until(lambda: memory()["unsent_bytes"] == 0, 10, "the result gone from the client's pipe")
    left = memory()
    assert left["live_bytes"] == 0 and left["held_bytes"] == left["kept_bytes"], left


def run_big_payloads(
    workdir: Path, budget_mb: int | None, payload_mb: int, bound_mb: int, max_busy: int | None = None
) -> None:
    """Four client processes, each submitting four payloads of `payload_mb` at once, through two echo nodes:
    all sixteen come back right; the balancer's RSS, sampled from /proc all along, stays under base + bound_mb
    and is back within the budget once the results are in; at most `max_busy` submits were refused busy."""
    m = measure(workdir, budget_mb, payload_mb, clients=4, per_client=4, nodes=2)
    print(f"big payloads: {m.summary(bound_mb)}")  # for -s runs
    assert m.results_right == 16, m.clients
    assert m.peak - m.base < bound_mb * MIB, m.summary(bound_mb)
    if max_busy is not None:
        assert m.status["requests"]["busy"] <= max_busy, m.summary(bound_mb)
    budget = (budget_mb or DEFAULT_MAX_MEMORY_MB) * MIB
    assert m.after - m.base < budget + 16 * MIB, m.summary(bound_mb)  # what the budget keeps, and little else


@pytest.mark.timeout(360)
def test_big_payloads_from_four_clients_stay_within_the_budget_and_are_not_sent_on_chance(tmp_path: Path):
    """--max-memory-mb 64, four clients x four 16 MiB payloads: all 16 back, RSS under base + 64 + 48 MiB
    (issue 20's bound), and hardly a busy answer.

    Issue 20 saw 55 -> 240 MB: each payload and result copied on its way in and out, results a
    client's pipe still held no longer counted, and freed buffers kept by glibc. What was left over the
    budget (+112 and +119 MiB under load) were payloads sent on chance, refused busy once they had
    arrived: each of four clients starting together heard the share of a client alone, and a payload
    bigger than a window went whenever nothing was out. Now clients saying hello together share the
    budget, and a payload over its client's window waits for room reserved for it (balancer/credit.py).
    A busy answer or two remain possible: a window told just before another client said hello."""
    run_big_payloads(tmp_path, 64, 16, 64 + BIG_ALLOWANCE_MB, max_busy=4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_64_mb_payloads_under_the_default_budget(tmp_path: Path):
    """The default budget (256 MiB), four clients x four 64 MiB payloads: all 16 back, RSS under base + 256 + 48
    MiB, hardly a busy answer.

    Issue 20 saw 430 MB; the same run on 1aa9471 peaked at +1,668 and +1,698 MiB over base, and before
    protocol version 7 at +241 to +465 MiB with up to 9 busy answers."""
    run_big_payloads(tmp_path, None, 64, DEFAULT_MAX_MEMORY_MB + BIG_ALLOWANCE_MB, max_busy=4)


def garbage(rng: random.Random) -> list[bytes]:
    """A message no socket can accept: a never-used msgpack byte, a wrong version or an unknown type."""
    kind = rng.randrange(4)
    tail = rng.randbytes(rng.randrange(48))
    if kind == 0:
        return [b"\xc1" + tail]
    if kind == 1:
        return [p.encode(MsgType.SUBMIT, 1, 2, 3)[:3] + b"\xc1", tail]  # truncated, then garbage
    if kind == 2:
        return [b"\x93\x63\x02\xc1", tail]  # protocol version 99
    return [b"x" * (limits.MAX_HEADER_BYTES + 1 + rng.randrange(64))]


def fuzz_burst(balancer: LiveBalancer, per_socket: int, peak: PeakRss) -> int:
    """Send `per_socket` garbage messages to the frontend, backend and control; return how many were sent."""
    ctx = zmq.Context.instance()
    rng = random.Random(10)
    ends = balancer.endpoints
    socks = []
    for ep in (ends.frontend, ends.backend, ends.control):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 20_000)  # the balancer's receive pipe pushes back; never hang
        sock.setsockopt(zmq.RCVHWM, 10)  # replies are never read
        sock.connect(ep)
        socks.append(sock)
    try:
        for i in range(per_socket):
            for sock in socks:
                sock.send_multipart(garbage(rng))
            if i % 10_000 == 0:
                peak.sample()

        def all_counted() -> bool:
            return sum(balancer.call("status")["bad_input"].values()) >= 3 * per_socket

        wait_until(peak.sampling(all_counted), 120, f"{3 * per_socket} bad messages counted")
    finally:
        for sock in socks:
            sock.close(linger=0)
    return 3 * per_socket


def run_fuzz_burst(procs: ProcessGroup, endpoints: Endpoints, per_socket: int) -> None:
    balancer = start_balancer(procs, endpoints, 100)
    balancer.call("status")  # the control path is warm before the base is taken
    peak = PeakRss(balancer.proc.pid)
    sent = fuzz_burst(balancer, per_socket, peak)
    bad = balancer.call("status")["bad_input"]
    assert sum(bad.values()) == sent, bad  # every one counted, once
    assert "internal_error" not in " ".join(bad), bad
    after = peak.sample()
    print(
        f"garbage burst: {sent} messages: RSS {peak.base / MIB:.0f} MiB before, peak {peak.peak / MIB:.0f},"
        f" {after / MIB:.0f} after"
    )  # for -s runs
    assert after - peak.base < 40 * MIB, (
        f"RSS {after / MIB:.0f} MiB after the burst, {peak.base / MIB:.0f} MiB before (peak {peak.peak / MIB:.0f})"
    )
    assert balancer.proc.popen.poll() is None


@pytest.mark.timeout(120)
def test_a_garbage_burst_leaves_nothing_behind(procs: ProcessGroup, endpoints: Endpoints):
    """30,000 garbage messages over frontend, backend and control: all counted, RSS back within 40 MiB."""
    run_fuzz_burst(procs, endpoints, 10_000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_hundred_thousand_garbage_messages_leave_nothing_behind(procs: ProcessGroup, endpoints: Endpoints):
    """Issue 10's figure: 300,000 garbage messages, RSS within 40 MiB of before, every one counted."""
    run_fuzz_burst(procs, endpoints, 100_000)
