"""End to end: an admin's down across a node's death and rejoin, pipelined control queries, paging by key."""

from __future__ import annotations

import json

import zmq

from client_node.client import Client, json_payload
from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import start_gateway
from wire import limits
from wire import protocol as p


def node_process(procs: ProcessGroup, node_id: int):
    (proc,) = [pr for pr in procs.procs if pr.name.startswith(f"server-{node_id}-") and pr.popen.poll() is None]
    return proc


def test_an_admins_down_survives_the_nodes_death_and_rejoin(balancer: LiveBalancer, procs: ProcessGroup):
    """A downed node killed with -9 and started again under its id stays down, says so, and gets no work."""
    balancer.start_server(0)
    balancer.start_server(1)
    balancer.wait_servers_active({0, 1})
    assert procs.run("down", "0").returncode == 0
    procs.kill9(node_process(procs, 0))
    wait_until(lambda: balancer.servers()[0]["state"] == "dead", 10, "node 0 declared dead")
    balancer.start_server(0)
    row = wait_until(lambda: (s := balancer.servers()[0])["state"] != "dead" and s, 15, "node 0 back")
    assert (row["state"], row["admin"]) == ("down", "down")
    listing = procs.run("servers")
    assert "down (by admin until zlb up)" in listing.stdout, listing.stdout
    assert "Server 0 rejoined and stays down" in "\n".join(balancer.call("logs", limit=50))
    done = procs.run("client", "--id", "3", "--requests", "5", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert {r["server_id"] for r in balancer.call("requests", client=3)} == {1}
    assert procs.run("up", "0").returncode == 0
    procs.kill9(node_process(procs, 0))
    wait_until(lambda: balancer.servers()[0]["state"] == "dead", 10, "node 0 declared dead again")
    balancer.start_server(0)
    wait_until(lambda: balancer.servers()[0]["state"] == "active", 15, "node 0 back, active after up")


def fill(balancer: LiveBalancer, count: int) -> None:
    """COUNT requests from client 5 that wait (no node is up). Sent as raw SUBMIT_BATCHes: a Client would keep
    all but its window at home while no node serves them (docs/PROTOCOL.md, "Credit"); a socket that says no
    CLIENT_HELLO is held to the memory budget alone. It leaves, its requests stay."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(balancer.endpoints.frontend)
    try:
        for first in range(1, count + 1, limits.BATCH_ITEMS):
            items = [[rid, 5, json_payload(0)] for rid in range(first, min(count + 1, first + limits.BATCH_ITEMS))]
            sock.send(p.encode(p.MsgType.SUBMIT_BATCH, 5, 55, items))
        wait_until(lambda: balancer.call("status")["queue_depth"] == count, 20, f"{count} queued")
    finally:
        sock.close(linger=0)


def walk(balancer: LiveBalancer, limit: int) -> list[tuple[str, list[dict]]]:
    """Every page of the listing with the key that asks for it."""
    pages, key = [], ""
    while key is not None:
        reply = balancer.call("requests", after=key, limit=limit)
        pages.append((key, reply["requests"]))
        key = reply["next"]
    return pages


def test_pipelined_queries_on_one_connection_are_all_answered_in_order(balancer: LiveBalancer):
    """200 paged queries (and some garbage) sent at once on one DEALER all get their own answer, in order."""
    fill(balancer, 3_000)
    pages = walk(balancer, 100)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(balancer.endpoints.control)
    try:
        expected = []
        for i in range(200):
            if i % 40 == 39:
                sock.send(b"\xc1 not msgpack")
                expected.append(None)
                continue
            key, rows = pages[i % len(pages)]
            sock.send(p.encode_map({"cmd": "requests", "after": key, "limit": 100}))
            expected.append(rows)
        got = []
        while len(got) < len(expected):
            assert sock.poll(30_000), f"only {len(got)} of {len(expected)} answered"
            got.append(p.decode_map(sock.recv(), limit=2**24))
    finally:
        sock.close(linger=0)
    for want, reply in zip(expected, got):
        if want is None:
            assert not reply["ok"] and "bad message" in reply["error"]
        else:
            assert reply["ok"] and reply["result"]["requests"] == want


def test_paging_by_key_lists_every_request_once_while_the_queue_changes(balancer: LiveBalancer):
    """Requests move from waiting to running to done, and new ones arrive, between pages: each is listed once."""
    balancer.start_server(0, "--capacity", "4")
    balancer.start_server(1, "--capacity", "4")
    balancer.wait_servers_active({0, 1})
    with Client(balancer.endpoints.frontend, client_id=8, retry_s=None) as client:
        client.submit_many(json_payload(2) for _ in range(600))
        # The Client sends within its window as answers come back: pumped until the balancer has all 600.
        wait_until(lambda: client.pump(0.01) is not None and len(balancer.call("requests", client=8)) == 600, 20,
                   "600 accepted")  # fmt: skip
        before = {r["request_id"] for r in balancer.call("requests", client=8)}
        seen, key = [], ""
        while key is not None:
            reply = balancer.call("requests", after=key, limit=25)
            seen += [(r["client_id"], r["request_id"]) for r in reply["requests"]]
            key = reply["next"]
            client.submit_many(json_payload(2) for _ in range(3))  # arrivals between pages
        client.pump(0)
    assert len(seen) == len(set(seen))  # none twice
    assert before <= {rid for cid, rid in seen if cid == 8}  # none that stayed remembered missed
    assert [rid for _cid, rid in seen] == sorted(rid for _cid, rid in seen)  # arrival order (one client's ids)


def test_the_cli_and_the_gateway_page_by_key(balancer: LiveBalancer, procs: ProcessGroup):
    """zlb requests says how to go on and goes on; GET /requests names its next page in a Link header."""
    fill(balancer, 30)
    head = procs.run("requests", "--limit", "10", "--json")
    assert head.returncode == 0, head.stderr
    first = [r["request_id"] for r in json.loads(head.stdout)]
    key = head.stderr.split("--after ")[1].split()[0]
    rest = procs.run("requests", "--after", key, "--limit", "0", "--json")
    assert first + [r["request_id"] for r in json.loads(rest.stdout)] == list(range(1, 31))
    assert "More follow" not in rest.stderr
    too_far = procs.run("requests", "--offset", "20000")
    assert too_far.returncode == 2 and "20000 is not in the range" in too_far.stderr
    gateway = start_gateway(procs)
    rows, path = [], "/requests?limit=7"
    while path:
        reply = gateway.call("GET", path)
        assert reply.status == 200
        rows += reply.json()
        link = reply.headers.get("Link")
        path = link[1 : link.index(">")] if link else None
    assert [r["request_id"] for r in rows] == list(range(1, 31))
    refused = gateway.call("GET", "/requests?offset=20000")
    assert refused.status == 400 and "?after=" in refused.json()["error"]
    garbled = gateway.call("GET", "/requests?after=zz")
    assert garbled.status == 400 and "must be a key" in garbled.json()["error"]
