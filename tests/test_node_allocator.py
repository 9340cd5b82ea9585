"""server_node/allocator.py: glibc set for big payloads at the first one, its heap given back once idle."""

from __future__ import annotations

import pytest

from client_node.client import Client
from server_node.allocator import BIG_PAYLOAD_BYTES, IDLE_S, Allocator
from tests.harness import LiveBalancer, wait_until


def test_small_payloads_change_nothing_and_a_big_one_tunes_once_then_trims_once_per_idle_spell():
    allocator = Allocator()
    allocator.saw(BIG_PAYLOAD_BYTES, 10.0)  # not over: small
    assert not allocator.tuned and not allocator.idle(100.0)
    allocator.saw(BIG_PAYLOAD_BYTES + 1, 10.0)
    assert allocator.tuned
    assert not allocator.idle(10.0 + IDLE_S / 2)  # not idle long enough
    assert allocator.idle(10.0 + IDLE_S)
    assert not allocator.idle(20.0)  # once per idle spell
    allocator.saw(2 * BIG_PAYLOAD_BYTES, 30.0)
    assert allocator.idle(30.0 + IDLE_S)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        line = next(line for line in fh if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.timeout(60)
def test_a_node_gives_back_the_memory_of_big_payloads_once_idle(balancer: LiveBalancer):
    """A node that ran 48 payloads of 1 MiB, 16 at a time, holds far more than it did idle (glibc keeps the freed
    buffers: under its trim threshold, about 80 MiB); IDLE_S after its last one it is back within 24 MiB of
    where it started."""
    node = balancer.start_server(0, "--capacity", "16", "--handler", "echo")
    balancer.wait_servers_active({0})
    wait_until(lambda: _rss_mib(node.pid) > 0, 5, "the node's RSS")
    idle = _rss_mib(node.pid)
    payload = b"m" * 2**20
    peak = idle
    with Client(balancer.endpoints.frontend, client_id=31) as client:
        client.submit_many([payload] * 48)
        bodies = []
        for result in client.as_completed(timeout=40):
            bodies.append(result.body)
            peak = max(peak, _rss_mib(node.pid))
    assert len(bodies) == 48 and all(body == payload for body in bodies)
    assert peak > idle + 24
    wait_until(lambda: _rss_mib(node.pid) <= idle + 24, 10 + IDLE_S, "the node's memory back once idle")
