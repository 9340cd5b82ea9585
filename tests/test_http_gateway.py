"""End to end: the seed's REST API served by a real `zlb http` over a real balancer and real nodes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest

from tests.harness import LiveBalancer, Proc, ProcessGroup, free_port, wait_until


@dataclass
class HttpReply:
    """Status, headers and body of one HTTP exchange."""

    status: int
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


@dataclass
class LiveGateway:
    """A running `zlb http` process and its base URL."""

    proc: Proc
    url: str
    token: str | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, token: str | None = None
    ) -> HttpReply:
        """One HTTP request with urllib; error statuses are returned, not raised."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token or self.token:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return HttpReply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return HttpReply(err.code, err.headers, err.read())

    def get(self, path: str) -> Any:
        reply = self.call("GET", path)
        assert reply.status == 200, reply
        return reply.json()

    def raw(self, data: bytes, timeout: float = 10) -> str:
        """Send bytes on a fresh connection and read until the gateway closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
            conn.sendall(data)
            chunks = []
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


def start_gateway(procs: ProcessGroup, *extra: str, env: dict[str, str] | None = None) -> LiveGateway:
    """Start `zlb http` on a free port and wait until it serves."""
    port = free_port()
    proc = procs.start("http", "http", "--port", str(port), "--heartbeat-ms", "100", "--quiet", *extra, extra_env=env)
    gateway = LiveGateway(proc, f"http://127.0.0.1:{port}")

    def serving() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"zlb http exited with {proc.popen.returncode}: {proc.stderr()}")
        try:
            reply = gateway.call("GET", "/healthz")
        except OSError:
            return False
        return reply.status == 200 and reply.json()["pid"] == proc.pid

    wait_until(serving, 15, "zlb http to serve")
    return gateway


@pytest.fixture
def gateway(balancer: LiveBalancer, procs: ProcessGroup) -> LiveGateway:
    """`zlb http` on a free port in front of a live balancer; /configure's clients send 1 s requests."""
    return start_gateway(procs, "--cost-ms", "1000")


def untimed(lines: list[str]) -> list[str]:
    """/logs lines without the `HH:MM:SS.mmm ` each starts with (checked here)."""
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line) for line in lines), lines
    return [line.split(" ", 1)[1] for line in lines]


def by_ids(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["client_id"], r["request_id"]): r for r in rows}


@pytest.mark.timeout(60)
def test_seed_readme_sequence_back_to_back_gives_the_seed_answers(gateway: LiveGateway):
    """The seed README's calls sent back to back, with no pause, each answer the seed's status and body."""
    seed_calls = [
        ("POST", "/configure", {"num_servers": 3, "num_clients": 2, "requests_per_client": 2}),
        ("POST", "/send_request", {"client_id": 0, "request_id": 101, "priority": 1}),
        ("GET", "/requests", None),
        ("GET", "/servers", None),
        ("POST", "/server_down/1", None),
        ("POST", "/server_up/1", None),
        ("GET", "/logs", None),
        ("GET", "/logs/download", None),
    ]
    replies = [gateway.call(method, path, body) for method, path, body in seed_calls]
    assert [r.status for r in replies] == [200] * len(seed_calls)
    configured, sent, requests, servers, down, up, logs, download = replies
    assert configured.json() == {"servers": 3, "clients": 2, "requests_per_client": 2}
    assert sent.json() == {"message": "Request 101 added successfully!"}
    mine = by_ids(requests.json())[(0, 101)]
    assert {k: mine[k] for k in ("client_id", "request_id", "priority")} == {
        "client_id": 0,
        "request_id": 101,
        "priority": 1,
    }
    assert mine["status"] in ("pending", "assigned", "processed")
    rows = servers.json()
    assert [s["server_id"] for s in rows] == [0, 1, 2]
    assert all(type(s["handled_requests"]) is int and s["active"] is True for s in rows)
    assert down.json() == {"message": "Server 1 marked as down"}
    assert up.json() == {"message": "Server 1 marked as up"}
    assert list(logs.json()) == ["logs"]
    lines = untimed(logs.json()["logs"])
    assert "System configured with 3 servers and 2 clients." in lines
    assert "Request 101 from Client 0 added to queue with priority 1" in lines
    assert any(line.startswith("✅ Request 101 assigned to Server ") for line in lines)
    assert download.headers["Content-Disposition"] == 'attachment; filename="load_balancer_logs.txt"'
    # As the balancer's log file has it: ISO time, level, kind, the seed's words.
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO +system\.configured +"
        r"System configured with 3 servers and 2 clients\.$",
        download.body.decode(),
        re.MULTILINE,
    ), download.body.decode()
    # The balancer logs an admin change just after answering it; the download shows it soon after.
    wait_until(lambda: "Server 1 marked as up" in gateway.call("GET", "/logs/download").body.decode(), 5, "up logged")


