"""Credit end to end (issue 23): a Client keeps to the window its balancer grants instead of being refused
busy, a flooding client does not starve another, and a window shrinks when a second client brings work."""

from __future__ import annotations

import time

import pytest

from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, scaled, start_balancer, wait_until

MIB = 2**20


def busy(balancer: LiveBalancer) -> int:
    return balancer.call("status")["requests"]["busy"]


@pytest.mark.timeout(120)
def test_a_client_past_its_window_gets_every_answer_without_busy_refusals_or_re_sends(
    procs: ProcessGroup, endpoints: Endpoints
):
    """2,000 x 4 KiB (about 9 MiB) against a 1 MiB budget: the Client's byte window is its share of the budget,
    it keeps the rest queued at home, and every request is answered once, with no busy answer at the balancer
    and no re-send counted by the Client. (Before credit the same run drew busy refusals by the hundred.)"""
    balancer = start_balancer(procs, endpoints, 100, "--max-memory-mb", "1")
    for node_id in (1, 2):
        balancer.start_server(node_id, "--handler", "echo", "--capacity", "10")
    balancer.wait_servers_active({1, 2})
    payloads = [b"%05d" % i + b"x" * 4091 for i in range(2000)]
    with Client(endpoints.frontend, client_id=1) as client:
        pending = client.submit_many(payloads)
        assert client.queued > 0  # more than the window: the rest waits here
        results = {r.request_id: r for r in client.as_completed(timeout=scaled(60))}
        assert client.window[1] <= 0.75 * MIB  # its share of the 1 MiB budget, told in CLIENT_WELCOME
        assert (client.busy_notices, client.resent, client.conflicting_answers) == (0, 0, 0)
        assert client.credit_updates >= 1
    assert sorted(results) == [p.request_id for p in pending]
    assert all(r.ok and r.body == payloads[r.request_id - 1] for r in results.values())
    assert busy(balancer) == 0
    assert balancer.call("status")["requests"]["submitted"] == 2000


@pytest.mark.timeout(120)
def test_a_flooding_client_does_not_starve_another_or_draw_busy_answers(balancer: LiveBalancer):
    """`zlb client` floods 5,000 requests of 20 ms at 10 slots (10 s of work); a second client's 20 requests,
    sent once the flood is under way, are all answered while the flood is still far from done."""
    for node_id in (1, 2):
        balancer.start_server(node_id, "--capacity", "5")
    balancer.wait_servers_active({1, 2})
    flood = balancer.procs.start("flood", "client", "--id", "1", "--requests", "5000", "--cost-ms", "20")

    def under_way() -> bool:
        status = balancer.call("status")
        return status["requests"]["processed"] >= 50 and status["queue_depth"] > 0

    wait_until(under_way, 30, "the flood to be under way")
    with Client(balancer.endpoints.frontend, client_id=2) as other:
        pending = [other.submit(json_payload(20, i)) for i in range(20)]
        results = [p.result(timeout=scaled(30)) for p in pending]
    assert [r.value()["echo"] for r in results] == list(range(20)) and all(r.ok for r in results)
    status = balancer.call("status")
    assert status["requests"]["processed"] < 2500, status["requests"]  # the flood is far from done
    assert flood.popen.poll() is None and busy(balancer) == 0


