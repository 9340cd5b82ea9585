"""End to end: the seed's REST API served by a real `zlb http` over a real balancer and real nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import LiveBalancer, Proc, ProcessGroup, free_port, wait_until


@dataclass
class HttpReply:
    """Status, headers and body of one HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


@dataclass
class LiveGateway:
    """A running `zlb http` process and its base URL."""

    proc: Proc
    url: str

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> HttpReply:
        """One HTTP request with urllib; error statuses are returned, not raised."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return HttpReply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return HttpReply(err.code, dict(err.headers), err.read())

    def get(self, path: str) -> Any:
        reply = self.call("GET", path)
        assert reply.status == 200, reply
        return reply.json()


def start_gateway(procs: ProcessGroup, *extra: str) -> LiveGateway:
    """Start `zlb http` on a free port and wait until it serves."""
    port = free_port()
    proc = procs.start("http", "http", "--port", str(port), "--heartbeat-ms", "100", "--quiet", *extra)
    gateway = LiveGateway(proc, f"http://127.0.0.1:{port}")

    def serving() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"zlb http exited with {proc.popen.returncode}: {proc.stderr()}")
        try:
            return gateway.call("GET", "/metrics").status in (200, 503)
        except OSError:
            return False

    wait_until(serving, 15, "zlb http to serve")
    return gateway


@pytest.fixture
def gateway(balancer: LiveBalancer, procs: ProcessGroup) -> LiveGateway:
    """`zlb http` on a free port in front of a live balancer; /configure's clients send 1 s requests."""
    return start_gateway(procs, "--cost-ms", "1000")


def by_ids(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["client_id"], r["request_id"]): r for r in rows}


@pytest.mark.timeout(60)
def test_seed_readme_sequence_returns_the_seed_answers(gateway: LiveGateway):
    """The seed README's calls, in order, answer with the seed's shapes and values from real processes."""
    configured = gateway.call("POST", "/configure", {"num_servers": 3, "num_clients": 2, "requests_per_client": 2})
    assert (configured.status, configured.json()) == (200, {"servers": 3, "clients": 2, "requests_per_client": 2})
    wait_until(lambda: sum(s["active"] for s in gateway.get("/servers")) == 3, 15, "three active servers")

    sent = gateway.call("POST", "/send_request", {"client_id": 0, "request_id": 101, "priority": 1})
    assert (sent.status, sent.json()) == (200, {"message": "Request 101 added successfully!"})
    mine = by_ids(gateway.get("/requests"))[(0, 101)]
    assert {k: mine[k] for k in ("client_id", "request_id", "priority")} == {
        "client_id": 0,
        "request_id": 101,
        "priority": 1,
    }
    assert mine["status"] in ("pending", "assigned", "processed")

    servers = gateway.get("/servers")
    assert [s["server_id"] for s in servers] == [0, 1, 2]
    assert all(type(s["handled_requests"]) is int and s["active"] is True for s in servers)

    # Server 1 is busy with a 1 s request; taking it down moves that request to another server.
    held = wait_until(
        lambda: [r for r in gateway.get("/requests") if r["server_id"] == 1 and r["status"] == "assigned"],
        10,
        "a request running on server 1",
    )[0]
    down = gateway.call("POST", "/server_down/1")
    assert (down.status, down.json()) == (200, {"message": "Server 1 marked as down"})
    assert gateway.get("/servers")[1]["active"] is False
    wait_until(lambda: all(r["status"] == "processed" for r in gateway.get("/requests")), 20, "all processed")
    rows = by_ids(gateway.get("/requests"))
    assert len(rows) == 5
    moved = rows[(held["client_id"], held["request_id"])]
    assert moved["server_id"] != 1 and moved["attempts"] == 2

    up = gateway.call("POST", "/server_up/1")
    assert (up.status, up.json()) == (200, {"message": "Server 1 marked as up"})
    assert gateway.get("/servers")[1]["active"] is True

    logs = gateway.get("/logs")
    assert list(logs) == ["logs"]
    assert "System configured with 3 servers and 2 clients." in logs["logs"]
    assert "Request 101 from Client 0 added to queue with priority 1" in logs["logs"]
    assert any(line.startswith("✅ Request 101 assigned to Server ") for line in logs["logs"])
    assert any(f"Request {held['request_id']} from Client {held['client_id']} re-queued" in x for x in logs["logs"])

    download = gateway.call("GET", "/logs/download")
    assert download.status == 200
    assert download.headers["Content-Disposition"] == 'attachment; filename="load_balancer_logs.txt"'
    text = download.body.decode()
    assert "System configured with 3 servers and 2 clients." in text
    assert "Server 1 marked as up" in text.splitlines()[-1]


