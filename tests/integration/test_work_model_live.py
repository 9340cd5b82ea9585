"""The work model end to end: services, deadlines, cancellation and dead letters through real processes."""

from __future__ import annotations

import json
import time

from tests.harness import (
    HEARTBEAT_MS,
    WATCHFUL_LIVENESS,
    Endpoints,
    LiveBalancer,
    ProcessGroup,
    scaled,
    start_balancer,
    timeout_arg,
    wait_until,
)
from tests.reliability.handlers import executions
from wire import control_client


def results(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def status_of(balancer: LiveBalancer, client_id: int, request_id: int) -> str | None:
    """The request's status, or None while the balancer has not heard of it."""
    try:
        return balancer.call("request", client_id=client_id, request_id=request_id)["status"]
    except control_client.ControlError:
        return None


def test_each_services_requests_run_only_on_its_own_nodes(balancer: LiveBalancer, procs: ProcessGroup):
    """Nodes offering resize (0, 1) and thumb (2): 20 requests of each run only on their own nodes, resize
    spread over both of its nodes; zlb servers and zlb requests show the services."""
    for node_id, service in ((0, "resize"), (1, "resize"), (2, "thumb")):
        balancer.start_server(node_id, "--service", service, "--capacity", "2")
    balancer.wait_servers_active({0, 1, 2})
    base = ("client", "--requests", "20", "--cost-ms", "20", "--json", "--timeout", timeout_arg(30))
    resize = procs.start("resize", *base, "--id", "1", "--service", "resize")
    thumb = procs.start("thumb", *base, "--id", "2", "--service", "thumb")
    assert resize.wait(40) == 0 and thumb.wait(40) == 0, resize.stderr() + thumb.stderr()
    on_resize = {r["server_id"] for r in results(resize.stdout())}
    on_thumb = {r["server_id"] for r in results(thumb.stdout())}
    assert (len(results(resize.stdout())), len(results(thumb.stdout()))) == (20, 20)
    assert on_resize == {0, 1} and on_thumb == {2}
    listed = procs.run("servers")
    assert "SERVICES" in listed.stdout and "resize" in listed.stdout and "thumb" in listed.stdout
    rows = json.loads(procs.run("requests", "--json", "--client", "2").stdout)
    assert {r["service"] for r in rows} == {"thumb"}
    services = balancer.call("status")["services"]
    assert (services["resize"]["nodes"], services["thumb"]["nodes"]) == (2, 1)


def test_a_request_for_a_service_no_node_offers_expires_at_its_deadline(balancer: LiveBalancer, procs: ProcessGroup):
    """zlb send --service nosuch --deadline-ms 500 exits non-zero within 5 s saying expired; zlb requests agrees."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    started = time.monotonic()
    sent = procs.run("send", "--client-id", "3", "--request-id", "1", "--service", "nosuch", "--deadline-ms", "500")
    assert time.monotonic() - started < scaled(5)
    assert sent.returncode != 0 and "expired" in sent.stdout, sent.stdout + sent.stderr
    rows = json.loads(procs.run("requests", "--json", "--client", "3").stdout)
    assert [(r["status"], r["service"]) for r in rows] == [("expired", "nosuch")]
    assert "waits: no live server offers service 'nosuch'" in procs.run("logs").stdout


def test_cancel_of_a_waiting_request_it_never_runs(balancer: LiveBalancer, procs: ProcessGroup, tmp_path):
    """A request waiting behind a held one is cancelled: its sender exits non-zero saying cancelled, and once
    the node is free it runs only the others."""
    log, gate = tmp_path / "exec.log", tmp_path / "gate"
    env = {"ZLB_TEST_EXEC_LOG": str(log), "ZLB_TEST_GATE": str(gate)}
    balancer.start_server(0, handler="gated_counting", env=env)
    balancer.wait_servers_active({0})
    held = procs.start("held", "send", "--client-id", "1", "--request-id", "1", "--timeout", timeout_arg(30))
    wait_until(lambda: status_of(balancer, 1, 1) == "assigned", 10, "the first request to run")
    waiting = procs.start("waiting", "send", "--client-id", "2", "--request-id", "1", "--timeout", timeout_arg(30))
    wait_until(lambda: balancer.call("status")["queue_depth"] == 1, 10, "the second request to wait")
    cancelled = procs.run("cancel", "--client-id", "2", "--request-id", "1")
    assert cancelled.returncode == 0 and "it never ran" in cancelled.stdout, cancelled.stderr
    assert waiting.wait(10) != 0 and "cancelled" in waiting.stdout()
    gate.touch()
    assert held.wait(20) == 0, held.stderr()
    assert executions(str(log)) == {(1, 1): 1}
    assert status_of(balancer, 2, 1) == "cancelled"


def test_cancel_of_a_running_request_frees_its_node_at_once(balancer: LiveBalancer, procs: ProcessGroup):
    """A request running for 20 s is cancelled: its sender is told within seconds and the node, capacity 1,
    runs the request that waited behind it at once, long before the 20 s are up."""
    balancer.start_server(0)
    balancer.wait_servers_active({0})
    long = procs.start("long", "send", "--client-id", "1", "--request-id", "1", "--cost-ms", "20000")
    wait_until(lambda: status_of(balancer, 1, 1) == "assigned", 10, "the long request to run")
    short = procs.start("short", "send", "--client-id", "2", "--request-id", "1", "--cost-ms", "10", "--json")
    wait_until(lambda: balancer.call("status")["queue_depth"] == 1, 10, "the short request to wait")
    started = time.monotonic()
    assert procs.run("cancel", "--client-id", "1", "--request-id", "1").returncode == 0
    assert long.wait(5) != 0 and "cancelled (stopped on Server 0)" in long.stdout()
    assert short.wait(5) == 0, short.stderr()
    assert time.monotonic() - started < scaled(5)
    assert [(r["status"], r["server_id"]) for r in results(short.stdout())] == [("processed", 0)]


def test_a_request_that_fails_every_attempt_is_a_dead_letter_and_retry_runs_it(
    procs: ProcessGroup, endpoints: Endpoints
):
    """Its nodes die on it twice (--max-attempts 2): its sender is told it is dead, zlb dead --json lists it
    with its attempts and error, and zlb retry runs it on a healthy node."""
    extra = ("--max-attempts", "2", "--retry-backoff-ms", "50")
    balancer = start_balancer(procs, endpoints, HEARTBEAT_MS, *extra, liveness=WATCHFUL_LIVENESS)
    for node_id in (0, 1):
        balancer.start_server(node_id, handler="always_dies")
    balancer.wait_servers_active({0, 1})
    sent = procs.run("send", "--client-id", "5", "--request-id", "9", "--timeout", timeout_arg(20), timeout=30)
    assert sent.returncode != 0 and "is dead after 2 attempts" in sent.stdout, sent.stdout + sent.stderr
    dead = json.loads(procs.run("dead", "--json").stdout)
    [letter] = dead["dead"]
    assert (letter["client_id"], letter["request_id"], letter["attempts"]) == (5, 9, 2)
    assert letter["error"].startswith("gave up after 2 attempts") and "(it died)" in letter["error"]
    balancer.start_server(2)
    balancer.wait_servers_active({2})
    assert procs.run("retry", "--client-id", "5", "--request-id", "9").returncode == 0
    wait_until(lambda: status_of(balancer, 5, 9) == "processed", 10, "the retried request to run")
    assert json.loads(procs.run("dead", "--json").stdout)["count"] == 0


def test_the_rest_api_sends_to_a_service_with_a_deadline_cancels_and_lists_dead_letters(
    balancer: LiveBalancer, procs: ProcessGroup
):
    """POST /send_request takes "service" and "deadline_ms" (a bad name is a 400 naming the rule), POST
    /cancel cancels, GET /dead and POST /retry answer, and /metrics counts per service."""
    from tests.test_http_gateway import start_gateway

    gateway = start_gateway(procs)
    bad = gateway.call("POST", "/send_request", {"client_id": 1, "request_id": 1, "service": "no spaces"})
    assert bad.status == 400 and "1 to 64 characters" in bad.json()["error"]
    sent = gateway.call("POST", "/send_request", {"client_id": 1, "request_id": 2, "service": "nosuch"})
    assert sent.status == 200, sent
    late = {"client_id": 1, "request_id": 3, "service": "nosuch", "deadline_ms": 200}
    assert gateway.call("POST", "/send_request", late).status == 200
    cancelled = gateway.call("POST", "/cancel", {"client_id": 1, "request_id": 2})
    assert cancelled.status == 200 and cancelled.json()["was"] == "pending"
    assert gateway.call("POST", "/cancel", {"client_id": 1, "request_id": 99}).status == 404
    wait_until(lambda: status_of(balancer, 1, 3) == "expired", 5, "the request past its deadline to expire")
    assert status_of(balancer, 1, 2) == "cancelled"
    assert gateway.get("/dead")["count"] == 0
    assert gateway.call("POST", "/retry", {"client_id": 1, "request_id": 2}).status == 400
    text = gateway.call("GET", "/metrics").body.decode()
    assert 'zlb_service_expired_total{service="nosuch"} 1.0' in text
    assert 'zlb_service_cancelled_total{service="nosuch"} 1.0' in text
