"""The dashboard's event stream: one subscription to the balancer, pushed to every open page."""

from __future__ import annotations

import http.client
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import LiveGateway, start_gateway

PAGES = 20


class EventReader:
    """One page's `GET /events`, read event by event."""

    def __init__(self, gateway: LiveGateway) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")

    def next_event(self) -> tuple[str, Any]:
        name, data = "", ""
        while True:
            line = self.resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                return name, json.loads(data)

    def until_state(self, predicate: Any) -> dict[str, Any]:
        while True:
            name, data = self.next_event()
            if name == "state" and data.get("up") and predicate(data):
                return data

    def close(self) -> None:
        self.conn.close()


def established_to(pid: int, port: int) -> int:
    """TCP connections of process `pid` whose remote end is 127.0.0.1:`port` and that are established."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if inode in inodes and state == "01" and remote == f"0100007F:{port:04X}":
                count += 1
    return count


@pytest.mark.timeout(60)
def test_one_subscription_pushes_a_change_to_every_page(balancer: LiveBalancer, procs: ProcessGroup):
    """Twenty open pages each get server 1's down pushed, while the gateway holds one connection to the events."""
    gateway = start_gateway(procs)
    assert (
        gateway.call("POST", "/configure", {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}).status == 200
    )
    pages = [EventReader(gateway) for _ in range(PAGES)]
    try:
        for page in pages:
            page.until_state(lambda s: [n["state"] for n in s["servers"]] == ["active", "active"])
        events_port = int(balancer.endpoints.events.rsplit(":", 1)[1])
        assert established_to(gateway.proc.pid, events_port) == 1
        assert gateway.call("POST", "/server_down/1").status == 200
        with ThreadPoolExecutor(PAGES) as pool:
            states = list(pool.map(lambda p: p.until_state(lambda s: s["servers"][1]["state"] == "down"), pages))
        assert all(s["servers"][1]["state"] == "down" for s in states)
        wait_until(lambda: established_to(gateway.proc.pid, events_port) == 1, 1, "still one subscription")
    finally:
        for page in pages:
            page.close()
