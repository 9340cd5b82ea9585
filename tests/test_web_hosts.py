"""Every request must name the gateway in Host, reads included: a DNS-rebound page gets nothing."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from http_gateway.auth import Policy
from http_gateway.web import HostCheck
from tests.harness import LiveBalancer, ProcessGroup, free_port
from tests.test_http_gateway import LiveGateway, start_gateway

TOKEN = "s3cret-token-for-hosts-0123456789"
EVIL = "evil.example"
READS = ("/servers", "/requests", "/logs", "/logs/download", "/metrics", "/", "/static/dashboard.js", "/openapi.json")


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def error(self) -> str:
        assert self.content_type.startswith("application/json"), self
        return json.loads(self.body)["error"]


def ask(gateway: LiveGateway, path: str, host: str | None, method: str = "GET", token: str | None = None) -> Answer:
    """One request with exactly this Host header (or the gateway's own address when `host` is None)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    headers = {"Host": f"127.0.0.1:{gateway.port}" if host is None else host}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        return Answer(reply.status, reply.getheader("Content-Type", ""), reply.read())
    finally:
        conn.close()


def first_event_bytes(gateway: LiveGateway, host: str, query: str = "") -> tuple[int, str, bytes]:
    """Open /events with this Host; the status, content type and the first bytes of the body."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        conn.request("GET", f"/events{query}", headers={"Host": host})
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type", ""), reply.read1(4096)
    finally:
        conn.close()


def assert_misdirected(answer: Answer) -> None:
    assert answer.status == 421, answer
    message = answer.error()
    assert "--allowed-host" in message and "DNS rebinding" in message, message


@pytest.mark.timeout(90)
def test_a_foreign_host_gets_421_on_every_path_and_loopback_names_are_served(
    balancer: LiveBalancer, procs: ProcessGroup
):
    """Reads, the page, static files, the event stream and changes: a foreign Host gets 421 and changes nothing."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    gateway = start_gateway(procs)
    port = gateway.port
    for path in (*READS, "/healthz", "/no/such/path"):
        assert_misdirected(ask(gateway, path, EVIL))
        assert_misdirected(ask(gateway, path, f"{EVIL}:{port}"))
    status, content_type, body = first_event_bytes(gateway, f"{EVIL}:{port}")
    assert status == 421 and content_type.startswith("application/json") and b"server_id" not in body
    for path in ("/server_down/0", "/configure", "/send_request"):
        assert_misdirected(ask(gateway, path, EVIL, "POST"))
    assert balancer.servers()[0]["state"] == "active"  # nothing above changed anything
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}"):
        servers = ask(gateway, "/servers", host)
        assert servers.status == 200, (host, servers)
        assert [s["server_id"] for s in json.loads(servers.body)] == [0]
    for path in READS:
        assert ask(gateway, path, None).status == 200, path
    status, content_type, body = first_event_bytes(gateway, f"localhost:{port}")
    assert status == 200 and content_type.startswith("text/event-stream") and body.startswith(b"retry:")
    for host in ("127.0.0.1.evil.example", "localhost.evil.example", "user@localhost", "localhost:port", ""):
        assert_misdirected(ask(gateway, "/servers", host))


@pytest.mark.timeout(60)
def test_the_token_does_not_open_a_foreign_host(balancer: LiveBalancer, procs: ProcessGroup):
    """With a token, a foreign Host is refused with or without it; the right Host is served."""
    gateway = start_gateway(procs, env={"ZLB_HTTP_TOKEN": TOKEN})
    for token in (None, TOKEN):
        assert_misdirected(ask(gateway, "/servers", EVIL, token=token))
        assert_misdirected(ask(gateway, "/server_down/0", EVIL, "POST", token=token))
    status, _type, _body = first_event_bytes(gateway, EVIL, f"?token={TOKEN}")
    assert status == 421
    assert ask(gateway, "/servers", None).status == 200  # reads stay open on loopback
    assert ask(gateway, "/servers", "localhost", token=TOKEN).status == 200