@pytest.mark.timeout(120)
def test_a_window_shrinks_when_a_second_client_brings_work_and_grows_back_when_it_is_done(balancer: LiveBalancer):
    """A client alone has the whole request window and three quarters of the budget; once a second client
    holds requests, the first is told half of the bytes in a CREDIT (with its next results), and the whole
    again once the second one's requests are done (the requests share the measured rate: not exact)."""
    balancer.start_server(1, "--capacity", "10")
    balancer.wait_servers_active({1})
    with Client(balancer.endpoints.frontend, client_id=1) as first:
        first.submit_many(json_payload(20, i) for i in range(3000))  # 6 s of work at 10 slots: it keeps holding
        wait_until(lambda: first.pump(0.05) is not None and first.credit_updates > 0, 10, "the first window")
        alone = first.window
        assert alone[1] == int(0.75 * 256 * MIB)  # the default budget, --max-memory-mb 256
        with Client(balancer.endpoints.frontend, client_id=2) as second:
            pending = [second.submit(json_payload(20, i)) for i in range(30)]
            # The bytes are the budget's shares, exact; the requests follow the measured completion rate too.
            wait_until(lambda: second.pump(0.01) is not None and first.pump(0.05) is not None
                       and first.window[1] == alone[1] // 2, 20, "the first window halved")  # fmt: skip
            assert all(p.result(timeout=scaled(30)).ok for p in pending)
        whole = "the first window whole again"
        wait_until(lambda: first.pump(0.05) is not None and first.window[1] == alone[1], 20, whole)
        assert first.busy_notices == 0 and first.resent == 0


@pytest.mark.timeout(60)
def test_slow_work_is_not_queued_past_the_retry_timer_so_nothing_is_re_sent(procs: ProcessGroup, endpoints: Endpoints):
    """One node of capacity 1 and, once the Client has heard its window, 60 requests of 50 ms: the window
    follows the live capacity (16 at a time, 0.8 s of work), so no request waits at the balancer past the
    Client's 2.4 s retry timer. Under the old floor of 1,024 all 60 went at once, 3 s of queue, and the last
    dozen would be re-sent. (With a 1.5 s timer a loaded machine's 50 ms sleeps stretched the 0.8 s past it.)"""
    balancer = start_balancer(procs, endpoints, 100)
    balancer.start_server(1, "--capacity", "1")  # the seed's simulate handler: it sleeps cost_ms
    balancer.wait_servers_active({1})
    with Client(endpoints.frontend, client_id=1, retry_s=2.4) as client:
        # Requests one at a time until a result brings the window the balancer sized at its tick after the
        # node joined (a burst before that may be 1,024: the window with no live node).
        wait_until(lambda: client.submit(json_payload(1, "probe")).result(timeout=scaled(10)).ok
                   and client.window[0] <= 16, 10, "the window to follow the live capacity")  # fmt: skip
        pending = client.submit_many(json_payload(50, i) for i in range(60))
        results = {r.request_id: r for r in client.as_completed(timeout=scaled(40))}
        assert client.window[0] <= 16 and client.resent == 0
    assert sorted(results) == [p.request_id for p in pending] and all(r.ok for r in results.values())
    assert balancer.call("status")["requests"]["duplicates"] == 0


@pytest.mark.timeout(60)
def test_a_client_back_from_a_pause_reads_its_answers_before_re_sending(procs: ProcessGroup, endpoints: Endpoints):
    """Answers that arrived while the caller was away (longer than retry_s) are read before the re-send scan
    judges anything overdue: nothing is re-sent. It re-sent its whole window before."""
    balancer = start_balancer(procs, endpoints, 100)
    balancer.start_server(1, "--capacity", "50")  # simulate: 200 ms a request, so the last answers come late
    balancer.wait_servers_active({1})
    # A request waits at most 4 x 200 ms here (the window is 4 x the capacity), well under retry_s.
    with Client(endpoints.frontend, client_id=1, retry_s=1.5) as client:
        pending = client.submit_many(json_payload(200, i) for i in range(500))
        wait_until(lambda: client.pump(0.01) is not None and client.queued == 0, 20, "all 500 sent")
        left = len(client.outstanding)  # sent, not yet answered: their answers will wait in the socket
        wait_until(lambda: balancer.call("status")["requests"]["processed"] == 500, 20, "all 500 processed")
        time.sleep(2.0)  # wait-ok: the pause under test, longer than retry_s, with every answer waiting
        results = {r.request_id: r for r in client.as_completed(timeout=scaled(20))}
        assert client.resent == 0 and left > 0
    assert sorted(results) == [p.request_id for p in pending]
    assert balancer.call("status")["requests"]["duplicates"] == 0
