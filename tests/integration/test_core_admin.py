"""End to end: monitor events, admin commands, restarts, bad input and CLI errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import zmq

from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, scaled, start_balancer, timeout_arg, wait_until
from tests.reliability.handlers import gate_payload
from wire import protocol as p
from wire.protocol import MsgType


def watch_monitor(balancer: LiveBalancer, procs: ProcessGroup, *flags: str):
    """Start `zlb monitor` and return it once its subscription is live."""
    mon = procs.start("monitor", "monitor", *flags)

    def configured_seen() -> bool:
        balancer.call("configure", servers=3, clients=2)  # each call publishes one event
        return "System configured with 3 servers and 2 clients." in mon.stdout()

    wait_until(configured_seen, 10, "the monitor to print the configure event")
    return mon


def test_monitor_shows_join_assignment_and_death(watchful_balancer: LiveBalancer, procs: ProcessGroup):
    """The plain monitor prints the seed's log lines live, including a node's death after kill -9."""
    balancer = watchful_balancer
    mon = watch_monitor(balancer, procs, "--plain")
    node = balancer.start_server(0)
    wait_until(lambda: "Server 0 joined" in mon.stdout(), 10, "join line")
    assert procs.run("send", "--client-id", "0", "--request-id", "101", "--priority", "1").returncode == 0
    wait_until(lambda: "Request 101 from Client 0 processed by Server 0" in mon.stdout(), 10, "processed line")
    out = mon.stdout()
    assert "Request 101 from Client 0 added to queue with priority 1" in out
    assert "✅ Request 101 assigned to Server 0" in out
    procs.kill9(node)
    wait_until(lambda: "Server 0 is dead" in mon.stdout(), balancer.silence_s + 5, "death line")


def test_monitor_json_prints_structured_events(balancer: LiveBalancer, procs: ProcessGroup):
    """--json prints one JSON object per event with named fields."""
    mon = watch_monitor(balancer, procs, "--json")
    balancer.start_server(5)
    line = wait_until(lambda: next((x for x in mon.stdout().splitlines() if '"node.joined"' in x), None), 10, "join")
    event = json.loads(line)
    assert event["kind"] == "node.joined"
    assert event["server_id"] == 5
    assert event["capacity"] == 1
    assert event["message"].startswith("Server 5 joined")


def test_urgent_request_overtakes_backlog_through_real_processes(
    balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path
):
    """With the only node busy, a priority-1 request is served before waiting priority-5 requests.

    The node stays busy until all of them wait in the queue (request 1 is held by a gate), however long a
    busy machine takes to send them."""
    balancer.start_server(0, handler="gated")
    balancer.wait_servers_active({0})
    gate = tmp_path / "gate"
    with Client(balancer.endpoints.frontend, client_id=1) as client:
        client.submit(gate_payload(str(gate)), priority=5, request_id=1)
        wait_until(lambda: balancer.servers()[0]["in_flight"] == 1, 10, "node busy")
        for rid in (2, 3, 4):
            client.submit(json_payload(0), priority=5, request_id=rid)
        client.submit(json_payload(0), priority=1, request_id=99)
        wait_until(lambda: balancer.call("status")["queue_depth"] == 4, 10, "four requests queued")
        gate.touch()
        order = [r.request_id for r in client.as_completed(timeout=scaled(20))]
    assert order == [1, 99, 2, 3, 4]


def busy_servers(balancer: LiveBalancer) -> list[int]:
    """Ids of servers with work in flight."""
    return [s for s, v in balancer.servers().items() if v["in_flight"]]


def test_down_up_and_drain_through_the_cli(balancer: LiveBalancer, procs: ProcessGroup, tmp_path: Path):
    """zlb down re-queues a node's work elsewhere, zlb up restores it, zlb drain lets work finish and takes no more.

    Each request runs until the test opens its gate, so where it runs never depends on how soon a busy
    machine gets `zlb down` going (an 800 ms request once finished before it did)."""
    gates = tmp_path / "gates"
    gates.mkdir()
    for node_id in (0, 1):
        balancer.start_server(node_id, handler="gated")
    balancer.wait_servers_active({0, 1})
    with Client(balancer.endpoints.frontend, client_id=2) as client:
        pending = client.submit(gate_payload(str(gates / "1")), request_id=1)
        (holder,) = wait_until(lambda: busy_servers(balancer), 10, "an assignment")
        other = 1 - holder
        down = procs.run("down", str(holder))
        assert down.returncode == 0, down.stderr
        assert f"Server {holder} marked as down" in down.stdout
        wait_until(lambda: busy_servers(balancer) == [other], 10, "request 1 re-queued to the other node")
        assert balancer.servers()[holder]["active"] is False
        (gates / "1").touch()  # both runs of request 1 end: the downed node's answer must not be the one kept
        result = pending.result(timeout=scaled(10))
        assert (result.server_id, result.attempts) == (other, 2)
        assert procs.run("up", str(holder)).returncode == 0
        assert balancer.servers()[holder]["state"] == "active"

        pending = client.submit(gate_payload(str(gates / "2")), request_id=2)
        (runner,) = wait_until(lambda: busy_servers(balancer), 10, "an assignment")
        other = 1 - runner
        assert procs.run("drain", str(runner)).returncode == 0
        assert balancer.servers()[runner]["state"] == "draining"
        (gates / "2").touch()
        assert pending.result(timeout=scaled(10)).server_id == runner  # in-flight work finished where it was
        # The draining node is idle now; request 3 holds the other one, and request 4 waits for it.
        held = client.submit(gate_payload(str(gates / "3")), request_id=3)
        assert wait_until(lambda: busy_servers(balancer), 10, "request 3 assigned") == [other]
        waiting = client.submit(json_payload(0), request_id=4)
        wait_until(lambda: balancer.call("request", client_id=2, request_id=4)["status"] == "pending", 10, "4 queued")
        (gates / "3").touch()
        assert held.result(timeout=scaled(10)).server_id == other
        assert waiting.result(timeout=scaled(10)).server_id == other  # nothing new for the draining node
    assert procs.run("down", "42").returncode == 1


def test_nodes_rejoin_a_restarted_balancer(procs: ProcessGroup, endpoints: Endpoints):
    """After kill -9 and restart of the balancer, running nodes reconnect by themselves and serve again:
    the new balancer's table has both nodes as the same processes, and a client's requests are spread over them."""
    first = start_balancer(procs, endpoints)
    nodes = {i: first.start_server(i) for i in (0, 1)}
    first.wait_servers_active({0, 1})
    procs.kill9(first.proc)
    second = start_balancer(procs, endpoints)
    second.wait_servers_active({0, 1}, timeout=15)
    assert {i: s["pid"] for i, s in second.servers().items()} == {i: node.pid for i, node in nodes.items()}
    args = ("client", "--id", "3", "--requests", "4", "--cost-ms", "200", "--json", "--timeout", timeout_arg(15))
    done = procs.run(*args)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["request_id"] for r in results) == [1, 2, 3, 4]
    assert {r["status"] for r in results} == {"processed"}
    handled = [s["handled_requests"] for s in second.servers().values()]
    assert sum(handled) == 4 and min(handled) >= 1, f"both rejoined nodes serve: {handled}"
    assert all(node.popen.poll() is None for node in nodes.values()), "the nodes lived through it"


def test_bad_input_is_counted_answered_and_survived(balancer: LiveBalancer, procs: ProcessGroup):
    """Garbage on every socket is counted by kind, answered where possible, and the balancer keeps serving."""
    ctx = zmq.Context.instance()
    sockets = {}
    for role in ("frontend", "backend", "control"):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(getattr(balancer.endpoints, role))
        sockets[role] = sock
    try:
        sockets["frontend"].send_multipart([b"\xc1garbage", b"payload"])
        sockets["frontend"].send_multipart([p.encode(MsgType.SUBMIT, 1, 1, 1, 1)])  # no payload frame
        sockets["backend"].send_multipart([b"\x93\x09\x0a\xc0"])  # version 9
        sockets["backend"].send_multipart([bytes([0x92, p.PROTOCOL_VERSION, 0x63])])  # unknown type 99
        sockets["control"].send(b"\xff\xfe")
        assert sockets["frontend"].poll(int(scaled(5) * 1000)), "the frontend answers a bad submit"
        assert b"bad message" in sockets["frontend"].recv_multipart()[0]
        assert sockets["control"].poll(int(scaled(5) * 1000)), "the control socket answers garbage"
        assert b"bad message" in sockets["control"].recv()

        def counted() -> dict:
            bad = balancer.call("status")["bad_input"]
            return bad if sum(bad.values()) >= 5 else {}

        bad = wait_until(counted, 10, "bad input counters")
        assert bad["frontend.malformed"] == 1
        assert bad["frontend.bad_frames"] == 1
        assert bad["backend.bad_version"] == 1
        assert bad["backend.unknown_type"] == 1
        assert bad["control.malformed"] == 1
    finally:
        for sock in sockets.values():
            sock.close(linger=0)
    balancer.start_server(0)
    assert procs.run("send", "--client-id", "1", "--request-id", "1", "--timeout", timeout_arg(10)).returncode == 0
    logs = procs.run("logs").stdout
    assert "Dropped bad message on frontend: malformed" in logs


def test_admin_commands_fail_fast_without_a_balancer(procs: ProcessGroup):
    """With no balancer, zlb servers exits non-zero within seconds with a one-line error."""
    start = time.monotonic()
    done = procs.run("servers", timeout=15)
    assert time.monotonic() - start < scaled(10)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no answer from the balancer" in done.stderr


def test_bad_cli_arguments_are_one_line_errors(procs: ProcessGroup):
    """Bad options give a usage error and exit 2, never a traceback."""
    for args in (
        ("server", "--capacity", "0"),
        ("send", "--client-id", "0", "--request-id", "1", "--payload", "{not json"),
        ("server", "--handler", "nosuchmodule:fn"),
        ("requests", "--status", "lost"),
    ):
        done = procs.run(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr
        assert "Error" in done.stderr


def test_queries_and_log_download(balancer: LiveBalancer, procs: ProcessGroup, tmp_path):
    """servers/requests/status/logs answer in the seed's shapes; --download writes the log lines."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    assert procs.run("send", "--client-id", "0", "--request-id", "101", "--priority", "1").returncode == 0
    servers = json.loads(procs.run("servers", "--json").stdout)
    assert servers[0]["server_id"] == 0 and servers[0]["handled_requests"] == 1 and servers[0]["active"] is True
    assert {"state", "in_flight", "capacity", "pid", "host", "last_heartbeat_ms_ago"} <= set(servers[0])
    requests = json.loads(procs.run("requests", "--json").stdout)
    assert requests == [
        {
            "client_id": 0,
            "request_id": 101,
            "priority": 1,
            "status": "processed",
            "server_id": 0,
            "attempts": 1,
            "service": "default",
        }
    ]
    assert json.loads(procs.run("requests", "--json", "--status", "pending").stdout) == []
    status = json.loads(procs.run("status", "--json").stdout)
    assert status["requests"]["processed"] == 1 and status["queue_depth"] == 0
    target = tmp_path / "load_balancer_logs.txt"
    assert procs.run("logs", "--download", str(target)).returncode == 0
    # As the log file has them: time, level, kind, then the seed's words.
    lines = target.read_text(encoding="utf-8").splitlines()
    assert any(
        line.endswith("request.added      Request 101 from Client 0 added to queue with priority 1") for line in lines
    )
    assert any(line.endswith("request.assigned   ✅ Request 101 assigned to Server 0") for line in lines)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line) for line in lines), lines
    shown = procs.run("logs").stdout.splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ✅ Request 101 assigned to Server 0", line) for line in shown)
    log_path = procs.workdir / "balancer.log"
    wanted = "INFO    request.assigned   ✅ Request 101 assigned to Server 0"
    wait_until(lambda: log_path.exists() and wanted in log_path.read_text(encoding="utf-8"), 5, "the log file line")