@pytest.mark.timeout(60)
def test_allowed_host_names_are_served_and_need_the_token(procs: ProcessGroup):
    """--allowed-host NAME (repeated) are served with the token; other names stay refused."""
    names = ("--allowed-host", "ZLB.Test", "--allowed-host", "other.test.")
    gateway = start_gateway(procs, *names, "--control-timeout", "0.3", env={"ZLB_HTTP_TOKEN": TOKEN})
    for host in ("zlb.test", f"zlb.test:{gateway.port}", "ZLB.TEST:8080", "other.test", "other.test."):
        assert ask(gateway, "/servers", host).status == 401, host  # past the Host check; reads need the token
        assert ask(gateway, "/servers", host, token=TOKEN).status == 503, host  # past auth; no balancer
        assert ask(gateway, "/openapi.json", host).status == 200, host
    for host in (EVIL, "sub.zlb.test", "zlb.test.evil.example", "10.1.2.3"):
        assert_misdirected(ask(gateway, "/servers", host, token=TOKEN))


@pytest.mark.timeout(60)
def test_listening_on_every_address_serves_address_literals_not_names(procs: ProcessGroup):
    """On 0.0.0.0 any address literal names the gateway (it cannot be re-pointed); names need --allowed-host."""
    gateway = start_gateway(procs, "--host", "0.0.0.0", "--control-timeout", "0.3", env={"ZLB_HTTP_TOKEN": TOKEN})
    for host in ("127.0.0.1", "192.0.2.7", f"192.0.2.7:{gateway.port}", "[2001:db8::1]:80", "localhost"):
        assert ask(gateway, "/servers", host).status == 401, host
        assert ask(gateway, "/servers", host, token=TOKEN).status == 503, host
    for host in (EVIL, "myhost", "192.0.2.7.nip.io"):
        assert_misdirected(ask(gateway, "/servers", host, token=TOKEN))


def run_http(procs: ProcessGroup, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zlb", "http", "--quiet", "--port", str(free_port()), *args],
        env={**procs.env, **env},
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def test_allowed_host_mistakes_are_one_line_and_a_non_zero_exit(procs: ProcessGroup):
    """A name beyond loopback without a token exits 2; a value that is not a name is a usage error."""
    for names, env in (
        (("--allowed-host", "zlb.example.org"), {}),
        ((), {"ZLB_HTTP_ALLOWED_HOSTS": "localhost zlb.example.org"}),
    ):
        done = run_http(procs, *names, env={"ZLB_HTTP_TOKEN": "", **env})
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "refusing to answer to zlb.example.org without a token" in lines[0], lines
    for bad in ("http://zlb.test/", "zlb.test:8080", "*.zlb.test", "a b"):
        done = run_http(procs, "--allowed-host", bad, env={"ZLB_HTTP_TOKEN": TOKEN})
        assert done.returncode == 2, (bad, done.stderr)
        assert "Invalid value for --allowed-host" in done.stderr and "not a host name" in done.stderr, done.stderr


def test_policy_names_what_it_serves():
    """The pure rule: loopback names always, the listening address, allowed names; any port; no Host is fine."""
    local = Policy.for_host("127.0.0.1", None)
    assert local.host_refusal("localhost:5000") == local.host_refusal("[::1]") == local.host_refusal(None) == ""
    assert "DNS rebinding" in local.host_refusal("evil.example")
    assert local.host_refusal("192.0.2.7")  # not listening there
    specific = Policy.for_host("192.0.2.7", TOKEN, ("zlb.test",))
    assert specific.host_refusal("192.0.2.7:5000") == specific.host_refusal("zlb.test") == ""
    assert specific.host_refusal("192.0.2.8") and specific.host_refusal("zlb.test.evil.example")
    assert specific.protect_reads and not local.protect_reads
    assert Policy.for_host("::", TOKEN).host_refusal("[2001:db8::5]:5000") == ""


def test_a_websocket_with_a_foreign_host_is_closed_before_the_app_sees_it():
    """The middleware refuses a websocket handshake the same way (the gateway serves none today)."""
    reached: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope)

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    check = HostCheck(app, Policy.for_host("127.0.0.1", None))
    scope = {"type": "websocket", "path": "/events", "headers": [(b"host", EVIL.encode())]}
    asyncio.run(check(scope, None, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
    asyncio.run(check({**scope, "headers": [(b"host", b"localhost:5000")]}, None, send))
    assert len(reached) == 1