@pytest.mark.timeout(60)
def test_down_moves_running_work_and_configured_clients_number_apart(gateway: LiveGateway):
    """Taking a busy server down moves its request elsewhere; each configured client has its own id block."""
    spec = {"num_servers": 3, "num_clients": 2, "requests_per_client": 2}
    assert gateway.call("POST", "/configure", spec).status == 200
    held = wait_until(
        lambda: [r for r in gateway.get("/requests") if r["server_id"] == 1 and r["status"] == "assigned"],
        15,
        "a request running on server 1",
    )[0]
    down = gateway.call("POST", "/server_down/1")
    assert (down.status, down.json()) == (200, {"message": "Server 1 marked as down"})
    assert gateway.get("/servers")[1]["active"] is False
    wait_until(lambda: len(gateway.get("/requests?status=processed")) == 4, 20, "all processed")
    rows = by_ids(gateway.get("/requests"))
    assert sorted(rows) == [(0, 100001), (0, 100002), (1, 200001), (1, 200002)]
    moved = rows[(held["client_id"], held["request_id"])]
    assert moved["server_id"] != 1 and moved["attempts"] == 2
    lines = gateway.get("/logs")["logs"]
    assert any(f"Request {held['request_id']} from Client {held['client_id']} re-queued" in x for x in lines)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """Children of every thread of `pid` (a child belongs to the thread that forked it), zombies included."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass  # the thread ended
    return out


@pytest.mark.timeout(60)
def test_configure_scales_nodes_reaps_clients_and_gateway_exit_stops_them(balancer: LiveBalancer, procs: ProcessGroup):
    """/configure reaches num_servers, finished clients are reaped (no zombies), exit stops every node."""
    gateway = start_gateway(procs, "--cost-ms", "10")
    spec = {"num_servers": 2, "num_clients": 2, "requests_per_client": 1}
    assert gateway.call("POST", "/configure", spec).status == 200
    assert sum(s["active"] for s in gateway.get("/servers")) == 2  # joined before /configure answered
    pids = [s["pid"] for s in gateway.get("/servers")]
    wait_until(lambda: len(gateway.get("/requests?status=processed")) == 2, 15, "the clients' requests")
    wait_until(lambda: sorted(child_pids(gateway.proc.pid)) == sorted(pids), 10, "clients exited and reaped")
    assert not [p for p in child_pids(gateway.proc.pid) if is_zombie(p)]
    assert gateway.call("POST", "/configure", {**spec, "num_servers": 1, "num_clients": 0}).status == 200
    wait_until(lambda: not pid_alive(pids[1]), 10, "server 1's process to exit")
    assert [s["active"] for s in gateway.get("/servers")] == [True, False]
    gateway.proc.popen.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    assert not pid_alive(pids[0])


def test_without_a_balancer_endpoints_answer_503_json(procs: ProcessGroup):
    """With no balancer behind it, endpoints answer 503 JSON errors (and /metrics says zlb_up 0) without hanging."""
    gateway = start_gateway(procs, "--control-timeout", "0.3")
    reply = gateway.call("GET", "/servers")
    assert reply.status == 503
    assert "no answer from the balancer" in reply.json()["error"]
    scrape = gateway.call("GET", "/metrics")
    assert scrape.status == 200
    assert "zlb_up 0.0" in scrape.body.decode().splitlines()
