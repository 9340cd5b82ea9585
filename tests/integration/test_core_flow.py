"""End to end: real balancer, server and client processes on loopback."""

from __future__ import annotations

import json

from tests.harness import LiveBalancer, ProcessGroup, timeout_arg, wait_until


def client_results(proc_stdout: str) -> list[dict]:
    return [json.loads(line) for line in proc_stdout.splitlines() if line.startswith("{")]


def test_client_requests_are_spread_over_servers_and_all_processed(balancer: LiveBalancer, procs: ProcessGroup):
    """Six requests from one client reach three servers and all come back processed."""
    for i in range(3):
        balancer.start_server(i)
    balancer.wait_servers_active({0, 1, 2})
    args = ("client", "--id", "4", "--requests", "6", "--cost-ms", "100", "--json", "--timeout", timeout_arg(20))
    done = procs.run(*args)
    assert done.returncode == 0, done.stderr
    results = client_results(done.stdout)
    assert sorted(r["request_id"] for r in results) == [1, 2, 3, 4, 5, 6]
    assert {r["status"] for r in results} == {"processed"}
    assert {r["server_id"] for r in results} == {0, 1, 2}
    assert all(r["result"]["server_id"] == r["server_id"] for r in results)
    handled = {s["server_id"]: s["handled_requests"] for s in balancer.call("servers")}
    assert handled == {0: 2, 1: 2, 2: 2}


def test_killed_server_work_finishes_elsewhere(watchful_balancer: LiveBalancer, procs: ProcessGroup):
    """kill -9 of a busy node: it is declared dead and its requests finish on another node.

    Node 0's handler never returns (tests.reliability.handlers:stuck), so it is still busy with its first
    request whenever the kill lands, however slowly a busy machine lets the test get there."""
    balancer = watchful_balancer
    victim = balancer.start_server(0, handler="stuck")
    balancer.start_server(1)
    balancer.wait_servers_active({0, 1})
    client = procs.start("client", "client", "--id", "0", "--requests", "4", "--cost-ms", "100", "--json")
    wait_until(lambda: balancer.servers()[0]["in_flight"] == 1, 10, "server 0 to hold a request")
    procs.kill9(victim)
    balancer.wait_dead(0)
    assert client.wait(20) == 0, client.stderr()
    results = client_results(client.stdout())
    assert sorted(r["request_id"] for r in results) == [1, 2, 3, 4]
    assert {r["server_id"] for r in results} == {1}
    assert sorted(r["attempts"] for r in results) == [1, 1, 1, 2]
    servers = balancer.servers()
    assert servers[0]["active"] is False
    assert servers[1]["handled_requests"] == 4