BAD_INPUTS = [
    ("POST", "/configure", b"{not json", 400, "not valid JSON"),
    ("POST", "/configure", b"[1, 2]", 400, "JSON object"),
    ("POST", "/configure", b"", 400, "JSON object"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": 1}', 400, "missing field 'requests_per_client'"),
    ("POST", "/configure", b'{"num_servers": -1, "num_clients": 0, "requests_per_client": 0}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": -2, "requests_per_client": 0}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": 1, "requests_per_client": -5}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": "3", "num_clients": 1, "requests_per_client": 1}', 400, "integer"),
    ("POST", "/configure", b'{"num_servers": 100000, "num_clients": 0, "requests_per_client": 0}', 400, "at most"),
    ("POST", "/send_request", b'{"client_id": 0, "priority": 1}', 400, "missing field 'request_id'"),
    ("POST", "/send_request", b'{"client_id": true, "request_id": 1}', 400, "integer"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": -1}', 400, "at least 0"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "priority": 1.5}', 400, "integer"),
    ("POST", "/server_down/7", b"", 404, "Server 7 not found"),
    ("POST", "/server_up/7", b"", 404, "Server 7 not found"),
    ("POST", "/server_down/abc", b"", 400, "non-negative integer"),
    ("POST", "/server_up/-1", b"", 400, "non-negative integer"),
    ("GET", "/requests?status=lost", b"", 400, "unknown status"),
    ("GET", "/requests?limit=many", b"", 400, "must be an integer"),
    ("GET", "/logs?limit=-3", b"", 400, "at least 0"),
    ("GET", "/configure", b"", 405, "use POST"),
    ("POST", "/servers", b"", 405, "use GET"),
    ("GET", "/no/such/path", b"", 404, "no endpoint"),
    ("OPTIONS", "/servers", b"", 405, "use GET"),
    ("GET", "/requests?limit=-1", b"", 400, "at least 0"),
]


def test_each_bad_input_is_a_4xx_json_error(balancer: LiveBalancer, procs: ProcessGroup):
    """Bad JSON, missing fields, wrong types, negative counts, unknown ids, paths and methods get 4xx JSON errors."""
    gateway = start_gateway(procs)
    for method, path, raw, status, words in BAD_INPUTS:
        reply = gateway.call(method, path, raw=raw if method == "POST" else None)
        assert reply.status == status, (method, path, raw, reply)
        error = reply.json()["error"]
        assert words in error, (method, path, error)
    duplicate = {"client_id": 3, "request_id": 5, "priority": 2}
    assert gateway.call("POST", "/send_request", duplicate).status == 200
    again = gateway.call("POST", "/send_request", duplicate)
    assert again.status == 409
    assert again.json() == {"error": "Request 5 from Client 3 already exists (pending)"}
    assert gateway.proc.popen.poll() is None
    with socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])), timeout=5) as raw:
        raw.sendall(b"NONSENSE\r\n\r\n")
        chunks = []
        while chunk := raw.recv(4096):  # the gateway closes the connection after an unparseable request
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 400 ") or reply.startswith("HTTP/1.0 400 "), reply
    assert reply.rstrip().endswith('"}') and '{"error": ' in reply


def test_without_a_balancer_endpoints_answer_503_json(procs: ProcessGroup):
    """With no balancer behind it, endpoints answer 503 JSON errors (and /metrics says zlb_up 0) without hanging."""
    gateway = start_gateway(procs, "--control-timeout", "0.3")
    reply = gateway.call("GET", "/servers")
    assert reply.status == 503
    assert "no answer from the balancer" in reply.json()["error"]
    scrape = gateway.call("GET", "/metrics")
    assert scrape.status == 200
    assert "zlb_up 0" in scrape.body.decode().splitlines()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_configure_scales_nodes_and_gateway_exit_stops_them(balancer: LiveBalancer, procs: ProcessGroup):
    """/configure starts and stops node processes to reach num_servers; stopping the gateway stops them all."""
    gateway = start_gateway(procs)
    spec = {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}
    assert gateway.call("POST", "/configure", spec).status == 200
    wait_until(lambda: sum(s["active"] for s in gateway.get("/servers")) == 2, 15, "two active servers")
    pids = [s["pid"] for s in gateway.get("/servers")]
    assert gateway.call("POST", "/configure", {**spec, "num_servers": 1}).status == 200
    wait_until(lambda: not pid_alive(pids[1]), 10, "server 1's process to exit")
    assert [s["active"] for s in gateway.get("/servers")] == [True, False]
    gateway.proc.popen.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    assert not pid_alive(pids[0])
