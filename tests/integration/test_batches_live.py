"""Batches end to end (protocol 3): SUBMIT_BATCH, WORK_BATCH, DONE_BATCH and RESULT_BATCH between real processes.

Real `zlb` balancers and echo nodes on fresh loopback ports; where a test must see or shape the
batches themselves, a raw DEALER plays the node (HELLO, heartbeats with held tickets) or the client.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from client_node.client import Client
from tests.harness import LiveBalancer, wait_until
from wire import limits
from wire import protocol as p
from wire.batching import batches
from wire.protocol import MsgType


class FakeNode:
    """A raw DEALER on the backend speaking the node protocol by hand; `pump` keeps it alive."""

    def __init__(self, backend: str, capacity: int = 500) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"fake-node-{secrets.token_hex(6)}".encode())
        self.sock.connect(backend)
        self.node_id: int | None = None
        self.held: dict[int, list[Any]] = {}  # ticket -> WORK_BATCH item, received and not answered
        self.batches: list[list[list[Any]]] = []  # the items of every WORK_BATCH received
        self.singles: list[list[Any]] = []  # every single WORK received, as [*fields, payload]
        self.seen: list[MsgType] = []
        self.max_seen = 0
        self._beat_at = 0.0
        hello = p.encode(MsgType.HELLO, None, capacity, os.getpid(), "test", secrets.randbits(64), 0)
        self.sock.send_multipart([hello, p.encode_tickets([])])
        wait_until(lambda: self.pump(0.02) or self.node_id is not None, 5, "WELCOME for the fake node")

    def pump(self, timeout: float = 0.0) -> None:
        """Take every waiting message (waiting up to `timeout` for the first), then heartbeat if due."""
        ms = int(timeout * 1000)
        while self.sock.poll(ms):
            ms = 0
            frames = self.sock.recv_multipart()
            msg_type, fields = p.decode(frames[0])
            self.seen.append(msg_type)
            if msg_type is MsgType.WELCOME:
                self.node_id = fields[0]
            elif msg_type in (MsgType.WORK_BATCH, MsgType.WORK):
                if msg_type is MsgType.WORK_BATCH:
                    items = fields[0]
                    self.batches.append(items)
                else:
                    items = [[*fields, frames[1]]]
                    self.singles.append(items[0])
                for item in items:
                    self.held[item[0]] = item
                    self.max_seen = max(self.max_seen, item[0])
        if self.node_id is not None and time.monotonic() >= self._beat_at:  # liveness is 3 x 100 ms
            self._beat_at = time.monotonic() + 0.03
            beat = p.encode(MsgType.HEARTBEAT, len(self.held), 0, 0, self.max_seen)
            self.sock.send_multipart([beat, p.encode_tickets(self.held)])

    def received(self) -> int:
        return sum(map(len, self.batches))

    def answer(self, done: list[list[Any]]) -> None:
        """Send these [ticket, ok, result] items as one DONE_BATCH."""
        self.sock.send(p.encode(MsgType.DONE_BATCH, done))
        for ticket, _ok, _result in done:
            self.held.pop(ticket, None)

    def serve_until(self, predicate: Callable[[], Any], timeout: float, message: str) -> Any:
        """Wait for `predicate` while heartbeating."""
        return wait_until(lambda: self.pump(0.02) or predicate(), timeout, message)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def fake_node(balancer: LiveBalancer):
    node = FakeNode(balancer.endpoints.backend)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def raw_client(balancer: LiveBalancer):
    """A raw DEALER on the frontend."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"raw-client-{secrets.token_hex(6)}".encode())
    sock.connect(balancer.endpoints.frontend)
    try:
        yield sock
    finally:
        sock.close(linger=0)


Replies = list[tuple[MsgType, list[Any]]]


def take(sock: zmq.Socket, into: Replies) -> None:
    """Decode every message waiting on a raw client socket into `into`."""
    while sock.poll(0):
        msg_type, fields = p.decode(sock.recv_multipart()[0])
        into.append((msg_type, fields))


