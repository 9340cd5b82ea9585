"""The gateway refuses what another site's page could make a browser send, and survives many client ids."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import LiveGateway, start_gateway


def post(gateway: LiveGateway, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """One POST with exactly these headers (http.client adds Host and Content-Length only)."""
    url = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_cross_site_posts_are_refused_and_change_nothing(balancer: LiveBalancer, procs: ProcessGroup):
    """Another origin, a non-JSON body or a non-loopback Host is refused (403/415/421); same-origin JSON works."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    gateway = start_gateway(procs)
    host = urlsplit(gateway.url).netloc
    spec = json.dumps({"num_servers": 0, "num_clients": 0, "requests_per_client": 0}).encode()
    evil = {"Origin": "http://127.0.0.1:9", "Content-Type": "application/json"}
    assert post(gateway, "/server_down/0", b"", evil)[0] == 403
    assert post(gateway, "/configure", spec, {"Content-Type": "text/plain"})[0] == 415
    assert post(gateway, "/configure", spec, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert post(gateway, "/server_down/0", b"", {"Host": f"evil.example:{urlsplit(gateway.url).port}"})[0] == 421
    assert balancer.servers()[0]["state"] == "active"  # nothing above changed anything
    same = {"Origin": f"http://{host}", "Content-Type": "application/json"}
    assert post(gateway, "/server_down/0", b"", same)[0] == 200
    assert balancer.servers()[0]["state"] == "down"


@pytest.mark.timeout(120)
def test_many_client_ids_never_break_send_request(balancer: LiveBalancer, procs: ProcessGroup):
    """1,200 distinct client ids through /send_request: every one queued, and the gateway still serves after."""
    balancer.start_server(0, "--capacity", "64")
    balancer.wait_servers_active({0})
    gateway = start_gateway(procs, "--cost-ms", "0")
    for client_id in range(1200):
        reply = gateway.call("POST", "/send_request", {"client_id": client_id, "request_id": 1})
        assert reply.status == 200, (client_id, reply.status, reply.body)
    wait_until(lambda: len(gateway.get("/requests?status=processed&limit=0")) == 1200, 60, "all 1,200 processed")
    assert gateway.call("POST", "/send_request", {"client_id": 0, "request_id": 2}).status == 200


@pytest.mark.timeout(60)
def test_configure_keeps_an_admins_down_and_answers_at_once(balancer: LiveBalancer, procs: ProcessGroup):
    """/configure after /server_down/1 answers 200 (a down node is there, not missing) and leaves it down."""
    gateway = start_gateway(procs, "--cost-ms", "0")
    spec = {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}
    assert gateway.call("POST", "/configure", spec).status == 200
    assert gateway.call("POST", "/server_down/1").status == 200
    assert gateway.call("POST", "/configure", spec).status == 200
    assert [s["state"] for s in gateway.get("/servers")] == ["active", "down"]
