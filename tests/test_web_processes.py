"""/configure's request-id blocks: each client its own block, continued across gateway restarts."""

from __future__ import annotations

import signal

import pytest

from http_gateway.processes import MAX_REQUESTS_PER_CLIENT, REQUEST_ID_BLOCK, NodeSettings, Processes
from process_supervisor.supervisor import Supervisor
from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import start_gateway


def processes_knowing(known: set[tuple[int, int]]) -> tuple[Processes, list[tuple[int, int]]]:
    asked: list[tuple[int, int]] = []

    def lookup(client_id: int, request_id: int) -> bool:
        asked.append((client_id, request_id))
        return (client_id, request_id) in known

    return Processes(Supervisor(), NodeSettings(), lambda: [], lambda *_batch: None, lookup), asked


@pytest.mark.parametrize("used", [0, 1, 2, 37, 1000, MAX_REQUESTS_PER_CLIENT])
def test_used_ids_of_a_block_are_found_by_binary_search(used: int):
    """The end of the prefix of ids the balancer knows is found in about 17 lookups, whatever its length."""
    start = 2 * REQUEST_ID_BLOCK + 1
    processes, asked = processes_knowing({(1, start + i) for i in range(used)})
    assert processes._used_before(1) == used
    assert len(asked) <= 18
    assert processes._used_before(0) == 0  # another client's block is its own


@pytest.mark.timeout(60)
def test_a_restarted_gateway_continues_each_clients_block(balancer: LiveBalancer, procs: ProcessGroup):
    """After a gateway restart in front of the same balancer, /configure's clients send new ids, not replays."""
    spec = {"num_servers": 1, "num_clients": 1, "requests_per_client": 2}
    first = start_gateway(procs, "--cost-ms", "10")
    assert first.call("POST", "/configure", spec).status == 200
    wait_until(lambda: len(first.get("/requests?status=processed")) == 2, 15, "the first two requests")
    first.proc.popen.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0
    second = start_gateway(procs, "--cost-ms", "10")
    assert second.call("POST", "/configure", spec).status == 200
    wait_until(lambda: len(second.get("/requests?status=processed")) == 4, 15, "two more requests")
    assert [r["request_id"] for r in second.get("/requests")] == [100001, 100002, 100003, 100004]