def collect(sock: zmq.Socket, enough: Callable[[Replies], bool], message: str, node: FakeNode | None = None) -> Replies:
    """The replies a raw client receives until `enough` of them (the fake node, if any, heartbeats meanwhile)."""
    replies: Replies = []

    def done() -> bool:
        take(sock, replies)
        return enough(replies)

    if node is None:
        wait_until(done, 10, message)
    else:
        node.serve_until(done, 10, message)
    return replies


def result_items(replies: Replies) -> list[list[Any]]:
    return [item for msg_type, fields in replies if msg_type is MsgType.RESULT_BATCH for item in fields[0]]


def echo_nodes(balancer: LiveBalancer, count: int = 2) -> None:
    for i in range(count):
        balancer.start_server(i, "--handler", "echo", "--capacity", "100")
    balancer.wait_servers_active(set(range(count)))


@pytest.mark.timeout(90)
def test_submit_many_of_3000_through_echo_nodes_runs_each_exactly_once(balancer: LiveBalancer):
    """3,000 submit_many requests over 2 echo nodes: one result each, body equal to payload, counters agree."""
    echo_nodes(balancer)
    payloads = [b"\x00\xff" + i.to_bytes(4, "big") + b"-payload" for i in range(3000)]
    with Client(balancer.endpoints.frontend, client_id=11) as client:
        pendings = client.submit_many(payloads, priority=3)
        results = list(client.as_completed(timeout=60))
        assert client.conflicting_answers == 0 and client.bad_messages == 0
    ids = [pending.request_id for pending in pendings]
    assert len(set(ids)) == 3000
    assert sorted(r.request_id for r in results) == sorted(ids)
    sent = dict(zip(ids, payloads))
    assert all(r.ok and r.body == sent[r.request_id] for r in results), [r for r in results if not r.ok][:3]
    status = balancer.call("status")
    assert status["requests"]["submitted"] == 3000 and status["requests"]["processed"] == 3000
    assert status["requests"]["failed"] == 0 and status["queue_depth"] == 0 and status["in_flight"] == 0
    handled = [s["handled_requests"] for s in balancer.servers().values()]
    assert sum(handled) == 3000 and all(h > 0 for h in handled), handled


@pytest.mark.timeout(60)
def test_a_node_gets_work_in_batches_and_one_done_batch_answers_them_all(balancer: LiveBalancer, fake_node: FakeNode):
    """300 requests from submit_many reach a capacity-500 node as WORK_BATCHes of many; one DONE_BATCH finishes all."""
    with Client(balancer.endpoints.frontend, client_id=12) as client:
        pendings = client.submit_many([f"job-{i}".encode() for i in range(300)])
        fake_node.serve_until(lambda: fake_node.received() >= 300, 10, "300 work items at the fake node")
        assert max(map(len, fake_node.batches)) > 1 and len(fake_node.batches) < 300
        items = [item for batch in fake_node.batches for item in batch]
        assert len({item[0] for item in items}) == 300  # one ticket each
        assert {(item[1], item[2]) for item in items} == {(12, pending.request_id) for pending in pendings}
        fake_node.answer([[ticket, True, b"done:" + payload] for ticket, *_, payload in items])
        got: dict[int, Any] = {}

        def all_back() -> bool:
            client.pump(0.01)
            got.update((r.request_id, r) for r in client.take_results())
            return len(got) == 300

        fake_node.serve_until(all_back, 10, "300 results at the client")
    assert all(got[pd.request_id].body == f"done:job-{pd.request_id - 1}".encode() for pd in pendings)
    assert all(r.ok and r.server_id == fake_node.node_id and r.attempts == 1 for r in got.values())
    assert balancer.call("status")["requests"]["processed"] == 300


