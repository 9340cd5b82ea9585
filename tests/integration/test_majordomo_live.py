"""Majordomo (MDP/0.2) peers on a live balancer: the `majortomo` package's own Worker and Client, not a copy of ours.

Workers run as processes (tests/mdp_worker.py, so a test can kill one); the Client runs in the test's thread,
since it is no zlb process. docs/PROTOCOL.md ("Majordomo") has the mapping these check.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq
from majortomo import Client
from majortomo.error import Timeout

from tests.harness import Endpoints, LiveBalancer, Proc, ProcessGroup, scaled, start_balancer, timeout_arg, wait_until
from wire import control_client

WORKER = str(Path(__file__).resolve().parents[1] / "mdp_worker.py")


def start_worker(procs: ProcessGroup, endpoints: Endpoints, service: str, mode: str = "echo") -> Proc:
    """A majortomo Worker process offering `service` on the balancer's backend (tests/mdp_worker.py)."""
    name = f"mdp-{service}-{mode}-{len(procs.procs)}"
    return procs.start(name, endpoints.backend, service, mode, command=[sys.executable, WORKER])


def mdp_node(balancer: LiveBalancer, service: str) -> int:
    """The id of the live MDP worker node offering `service`, once the balancer lists it."""

    def found() -> int | None:
        for node_id, row in balancer.servers().items():
            if row["host"] == "mdp" and row["active"] and row["services"] == [service]:
                return node_id + 1  # truthy for node 0
        return None

    return wait_until(found, 15, f"an MDP worker for {service!r} to join") - 1


def status_of(balancer: LiveBalancer, client_id: int, request_id: int) -> str | None:
    try:
        return balancer.call("request", client_id=client_id, request_id=request_id)["status"]
    except control_client.ControlError:
        return None


def ask(client: Client, service: bytes, *body: bytes) -> list[bytes]:
    """One MDP request and its whole reply, as majortomo's Client receives it."""
    client.send(service, *body)
    return client.recv_all_as_list(timeout=scaled(10))


def sent_result(proc: Proc) -> dict[str, Any]:
    [line] = [line for line in proc.stdout().splitlines() if line.startswith("{")]
    return json.loads(line)


@pytest.mark.timeout(60)
def test_a_majortomo_worker_serves_zlb_send_and_mdp_clients(balancer: LiveBalancer, procs: ProcessGroup):
    """A majortomo Worker for mdp-echo joins as a node of that service (capacity 1, host mdp) and serves
    `zlb send --service mdp-echo`; a majortomo Client's request of two frames comes back as two frames, and a
    worker's PARTIAL replies reach the client with its FINAL."""
    endpoints = balancer.endpoints
    start_worker(procs, endpoints, "mdp-echo")
    start_worker(procs, endpoints, "mdp-parts", "parts")
    node_id = mdp_node(balancer, "mdp-echo")
    mdp_node(balancer, "mdp-parts")
    row = balancer.servers()[node_id]
    assert (row["capacity"], row["pid"], row["state"]) == (1, 0, "active")

    args = ("--client-id", "1", "--request-id", "1", "--service", "mdp-echo", "--payload", '{"x": 1}', "--json")
    sent = procs.run("send", *args, "--timeout", timeout_arg(20), timeout=30)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    result = json.loads(sent.stdout)
    assert (result["status"], result["server_id"], result["result"]["payload"]) == ("processed", node_id, {"x": 1})

    with Client(endpoints.frontend, zmq_linger=0) as client:
        assert ask(client, b"mdp-echo", b"x", b"", b"y") == [b"x", b"", b"y"]
        assert ask(client, b"mdp-parts", b"q") == [b"part-1", b"part-2", b"q"]
    assert balancer.servers()[node_id]["handled_requests"] == 2


@pytest.mark.timeout(60)
def test_a_majortomo_client_gets_the_reply_of_a_zlb_server(balancer: LiveBalancer, procs: ProcessGroup):
    """`zlb server --service echo --handler echo` answers a majortomo Client's request to service echo, listed as
    a zlb request of a client id the balancer gave (from 2**63 up); mmi.service says 200 for echo, 404 for a
    service no node offers, and other mmi services are 501. A client framed as RFC 18 writes it (no empty
    frame, REQUEST 0x01) is answered the same way."""
    balancer.start_server(0, "--service", "echo", "--handler", "echo")
    balancer.wait_servers_active({0})
    endpoints = balancer.endpoints
    with Client(endpoints.frontend, zmq_linger=0) as client:
        assert ask(client, b"echo", b"hello") == [b"hello"]
        assert ask(client, b"mmi.service", b"echo") == [b"200"]
        assert ask(client, b"mmi.service", b"nosuch") == [b"404"]
        assert ask(client, b"mmi.workers", b"echo") == [b"501"]
    [row] = [r for r in balancer.call("requests", limit=100) if r["client_id"] >= 2**63]
    assert (row["request_id"], row["status"], row["server_id"], row["service"]) == (1, "processed", 0, "echo")

    ctx = zmq.Context.instance()
    bare = ctx.socket(zmq.DEALER)
    bare.setsockopt(zmq.LINGER, 0)
    bare.setsockopt(zmq.RCVTIMEO, int(scaled(10) * 1000))
    try:
        bare.connect(endpoints.frontend)
        bare.send_multipart([b"MDPC02", b"\x01", b"echo", b"rfc"])
        assert bare.recv_multipart() == [b"MDPC02", b"\x03", b"echo", b"rfc"]
    finally:
        bare.close()


