"""The core issue's scenario through the zlb commands alone: a cluster, a kill -9, nothing lost."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.harness import ProcessGroup, wait_until


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
    return {s["server_id"]: s for s in json.loads(done.stdout)} if done.returncode == 0 else {}


@pytest.mark.timeout(90)
def test_cluster_survives_kill_of_a_busy_node_and_stops_everything(procs: ProcessGroup):
    """3 nodes, 2 clients, kill -9 of a busy node: all processed, the node shown dead, Ctrl-C stops everything."""
    cluster = procs.start(
        "cluster",
        "cluster",
        "--servers",
        "3",
        "--clients",
        "2",
        "--requests-per-client",
        "6",
        "--cost-ms",
        "400",
        "--heartbeat-ms",
        "200",
        "--stay",  # the tables are read after the clients are done
    )
    wait_until(lambda: "✅ Request" in cluster.stdout() and "assigned to Server 1" in cluster.stdout(), 20, "work on 1")
    table = wait_until(lambda: servers(procs) if servers(procs).get(1, {}).get("in_flight") else None, 10, "busy 1")
    victim = table[1]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "Server 1 is dead" in cluster.stdout(), 3 * 0.2 + 2, "the monitor to show the death")
    wait_until(lambda: "All 2 clients finished" in cluster.stdout(), 40, "clients to finish")
    out = cluster.stdout()
    assert "All 2 clients finished: 12 requests sent, 0 clients failed." in out
    assert "re-queued" in out
    final = servers(procs)
    assert final[1]["active"] is False and final[1]["state"] == "dead"
    assert sum(s["handled_requests"] for s in final.values()) >= 12
    requests = json.loads(procs.run("requests", "--json").stdout)
    assert len(requests) == 12 and {r["status"] for r in requests} == {"processed"}
    children = [s["pid"] for s in final.values() if s["server_id"] != 1]
    cluster.popen.send_signal(signal.SIGINT)
    assert cluster.wait(15) == 0
    wait_until(lambda: not any(alive(pid) for pid in children), 10, "the cluster's nodes to stop")