@pytest.mark.timeout(60)
def test_a_raw_submit_batch_of_100_comes_back_as_one_result_batch(
    balancer: LiveBalancer, fake_node: FakeNode, raw_client: zmq.Socket
):
    """A SUBMIT_BATCH of 100, answered by the node in one DONE_BATCH, reaches the client as one RESULT_BATCH of 100."""
    batch = [[i, 5, b"raw-%d" % i] for i in range(1, 101)]
    raw_client.send(p.encode(MsgType.SUBMIT_BATCH, 31, secrets.randbits(64), batch))
    fake_node.serve_until(lambda: fake_node.received() >= 100, 10, "100 work items at the fake node")
    items = [item for work in fake_node.batches for item in work]
    fake_node.answer([[ticket, True, payload.upper()] for ticket, *_, payload in items])
    replies = collect(raw_client, lambda got: len(result_items(got)) >= 100, "100 results", fake_node)
    assert [t for t, _ in replies] == [MsgType.RESULT_BATCH], replies[:3]
    by_id = {item[0]: item for item in result_items(replies)}
    assert sorted(by_id) == list(range(1, 101))
    for request_id, status, server_id, attempts, replay, body in by_id.values():
        assert (status, server_id, attempts, replay) == ("processed", fake_node.node_id, 1, False)
        assert body == b"RAW-%d" % request_id


@pytest.mark.timeout(60)
def test_big_payloads_split_into_batches_and_come_back_intact(balancer: LiveBalancer):
    """20 payloads of 300 KiB (past BATCH_BYTES and MAX_HEADER_BYTES) through echo nodes come back byte for byte."""
    echo_nodes(balancer)
    payloads = [bytes([i]) * 1024 + os.urandom(299 * 1024) for i in range(20)]
    assert len(batches([(0, 0, x) for x in payloads], lambda u: len(u[2]))) > 1  # the client must split
    with Client(balancer.endpoints.frontend, client_id=13) as client:
        pendings = client.submit_many(payloads)
        results = {r.request_id: r for r in client.as_completed(timeout=30)}
    assert len(results) == 20
    for pending, payload in zip(pendings, payloads):
        result = results[pending.request_id]
        assert result.ok and len(result.body) == 300 * 1024 and result.body == payload
    status = balancer.call("status")
    assert status["requests"]["processed"] == 20 and status["bad_input"] == {}


@pytest.mark.timeout(60)
def test_a_big_payload_travels_alone_in_the_single_forms(balancer: LiveBalancer, fake_node: FakeNode):
    """A big payload skips the batch frame on every hop (copying it in and out of msgpack cost a third
    of the throughput at 256 KiB): the node gets it as WORK with its own body frame and answers with
    DONE and a body; the small ones around it still ride in batches; all three come back intact."""
    big = os.urandom(limits.LONE_PAYLOAD_BYTES + 8 * 1024)
    with Client(balancer.endpoints.frontend, client_id=21) as client:
        pendings = client.submit_many([b"small-1", big, b"small-2"])
        fake_node.serve_until(lambda: len(fake_node.held) >= 3, 10, "three requests at the fake node")
        assert [item[5] for item in fake_node.singles] == [big]
        small = [item for batch in fake_node.batches for item in batch]
        assert sorted(item[5] for item in small) == [b"small-1", b"small-2"]
        fake_node.sock.send_multipart([p.encode(MsgType.DONE, fake_node.singles[0][0], True), big[::-1]])
        fake_node.answer([[item[0], True, item[5].upper()] for item in small])
        fake_node.serve_until(lambda: all(pending.done() for pending in pendings), 10, "three results")
        bodies = [pending.result(timeout=1).body for pending in pendings]
    assert bodies == [b"SMALL-1", big[::-1], b"SMALL-2"]
    assert balancer.call("status")["bad_input"] == {}