@pytest.mark.timeout(60)
def test_killing_the_mdp_worker_mid_request_requeues_it(balancer: LiveBalancer, procs: ProcessGroup):
    """An MDP worker killed -9 while it runs a request is dead at once (its connection closed), and the request
    goes back to the queue and runs on the next worker of its service: the sender gets it, attempt 2."""
    endpoints = balancer.endpoints
    held = start_worker(procs, endpoints, "mdp-slow", "hold")
    first = mdp_node(balancer, "mdp-slow")
    args = ("--client-id", "2", "--request-id", "1", "--service", "mdp-slow", "--json", "--timeout", timeout_arg(30))
    sender = procs.start("send", "send", *args)
    wait_until(lambda: "running 1" in held.stdout(), 15, "the worker to take the request")
    procs.kill9(held)
    wait_until(lambda: balancer.servers()[first]["state"] == "dead", 5, "the killed worker to be declared dead")
    assert status_of(balancer, 2, 1) in ("pending", "assigned")  # re-queued (assigned only once a worker is back)
    start_worker(procs, endpoints, "mdp-slow")
    second = mdp_node(balancer, "mdp-slow")
    assert sender.wait(20) == 0, sender.stdout() + sender.stderr()
    result = sent_result(sender)
    assert (result["status"], result["server_id"], result["attempts"]) == ("processed", second, 2)
    assert "requests re-queued" in procs.run("logs").stdout


@pytest.mark.timeout(60)
def test_a_worker_that_disconnects_leaves_and_one_that_still_runs_an_expired_request_gets_no_other(
    balancer: LiveBalancer, procs: ProcessGroup
):
    """DISCONNECT from a worker ends its node at once. A request that expires on a worker is taken from it, but
    MDP cannot stop a worker: it gets no other request until it answers, so the next one waits."""
    endpoints = balancer.endpoints
    once = start_worker(procs, endpoints, "mdp-once", "once")
    left = mdp_node(balancer, "mdp-once")
    sent = procs.run("send", "--client-id", "3", "--request-id", "1", "--service", "mdp-once", timeout=30)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert once.wait(10) == 0
    wait_until(lambda: balancer.servers()[left]["state"] == "dead", 5, "the worker that said DISCONNECT to leave")

    held = start_worker(procs, endpoints, "mdp-hold", "hold")
    node_id = mdp_node(balancer, "mdp-hold")
    expired = procs.run(
        "send", "--client-id", "3", "--request-id", "2", "--service", "mdp-hold", "--deadline-ms", "300"
    )
    assert expired.returncode != 0 and "expired" in expired.stdout, expired.stdout + expired.stderr
    assert "running 1" in held.stdout()
    procs.start("waits", "send", "--client-id", "3", "--request-id", "3", "--service", "mdp-hold")
    wait_until(lambda: status_of(balancer, 3, 3), 10, "the next request to arrive")
    assert status_of(balancer, 3, 3) == "pending"
    assert balancer.servers()[node_id]["state"] == "active"


@pytest.mark.timeout(60)
def test_an_mdp_client_is_not_answered_when_its_request_expires(procs: ProcessGroup, endpoints: Endpoints):
    """With --mdp-deadline-ms 300 a majortomo Client's request for a service no node offers expires; MDP has no
    error reply, so the client hears nothing (its own timeout decides), and zlb requests shows it expired."""
    balancer = start_balancer(procs, endpoints, 100, "--mdp-deadline-ms", "300")
    with Client(endpoints.frontend, zmq_linger=0) as client:
        client.send(b"nosuch", b"anyone?")

        def expired() -> bool:
            rows = [r for r in balancer.call("requests", limit=100) if r["client_id"] >= 2**63]
            return [(r["status"], r["service"]) for r in rows] == [("expired", "nosuch")]

        wait_until(expired, 10, "the MDP request to expire")
        with pytest.raises(Timeout):
            client.recv_part(timeout=0.5)


@pytest.mark.timeout(60)
def test_an_idle_worker_silent_past_its_liveness_is_dead(procs: ProcessGroup, endpoints: Endpoints):
    """An idle MDP worker stopped (SIGSTOP: its connection stands) is dead once silent for --liveness x
    --mdp-heartbeat-ms, and told DISCONNECT when it speaks again."""
    balancer = start_balancer(procs, endpoints, 100, "--mdp-heartbeat-ms", "400", liveness=10)  # 4 s of silence
    worker = start_worker(procs, endpoints, "mdp-idle")
    node_id = mdp_node(balancer, "mdp-idle")
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: balancer.servers()[node_id]["state"] == "dead", 10, "the silent worker to be dead")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # Its next HEARTBEAT comes from a route the balancer no longer knows: DISCONNECT, and majortomo's Worker
    # raises Disconnected out of wait_for_request (tests/mdp_worker.py then exits with the traceback).
    assert worker.wait(10) != 0 and "Disconnected" in worker.stderr()
