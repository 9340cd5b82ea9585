"""The core issue's scenario through the zlb commands alone: a cluster, a kill -9, nothing lost."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.harness import Endpoints, ProcessGroup, scaled, wait_until
from wire import control_client


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:  # reaped between the two looks
        return False


def servers(procs: ProcessGroup) -> dict[int, dict]:
    done = procs.run("servers", "--json")
    assert done.returncode == 0, done.stderr
    return {s["server_id"]: s for s in json.loads(done.stdout)}


def busy_nodes(endpoints: Endpoints) -> dict[int, int]:
    """{server id: pid} of the nodes running a request now, asked on the control socket (no process start-up)."""
    try:
        table = control_client.call(endpoints.control, "servers", timeout_s=scaled(3))
    except control_client.BalancerUnreachable:
        return {}  # the cluster's balancer is still starting
    return {s["server_id"]: s["pid"] for s in table if s["in_flight"] and s["active"]}


@pytest.mark.timeout(90)
def test_cluster_survives_kill_of_a_busy_node_and_stops_everything(procs: ProcessGroup, endpoints: Endpoints):
    """3 nodes, 2 clients, kill -9 of a busy node: all processed, the node shown dead, Ctrl-C stops everything.

    The victim is whichever node is busy when the test looks (on a busy machine one node may join after
    the others have done all the work), and each request lasts 1 s, so it is still running when the kill lands."""
    cluster = procs.start(
        "cluster",
        "cluster",
        "--servers",
        "3",
        "--clients",
        "2",
        "--requests-per-client",
        "3",
        "--cost-ms",
        "1000",
        "--heartbeat-ms",
        "200",
        "--liveness",
        "5",  # dead after 1 s of silence: the kill's death, never a starved machine's
        "--stay",  # the tables are read after the clients are done
    )

    def busy() -> dict[int, int]:
        assert cluster.popen.poll() is None, f"zlb cluster ended early: {cluster.stderr()}"
        return busy_nodes(endpoints)

    busy = wait_until(busy, 20, "a node running a request")
    victim = min(busy)
    os.kill(busy[victim], signal.SIGKILL)
    wait_until(lambda: f"Server {victim} is dead" in cluster.stdout(), 0.2 * 5 + 5, "the cluster to show the death")
    wait_until(lambda: "All 2 clients finished" in cluster.stdout(), 40, "clients to finish")
    out = cluster.stdout()
    assert "All 2 clients finished: 6 requests sent, 0 clients failed." in out
    assert "re-queued" in out
    final = servers(procs)
    assert final[victim]["active"] is False and final[victim]["state"] == "dead"
    assert sum(s["handled_requests"] for s in final.values()) >= 6
    requests = json.loads(procs.run("requests", "--json").stdout)
    assert len(requests) == 6 and {r["status"] for r in requests} == {"processed"}
    assert max(r["attempts"] for r in requests) == 2, "the victim's request ran again elsewhere"
    assert all(r["server_id"] != victim for r in requests if r["attempts"] == 2)
    children = [s["pid"] for s in final.values() if s["server_id"] != victim]
    cluster.popen.send_signal(signal.SIGINT)
    assert cluster.wait(15) == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 10, "the cluster's nodes to stop")