@pytest.mark.timeout(60)
def test_a_bad_or_oversized_submit_batch_is_refused_whole(balancer: LiveBalancer, raw_client: zmq.Socket):
    """A str payload among good items, or MAX_BATCH_ITEMS + 1 items: REJECTED [None, "bad message: .."], none queued."""
    echo_nodes(balancer, 1)
    incarnation = secrets.randbits(64)
    bad_item = [[1, 5, b"good"], [2, 5, "a str, not bin"], [3, 5, b"good too"]]
    too_many = [[i, 5, b"x"] for i in range(1, limits.MAX_BATCH_ITEMS + 2)]
    for items in (bad_item, too_many):
        raw_client.send(p.encode(MsgType.SUBMIT_BATCH, 41, incarnation, items))
        [(msg_type, (request_id, reason))] = collect(raw_client, bool, "an answer to the bad batch")
        assert msg_type is MsgType.REJECTED and request_id is None and reason.startswith("bad message"), reason
        assert balancer.call("requests", client=41) == []
    status = balancer.call("status")
    assert status["requests"]["submitted"] == 0 and status["queue_depth"] == 0
    frontend_bad = {k: v for k, v in status["bad_input"].items() if k.startswith("frontend.")}
    assert sum(frontend_bad.values()) == 2 and frontend_bad.get("frontend.bad_fields", 0) >= 1, frontend_bad
    # Ids 1 and 3 were never taken, so they are free for other payloads now.
    raw_client.send(p.encode(MsgType.SUBMIT_BATCH, 41, incarnation, [[1, 5, b"one"], [3, 5, b"three"]]))
    replies = collect(raw_client, lambda got: len(result_items(got)) >= 2, "results of the good batch")
    assert all(t is MsgType.RESULT_BATCH for t, _ in replies), replies
    got = sorted((item[0], item[1], item[5]) for item in result_items(replies))
    assert got == [(1, "processed", b"one"), (3, "processed", b"three")]
    assert balancer.call("status")["requests"]["submitted"] == 2


@pytest.mark.timeout(60)
def test_a_done_batch_with_an_unknown_ticket_completes_the_known_one(balancer: LiveBalancer, fake_node: FakeNode):
    """DONE_BATCH [known ticket, never-given ticket]: the request completes, one late result is counted, all goes on."""
    with Client(balancer.endpoints.frontend, client_id=14) as client:
        first = client.submit(b"first")
        fake_node.serve_until(lambda: fake_node.received() >= 1, 10, "the work at the fake node")
        [[ticket, client_id, request_id, _prio, attempt, payload]] = fake_node.batches[0]
        assert (client_id, request_id, attempt, payload) == (14, first.request_id, 1, b"first")
        fake_node.answer([[ticket, True, b"known"], [7, True, b"never given"]])  # tickets start at start time in us
        assert fake_node.serve_until(first.done, 10, "the known ticket's result")
        result = first.result(timeout=0)
        assert result.ok and result.body == b"known" and result.server_id == fake_node.node_id
        status = balancer.call("status")
        assert status["requests"]["late_results"] == 1 and status["requests"]["processed"] == 1
        assert not any(k.startswith("backend.") for k in status["bad_input"]), status["bad_input"]
        assert MsgType.RECONNECT not in fake_node.seen and MsgType.FENCED not in fake_node.seen
        # The balancer and the node's session carry on: the next request is served by the same node.
        second = client.submit(b"second")
        fake_node.serve_until(lambda: fake_node.received() >= 2, 10, "the second work item")
        [[ticket2, *_rest]] = fake_node.batches[1]
        fake_node.answer([[ticket2, True, b"again"]])
        assert fake_node.serve_until(second.done, 10, "the second result")
        assert second.result(timeout=0).body == b"again"
    assert balancer.servers()[fake_node.node_id]["state"] == "active"
    assert balancer.call("status")["requests"]["late_results"] == 1


