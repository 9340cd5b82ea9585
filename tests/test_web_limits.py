"""The gateway under hostile or careless input: malformed values, floods, slow clients, taken ports, tokens."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import LiveBalancer, ProcessGroup, free_port, scaled, wait_until
from tests.test_http_gateway import start_gateway

OVERLONG = "9" * 40
BAD_INPUTS = [
    ("POST", "/configure", b"{not json", 400, "not valid JSON"),
    ("POST", "/configure", b"[1, 2]", 400, "JSON object"),
    ("POST", "/configure", b"", 400, "JSON object"),
    ("POST", "/configure", b"\xff\xfe", 400, "not valid JSON"),
    ("POST", "/configure", b"[" * 30_000 + b"]" * 30_000, 400, "nested deeper than"),
    ("POST", "/configure", b"[" * 100_000 + b"]" * 100_000, 413, "at most 65536 bytes"),
    ("POST", "/configure", b" " * 2_000_000, 413, "at most 65536 bytes"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": 1}', 400, "missing field 'requests_per_client'"),
    ("POST", "/configure", b'{"num_servers": -1, "num_clients": 0, "requests_per_client": 0}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": -2, "requests_per_client": 0}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": 1, "num_clients": 1, "requests_per_client": -5}', 400, "at least 0"),
    ("POST", "/configure", b'{"num_servers": "3", "num_clients": 1, "requests_per_client": 1}', 400, "integer"),
    ("POST", "/configure", b'{"num_servers": 100000, "num_clients": 0, "requests_per_client": 0}', 400, "at most"),
    ("POST", "/configure", b'{"num_servers": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    ("POST", "/send_request", b'{"client_id": 0, "priority": 1}', 400, "missing field 'request_id'"),
    ("POST", "/send_request", b'{"client_id": true, "request_id": 1}', 400, "integer"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": -1}', 400, "at least 0"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "priority": 1.5}', 400, "integer"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": ' + OVERLONG.encode() + b"}", 400, "at most"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "cost_ms": NaN}', 400, "NaN"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "cost_ms": Infinity}', 400, "Infinity"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "cost_ms": 1e999}', 400, "finite number"),
    ("POST", "/send_request", b'{"client_id": 0, "request_id": 1, "cost_ms": -1}', 400, "finite number"),
    (
        "POST",
        "/send_request",
        b'{"client_id": 0, "request_id": 1, "cost_ms": 1' + b"0" * 400 + b"}",
        400,
        "finite number",
    ),
    ("POST", "/configure", b'{"num_servers": 0, "num_clients": 64, "requests_per_client": 99999}', 400, "limit"),
    ("POST", "/server_down/7", b"", 404, "Server 7 not found"),
    ("POST", "/server_up/7", b"", 404, "Server 7 not found"),
    *[
        ("POST", f"/server_{path}", b"", 400, "non-negative integer")
        for path in ("down/abc", "up/-1", f"down/{OVERLONG}", "down/%C2%B2", "drain/%D9%A3")
    ],
    ("GET", "/requests?status=lost", b"", 400, "unknown status"),
    *[
        ("GET", f"/requests?{query}", b"", 400, "must be an integer")
        for query in ("limit=many", f"limit={OVERLONG}", f"client={OVERLONG}", "client=%C2%B2")
    ],
    ("GET", "/requests?limit=-1", b"", 400, "at least 0"),
    ("GET", "/logs?limit=-3", b"", 400, "at least 0"),
    ("GET", f"/logs?limit={OVERLONG}", b"", 400, "must be an integer"),
    ("GET", "/configure", b"", 405, "use POST"),
    ("POST", "/servers", b"", 405, "use GET"),
    ("GET", "/no/such/path", b"", 404, "no endpoint"),
    ("OPTIONS", "/servers", b"", 405, "use GET"),
]


def test_each_bad_input_is_a_4xx_json_error(balancer: LiveBalancer, procs: ProcessGroup):
    """Bad JSON, deep nesting, huge bodies, over-long and unicode integers, NaN and unknown ids get 4xx JSON errors."""
    gateway = start_gateway(procs)
    for method, path, raw, status, words in BAD_INPUTS:
        reply = gateway.call(method, path, raw=raw if method == "POST" else None)
        assert reply.status == status, (method, path, raw[:40], reply)
        error = reply.json()["error"]
        assert words in error, (method, path, error)
    duplicate = {"client_id": 3, "request_id": 5, "priority": 2}
    assert gateway.call("POST", "/send_request", duplicate).status == 200
    again = gateway.call("POST", "/send_request", duplicate)
    assert again.status == 409
    assert again.json() == {"error": "Request 5 from Client 3 already exists (pending)"}
    assert gateway.proc.popen.poll() is None


@pytest.mark.parametrize(
    "request_bytes",
    [b"NONSENSE\r\n\r\n", b"POST /server_down/\xc2\xb2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
)
def test_unparseable_requests_get_a_json_400_and_a_closed_connection(procs: ProcessGroup, request_bytes: bytes):
    """A garbage request line or raw non-ASCII bytes in the path get a 400 JSON error, never a 500 or silence."""
    gateway = start_gateway(procs, "--control-timeout", "0.3")
    reply = gateway.raw(request_bytes)
    assert reply.startswith("HTTP/1.1 400 "), reply
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]
    assert gateway.proc.popen.poll() is None


@pytest.mark.timeout(60)
def test_200_concurrent_reads_are_all_answered_within_15_s(balancer: LiveBalancer, procs: ProcessGroup):
    """200 concurrent GET /servers, each on its own connection, all answer 200 within 15 s."""
    gateway = start_gateway(procs)
    balancer.start_server(0)
    balancer.wait_servers_active({0})

    def one(_: int) -> int:
        return gateway.call("GET", "/servers").status

    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(one, range(200)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 200
    assert elapsed < scaled(15), elapsed


def test_slow_header_clients_are_disconnected(procs: ProcessGroup):
    """A client that opens a connection and sends its request head too slowly is cut off; others are served."""
    gateway = start_gateway(procs, "--control-timeout", "0.3", "--header-timeout", "1")
    slow = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(20)]
    try:
        for conn in slow:
            conn.sendall(b"GET /servers HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert gateway.call("GET", "/healthz").status == 200
        started = time.monotonic()
        for conn in slow:
            assert conn.recv(100) == b""  # closed by the gateway, not by our 10 s socket timeout
        assert time.monotonic() - started < scaled(5)
    finally:
        for conn in slow:
            conn.close()


def run_http(procs: ProcessGroup, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zlb", "http", "--quiet", *args],
        env={**procs.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=scaled(20),
        stdin=subprocess.DEVNULL,
    )


def test_a_taken_port_exits_3_at_once_with_one_line(procs: ProcessGroup):
    """`zlb http` on a port something else listens on exits 3 within seconds, saying the port is in use."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_http(procs, "--port", str(port))
    assert time.monotonic() - started < scaled(5)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [f"zlb http: cannot listen on 127.0.0.1:{port}: port in use"]


