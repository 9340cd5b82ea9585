"""`zlb cluster --http PORT`: the seed README's curl sequence, back to back, against the whole system."""

from __future__ import annotations

import pytest

from tests.harness import ProcessGroup, free_port, wait_until
from tests.test_http_gateway import LiveGateway, untimed

SEED_SEQUENCE = [
    ("POST", "/configure", {"num_servers": 3, "num_clients": 2, "requests_per_client": 2}, 200,
     {"servers": 3, "clients": 2, "requests_per_client": 2}),
    ("POST", "/send_request", {"client_id": 0, "request_id": 101, "priority": 1}, 200,
     {"message": "Request 101 added successfully!"}),
    ("GET", "/requests", None, 200, None),
    ("GET", "/servers", None, 200, None),
    ("POST", "/server_down/1", None, 200, {"message": "Server 1 marked as down"}),
    ("POST", "/server_up/1", None, 200, {"message": "Server 1 marked as up"}),
    ("GET", "/logs", None, 200, None),
]  # fmt: skip


@pytest.mark.timeout(60)
def test_cluster_http_serves_the_seed_sequence_back_to_back(procs: ProcessGroup):
    """Each seed call, sent as soon as the previous one answers, gets the seed's status and body."""
    port = free_port()
    cluster = procs.start("cluster", "cluster", "--http", str(port))
    gateway = LiveGateway(cluster, f"http://127.0.0.1:{port}")

    def serving() -> bool:
        assert cluster.popen.poll() is None, cluster.stderr()
        try:
            return gateway.call("GET", "/healthz").status == 200
        except OSError:
            return False

    wait_until(serving, 20, "zlb cluster's REST API")
    said = f"Dashboard at http://127.0.0.1:{port}/"
    wait_until(lambda: said in cluster.stderr(), 5, "where the dashboard is, on stderr")
    replies = [(gateway.call(method, path, body), status, want) for method, path, body, status, want in SEED_SEQUENCE]
    for (reply, status, want), call in zip(replies, SEED_SEQUENCE):
        assert reply.status == status, (call, reply)
        if want is not None:
            assert reply.json() == want, call
    requests, servers, logs = replies[2][0].json(), replies[3][0].json(), replies[6][0].json()
    assert [(r["client_id"], r["request_id"], r["priority"]) for r in requests if r["request_id"] == 101] == [
        (0, 101, 1)
    ]
    assert [(s["server_id"], s["active"]) for s in servers] == [(0, True), (1, True), (2, True)]
    assert all(type(s["handled_requests"]) is int for s in servers)
    lines = untimed(logs["logs"])
    assert "System configured with 3 servers and 2 clients." in lines
    assert "Request 101 from Client 0 added to queue with priority 1" in lines
    # The balancer logs an admin change just after answering it, so the newest line may still be the down.
    assert any(line.startswith("Server 1 marked as down") for line in lines)