@pytest.mark.timeout(90)
def test_a_small_message_limit_still_passes_full_batches_and_refuses_each_payload_over_it(procs, endpoints):
    """`--max-message-bytes 1 MiB`: 512 payloads of 4 KiB in full batches (more than 1 MiB each) all run;
    the Client learns the limit and refuses a bigger payload itself; a raw batch with one such payload
    gets that item REJECTED with the reason while its neighbour runs."""
    from tests.harness import start_balancer

    limit = 1024 * 1024
    live = start_balancer(procs, endpoints, 100, "--max-message-bytes", str(limit))
    live.start_server(0, "--handler", "echo", "--capacity", "300")
    live.wait_servers_active({0})
    with Client(endpoints.frontend, client_id=61) as client:
        pending = client.submit_many([bytes([i % 251]) * 4096 for i in range(512)])
        results = {r.request_id: r for r in client.as_completed(timeout=60)}
        assert len(results) == 512 and all(r.ok for r in results.values())
        assert all(results[q.request_id].body == bytes([i % 251]) * 4096 for i, q in enumerate(pending))
        assert client.max_payload == limit and client.resent == 0
        with pytest.raises(ValueError, match="over the balancer's limit"):
            client.submit(b"x" * (limit + 1))
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoints.frontend)
    try:
        raw.send(p.encode(MsgType.SUBMIT_BATCH, 62, 1, [[1, 5, b"y" * (limit + 1)], [2, 5, b"small"]]))
        answers: dict[int, tuple[Any, ...]] = {}

        def answered() -> bool:
            while raw.poll(20):
                msg_type, fields = p.decode(raw.recv())
                if msg_type is MsgType.REJECTED:
                    answers[fields[0]] = ("rejected", fields[1])
                elif msg_type is MsgType.RESULT_BATCH:
                    answers.update({item[0]: (item[1], item[5]) for item in fields[0]})
            return len(answers) == 2

        wait_until(answered, 20, "both items answered")
        assert answers[2] == ("processed", b"small")
        assert answers[1][0] == "rejected" and "over the balancer's --max-message-bytes" in answers[1][1]
        assert live.call("status")["counters"]["payloads_too_large"] == 1
    finally:
        raw.close(linger=0)


@pytest.mark.timeout(30)
def test_one_loop_iteration_takes_at_most_drain_items_submissions():
    """Batches of 1,024 waiting, twice DRAIN_ITEMS' worth and more: each frontend drain stops at the first
    batch that reaches DRAIN_ITEMS, so a burst cannot hold the loop (nodes and admins are served between
    drains); the rest come in later drains, none lost."""
    from tests.harness import balancer_in_process
    from wire.sockets import DRAIN_BATCH

    size = 1024
    per_drain = -(-limits.DRAIN_ITEMS // size) * size  # whole batches until the budget is spent
    total = 2 * per_drain + size
    with balancer_in_process() as (balancer, sock):
        for first in range(0, total, size):
            sock.send(p.encode(MsgType.SUBMIT_BATCH, 7, 1, [[first + i, 5, b"p"] for i in range(size)]))
        waiting = []
        for _ in range(3):
            balancer.client_side.drain(time.monotonic(), DRAIN_BATCH)
            waiting.append(balancer.sched.waiting)
    assert waiting == [per_drain, 2 * per_drain, total]


@pytest.mark.timeout(30)
def test_negative_ids_are_refused_item_by_item(balancer: LiveBalancer):
    """A raw SUBMIT_BATCH naming a negative request id or client id: those items are REJECTED as out of
    range and never queued; a good item beside them is queued."""
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(balancer.endpoints.frontend)
    try:
        raw.send(p.encode(MsgType.SUBMIT_BATCH, 71, 1, [[-5, 5, b"a"], [6, 5, b"b"]]))
        raw.send(p.encode(MsgType.SUBMIT_BATCH, -1, 1, [[7, 5, b"c"]]))
        reasons: dict[int, str] = {}

        def refused() -> bool:
            while raw.poll(20):
                msg_type, fields = p.decode(raw.recv())
                if msg_type is MsgType.REJECTED:
                    reasons[fields[0]] = fields[1]
            return len(reasons) == 2

        wait_until(refused, 10, "two refusals")
        assert all("out of range" in r for r in reasons.values()) and set(reasons) == {-5, 7}
        assert [r["request_id"] for r in balancer.call("requests", client=71)] == [6]
        assert balancer.call("status")["requests"]["submitted"] == 1
    finally:
        raw.close(linger=0)
