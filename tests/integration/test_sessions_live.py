"""Sessions end to end: node identities are enforced on real processes, a client id is a name, and dropped
connections strand nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import zmq

from client_node.client import Client, json_payload
from tests.harness import (
    Endpoints,
    LiveBalancer,
    ProcessGroup,
    port_of,
    reset_connections,
    scaled,
    timeout_arg,
    wait_until,
)
from wire import protocol as p
from wire.protocol import MsgType


def nothing_left(balancer: LiveBalancer) -> bool:
    status = balancer.call("status")
    return status["queue_depth"] == 0 and status["in_flight"] == 0


@pytest.mark.timeout(120)
def test_connection_resets_under_a_live_node_strand_nothing(balancer: LiveBalancer):
    """2,000 paced requests over 3 nodes of capacity 8 while one node's connection is reset 8 times: all arrive.

    Each reset waits until the node has a connection to reset (on a busy machine its reconnection may
    not be back by the next reset's turn)."""
    servers = [balancer.start_server(i, "--capacity", "8") for i in range(3)]
    balancer.wait_servers_active({0, 1, 2})
    total, pace_s = 2000, 0.003
    resets_at = {int(total * (k + 1) / 9) for k in range(8)}
    resets = 0
    backend_port = port_of(balancer.endpoints.backend)
    with Client(balancer.endpoints.frontend, client_id=7) as client:
        start = time.monotonic()
        for i in range(total):
            client.submit(json_payload(20, {"n": i}), request_id=i + 1)
            if i in resets_at:
                wait_until(lambda: reset_connections(servers[1].pid, backend_port) > 0, 10, "a connection to reset")
                resets += 1
            client.pump(max(0.0, start + (i + 1) * pace_s - time.monotonic()))
        results = list(client.as_completed(timeout=scaled(60)))
    assert resets == 8
    assert len(results) == total and {r.request_id for r in results} == set(range(1, total + 1))
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    wait_until(lambda: nothing_left(balancer), 10, "no request left assigned or pending")
    assert balancer.call("requests", status="assigned") == [] and balancer.call("requests", status="pending") == []


@pytest.mark.timeout(60)
def test_a_fresh_socket_hello_requeues_what_the_old_socket_took(balancer: LiveBalancer):
    """A node that says HELLO again on a new socket, holding nothing, gets its lost work re-queued by its first
    heartbeat there (not by the HELLO: a DONE on the old socket may still come behind it)."""
    ctx = zmq.Context.instance()
    identity = b"node-test-fresh-socket"

    def dial(max_seen: int = 0) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(balancer.endpoints.backend)
        hello = p.encode(MsgType.HELLO, 4, 1, os.getpid(), "test", 99, max_seen)
        sock.send_multipart([hello, p.encode_tickets([])])
        assert sock.poll(int(scaled(5) * 1000)) and p.decode(sock.recv_multipart()[0])[0] is MsgType.WELCOME
        return sock

    first = dial()
    with Client(balancer.endpoints.frontend, client_id=3) as client:
        pending = client.submit(json_payload(0, "lost"), request_id=1)
        deadline = time.monotonic() + scaled(5)
        while True:  # skip PINGs until the WORK arrives
            assert first.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no WORK for the fake node"
            frames = first.recv_multipart()
            if p.decode(frames[0])[0] is MsgType.WORK_BATCH:
                break
        first.close(linger=0)
        [[ticket, *_]] = p.decode(frames[0])[1][0]
        second = dial(max_seen=ticket)  # saw that WORK, holds nothing
        try:
            assert balancer.call("status")["requests"]["lost_in_transit"] == 0  # its DONE may still come
            second.send_multipart([p.encode(MsgType.HEARTBEAT, 0, 0, 0, ticket), p.encode_tickets([])])
            # Counted, not seen as pending: the re-queued request may go straight back to the only node.
            wait_until(lambda: balancer.call("status")["requests"]["lost_in_transit"] == 1, 5, "requeue")
            balancer.start_server(0)
            assert pending.result(timeout=scaled(15)).ok
        finally:
            second.close(linger=0)
    assert balancer.call("status")["requests"]["lost_in_transit"] == 1


@pytest.mark.timeout(90)
def test_a_second_server_with_a_live_id_is_refused_and_nothing_flaps(balancer: LiveBalancer, procs: ProcessGroup):
    """A second `zlb server --id 1` exits non-zero naming the holder; a 200-request client beside them loses nothing."""
    first = balancer.start_server(1, "--capacity", "4")
    balancer.start_server(0, "--capacity", "4")
    balancer.wait_servers_active({0, 1})
    args = ("client", "--id", "4", "--requests", "200", "--cost-ms", "5", "--timeout", timeout_arg(60))
    client = procs.start("client", *args)
    second = balancer.start_server(1, "--capacity", "4")
    assert second.wait(15) != 0
    assert f"server id 1 is in use by pid {first.pid}" in second.stderr()
    assert client.wait(60) == 0, client.stderr()
    assert "200 requests" in client.stdout() or client.stdout().count("processed") == 200
    assert first.popen.poll() is None
    log = (procs.workdir / "balancer.log").read_text()
    assert log.count("Server 1 joined") <= 3


@pytest.mark.timeout(60)
def test_a_stalled_node_replaced_meanwhile_is_fenced_when_it_resumes(
    watchful_balancer: LiveBalancer, procs: ProcessGroup
):
    """SIGSTOP a node until it is dead, start another with its id, SIGCONT the first: it exits, replaced."""
    balancer = watchful_balancer
    old = balancer.start_server(1)
    balancer.wait_servers_active({1})
    os.kill(old.pid, signal.SIGSTOP)
    try:
        balancer.wait_dead(1)
        new = balancer.start_server(1)
        wait_until(lambda: balancer.servers()[1]["pid"] == new.pid, 10, "the new node holds id 1")
    finally:
        os.kill(old.pid, signal.SIGCONT)
    assert old.wait(10) != 0
    assert "replaced" in old.stderr() and f"pid {new.pid}" in old.stderr()
    assert balancer.servers()[1]["pid"] == new.pid and new.popen.poll() is None
    assert balancer.call("status")["counters"].get("fenced_messages", 0) >= 1


@pytest.mark.timeout(60)
def test_two_clients_with_one_id_both_run_and_never_share_results(
    balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path
):
    """Two `zlb client --id 5` started together: a client id is a name, so both run all their requests, each
    under request ids of its own (the balancer hands them out), and each prints only its own results.

    The node holds every request until the test opens its gate, so both clients are running at once,
    however far apart a busy machine starts them."""
    gate = tmp_path / "gate"
    balancer.start_server(0, "--capacity", "8", handler="gated", env={"ZLB_TEST_GATE": str(gate)})
    balancer.wait_servers_active({0})
    args = ("client", "--id", "5", "--requests", "20", "--json", "--timeout", timeout_arg(30))
    clients = procs.start("c1", *args), procs.start("c2", *args)
    wait_until(lambda: balancer.call("status")["requests"]["submitted"] == 40, 20, "both clients' requests in")
    assert all(c.popen.poll() is None for c in clients)
    gate.touch()
    sent: list[set[int]] = []
    for c in clients:
        assert c.wait(40) == 0, c.stderr()
        rows = [json.loads(line) for line in c.stdout().splitlines()]
        assert {row["status"] for row in rows} == {"processed"} and len(rows) == 20
        sent.append({row["request_id"] for row in rows})
    assert not sent[0] & sent[1] and sent[0] | sent[1] == set(range(1, 41))
    assert balancer.call("status")["requests"]["processed"] == 40


@pytest.mark.timeout(60)
def test_zlb_send_of_a_used_id_says_it_is_the_stored_result(balancer: LiveBalancer, procs: ProcessGroup):
    """Sending a used request id prints the stored result as such; another payload under it is refused."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    base = ("send", "--client-id", "1", "--request-id", "7", "--timeout", timeout_arg(10))
    fresh = procs.run(*base, "--payload", '"one"')
    assert fresh.returncode == 0 and "processed by Server 0" in fresh.stdout and "stored" not in fresh.stdout
    again = procs.run(*base, "--payload", '"one"')
    assert again.returncode == 0
    assert "already processed by Server 0" in again.stdout and "this is the stored result" in again.stdout
    other = procs.run(*base, "--payload", '"two"')
    assert other.returncode != 0 and "already used with another payload" in other.stdout
    assert balancer.call("status")["requests"]["processed"] == 1


@pytest.mark.timeout(60)
def test_sigterm_ends_a_node_with_a_stuck_handler_at_its_grace(balancer: LiveBalancer, procs: ProcessGroup):
    """A handler stuck for 60 s: SIGTERM ends the node within grace + 1 s and its request finishes elsewhere."""
    stuck = balancer.start_server(0, "--grace-s", "1", handler="stuck")
    balancer.wait_servers_active({0})
    with Client(balancer.endpoints.frontend, client_id=2) as client:
        pending = client.submit(json_payload(0, "x"), request_id=1)
        wait_until(lambda: balancer.servers()[0]["in_flight"] == 1, 10, "the stuck node holds the request")
        balancer.start_server(1)
        balancer.wait_servers_active({1})
        started = time.monotonic()
        stuck.popen.send_signal(signal.SIGTERM)
        stuck.wait(10)
        assert time.monotonic() - started <= 1 + scaled(1.0)
        result = pending.result(timeout=scaled(15))
    assert result.ok and result.server_id == 1


@pytest.mark.timeout(60)
def test_a_node_takes_the_balancers_heartbeat_and_never_flaps(
    watchful_balancer: LiveBalancer, procs: ProcessGroup
):
    """A node started with a slower heartbeat than the balancer's adopts the balancer's from WELCOME: one join.

    Its own 5 s would leave it silent five times the balancer's 1 s liveness; three liveness windows pass."""
    balancer = watchful_balancer
    node = procs.start("slow-node", "server", "--id", "0", "--heartbeat-ms", "5000")
    balancer.wait_servers_active({0})
    with Client(balancer.endpoints.frontend, client_id=9) as client:
        pendings = [client.submit(json_payload(0, i), request_id=i) for i in range(1, 21)]
        assert all(pending.result(timeout=scaled(20)).ok for pending in pendings)
    watch_until = time.monotonic() + 3 * balancer.silence_s
    while time.monotonic() < watch_until:
        assert balancer.servers()[0]["state"] == "active"
        time.sleep(0.05)  # wait-ok: the poll interval of a window the node must stay active through
    log = (procs.workdir / "balancer.log").read_text()
    assert log.count("Server 0 joined") == 1 and "Server 0 is dead" not in log
    assert node.popen.poll() is None


@pytest.mark.timeout(60)
def test_a_node_sends_no_heartbeat_until_it_is_welcomed(procs: ProcessGroup, endpoints: Endpoints):
    """Heartbeats sent while a HELLO waits reach the balancer behind it, in a burst just after its first WORK,
    each listing no ticket: that WORK counted as missing, was re-queued and ran twice (seen after a balancer
    restart, and possible whenever a busy balancer answers HELLO slowly). A node says HELLO, then nothing until
    WELCOME; welcomed, it beats."""
    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)  # a balancer's backend that takes its time to answer
    fake.setsockopt(zmq.LINGER, 0)
    fake.bind(endpoints.backend)
    try:
        procs.start("node", "server", "--id", "0", "--heartbeat-ms", "50", "--liveness", "100")
        assert fake.poll(int(scaled(15) * 1000)), "no HELLO from the node"
        route, header, *_ = fake.recv_multipart()
        assert p.decode(header)[0] is MsgType.HELLO
        assert not fake.poll(1000), "the node spoke before its WELCOME (twenty heartbeat intervals)"
        fake.send_multipart([route, p.encode(MsgType.WELCOME, 0, 50, 100, 1 << 20)])
        assert fake.poll(int(scaled(5) * 1000)), "no heartbeat once welcomed"
        assert p.decode(fake.recv_multipart()[1])[0] is MsgType.HEARTBEAT
    finally:
        fake.close(linger=0)