def test_listening_beyond_loopback_without_a_token_is_refused(procs: ProcessGroup):
    """--host 0.0.0.0 without a token exits 2 with one clear line; nothing is bound."""
    done = run_http(procs, "--host", "0.0.0.0", "--port", str(free_port()), env={"ZLB_HTTP_TOKEN": ""})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without a token" in lines[0], lines


TOKEN = "s3cret-token-for-tests-0123456789"


def test_with_a_token_changes_need_it_and_reads_stay_open_on_loopback(balancer: LiveBalancer, procs: ProcessGroup):
    """With ZLB_HTTP_TOKEN, a POST without the token or with a wrong one is 401 and with it 200; GETs stay open."""
    gateway = start_gateway(procs, env={"ZLB_HTTP_TOKEN": TOKEN})
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    for path in ("/server_down/0", "/server_up/0", "/send_request", "/configure"):
        missing = gateway.call("POST", path, {})
        assert missing.status == 401, path
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in missing.json()["error"]
        assert gateway.call("POST", path, {}, token=TOKEN + "x").status == 401, path
    assert balancer.servers()[0]["state"] == "active"  # the refused calls changed nothing
    assert gateway.call("POST", "/server_down/0", token=TOKEN).status == 200
    assert gateway.call("POST", "/server_up/0", token=TOKEN).status == 200
    assert gateway.call("GET", "/servers").status == 200


def test_token_file_beyond_loopback_protects_reads_too(procs: ProcessGroup, tmp_path):
    """--token-file on 0.0.0.0: reads need the token as well (probed over loopback)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    gateway = start_gateway(procs, "--host", "0.0.0.0", "--token-file", str(token_file), "--control-timeout", "0.3")
    assert gateway.call("GET", "/servers").status == 401
    assert gateway.call("GET", "/servers", token=TOKEN).status == 503  # past auth; no balancer behind it
    assert gateway.call("GET", "/openapi.json").status == 200


def test_openapi_lists_every_seed_endpoint(procs: ProcessGroup):
    """/openapi.json is OpenAPI 3 and documents each seed endpoint with its method."""
    gateway = start_gateway(procs, "--control-timeout", "0.3")
    doc = gateway.get("/openapi.json")
    assert doc["openapi"].startswith("3.")
    seed = {
        "/configure": "post",
        "/send_request": "post",
        "/requests": "get",
        "/servers": "get",
        "/server_down/{server_id}": "post",
        "/server_up/{server_id}": "post",
        "/logs": "get",
        "/logs/download": "get",
    }
    for path, method in seed.items():
        assert method in doc["paths"][path], path
        assert "200" in doc["paths"][path][method]["responses"]
    assert doc["paths"]["/configure"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "num_servers",
        "num_clients",
        "requests_per_client",
    ]
    wait_until(lambda: gateway.proc.popen.poll() is None, 1, "the gateway still running")