def test_cluster_runs_the_seed_example(procs: ProcessGroup):
    """zlb cluster starts balancer, 3 servers and 2 clients, shows the log and stops them all."""
    done = procs.run("cluster", "--cost-ms", "50", "--exit-when-done", timeout=40)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "System configured with 3 servers and 2 clients." in out
    for rid, client in ((101, 0), (102, 0), (201, 1), (202, 1)):
        assert f"Request {rid} from Client {client} added to queue with priority 5" in out
        assert f"Request {rid} from Client {client} processed by Server" in out
    assert "All 2 clients finished: 4 requests sent, 0 clients failed." in out


def test_a_burst_of_admin_requests_from_many_connections_is_all_answered(balancer: LiveBalancer):
    """The balancer polls the control socket by its descriptor, which signals an arrival once: requests
    that land while others are read or answered must still be answered, with no new arrival to wake it.
    Each round, 40 connections send at once, some two requests back to back; every one gets its reply."""
    ctx = zmq.Context.instance()
    socks = []
    try:
        for _ in range(40):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(balancer.endpoints.control)
            socks.append(sock)
        for round_no in range(5):
            for i, sock in enumerate(socks):
                for _ in range(1 + (i + round_no) % 2):
                    sock.send(p.encode_map({"cmd": "servers"}))
            expected = {i: 1 + (i + round_no) % 2 for i in range(len(socks))}
            got = dict.fromkeys(expected, 0)
            poller = zmq.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
            deadline = time.monotonic() + scaled(10)
            while got != expected and time.monotonic() < deadline:
                for sock, _ in poller.poll(200):
                    while sock.poll(0):
                        assert p.decode_map(sock.recv())["ok"]
                        got[socks.index(sock)] += 1
            assert got == expected, f"round {round_no}: unanswered {[i for i in got if got[i] != expected[i]]}"
    finally:
        for sock in socks:
            sock.close(linger=0)
