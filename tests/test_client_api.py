"""The Client API refuses what it cannot do before it changes anything (no balancer needed)."""

from __future__ import annotations

import time

import pytest
import zmq

from client_node.client import Client, QueueFull
from tests.harness import free_port, scaled, wait_until
from wire import limits
from wire import protocol as p
from wire.protocol import MsgType


@pytest.fixture
def client():
    with Client(f"tcp://127.0.0.1:{free_port()}", client_id=1) as c:
        yield c


def test_an_outstanding_request_id_cannot_be_submitted_again(client: Client):
    """The same id twice while the first is unanswered is a ValueError; the first stays as it was."""
    client.submit(b"one", priority=1, request_id=7)
    with pytest.raises(ValueError, match="still outstanding"):
        client.submit(b"two", priority=9, request_id=7)
    assert client.outstanding == [7] and client._outstanding[7].payload == b"one"


@pytest.mark.parametrize(("request_id", "priority"), [(2**64, 5), (-1, 5), (1, 2**63), (1, -(2**63) - 1)])
def test_ids_and_priorities_the_wire_cannot_carry_are_refused_without_a_trace(client: Client, request_id, priority):
    """Out-of-range ids or priorities raise ValueError and leave nothing behind; the next submit works."""
    with pytest.raises(ValueError, match="64-bit range"):
        client.submit(b"x", priority=priority, request_id=request_id)
    assert client.outstanding == []
    assert client.submit(b"y").request_id == 1
    client.pump(0)  # nothing poisoned: a pump after the refusal is fine


def test_a_closed_client_says_so_and_a_bad_client_id_is_refused():
    """submit() after close() is a RuntimeError; a client id beyond 64 bits a ValueError."""
    c = Client(f"tcp://127.0.0.1:{free_port()}", client_id=1)
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.submit(b"x")
    with pytest.raises(ValueError, match="client id"):
        Client(f"tcp://127.0.0.1:{free_port()}", client_id=2**64)


@pytest.mark.timeout(20)
def test_a_busy_rejection_waits_for_credit_not_a_timer_and_is_not_reported_as_a_result():
    """REJECTED "busy: ..." puts the request back in the local queue and tells on_busy; with nothing else out
    the Client asks for credit (CLIENT_PING) and sends it again only once a window is granted, not on its
    retry timer: no re-send is counted, and the second submission gets the result."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    told: list[tuple[int, str]] = []
    seen: list[MsgType] = []  # SUBMIT_BATCH and CLIENT_PING, in arrival order
    try:
        with Client(f"tcp://127.0.0.1:{port}", client_id=3, retry_s=0.2) as client:
            client.on_busy = lambda rid, reason: told.append((rid, reason))
            pending = client.submit(b"work", request_id=9)

            def answer() -> bool:
                client.pump(0.01)
                while router.poll(0):
                    route, header, *_ = router.recv_multipart()
                    msg_type = p.decode(header)[0]
                    if msg_type not in (MsgType.SUBMIT_BATCH, MsgType.CLIENT_PING):
                        continue
                    seen.append(msg_type)
                    if msg_type is MsgType.CLIENT_PING and seen.count(MsgType.CLIENT_PING) == 3:
                        # credit at last, after two asks went unanswered (longer than the retry timer)
                        router.send_multipart([route, p.encode(MsgType.CLIENT_WELCOME, 10_000, 2**20, 64, 2**20, 0)])
                    elif msg_type is MsgType.SUBMIT_BATCH and seen.count(MsgType.SUBMIT_BATCH) == 1:
                        router.send_multipart([route, p.encode(MsgType.REJECTED, 9, f"{p.REASON_BUSY}: full")])
                    elif msg_type is MsgType.SUBMIT_BATCH:
                        router.send_multipart([route, p.encode(MsgType.RESULT, 9, "processed", 1, 1, False), b"ok"])
                return 9 in client._results

            wait_until(answer, 10, "the request sent again on credit to be answered")
            result = pending.result(timeout=1)
        assert result.ok and result.body == b"ok"
        assert told == [(9, f"{p.REASON_BUSY}: full")]
        assert client.busy_notices == 1 and client.resent == 0
        ping = MsgType.CLIENT_PING
        assert seen == [MsgType.SUBMIT_BATCH, ping, ping, ping, MsgType.SUBMIT_BATCH], seen
    finally:
        router.close(linger=0)


class FakeFrontend:
    """A ROUTER where a balancer's frontend would be: keeps, in arrival order, what a Client sends."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.endpoint)
        self.arrived: list[tuple[MsgType, list]] = []  # SUBMIT_BATCH items, or a SUBMIT's [*fields, payload]
        self.route = b""  # the Client's routing identity, once it said CLIENT_HELLO

    def welcome(self, client: Client, requests: int = 10_000, size: int | None = None) -> None:
        """Answer the Client's CLIENT_HELLO as a balancer would, granting it a window, and wait until it has it."""

        def hello() -> bool:
            while self.sock.poll(10):
                frames = self.sock.recv_multipart()
                if p.decode(frames[1])[0] is MsgType.CLIENT_HELLO:
                    self.route = frames[0]
                    welcome = p.encode(
                        MsgType.CLIENT_WELCOME, 10_000, limits.DEFAULT_MAX_MESSAGE_BYTES, requests, size, 0
                    )
                    self.sock.send_multipart([frames[0], welcome])
                    return True
            return False

        wait_until(hello, 10, "CLIENT_HELLO")
        wait_until(lambda: client.pump(0.01) is not None and client.window == (requests, size), 10, "the window")

    def batches(self) -> list[list]:
        return [items for msg_type, items in self.arrived if msg_type is MsgType.SUBMIT_BATCH]

    def wait_for(self, count: int, what: str) -> None:
        """Until `count` submissions (batches or singles) arrived."""

        def got() -> bool:
            while self.sock.poll(10):
                frames = self.sock.recv_multipart()
                msg_type, fields = p.decode(frames[1])
                if msg_type is MsgType.SUBMIT_BATCH:
                    self.arrived.append((msg_type, fields[2]))
                elif msg_type is MsgType.SUBMIT:
                    self.arrived.append((msg_type, [*fields, frames[2]]))
            return len(self.arrived) >= count

        wait_until(got, 10, what)


@pytest.fixture
def frontend():
    fake = FakeFrontend()
    try:
        yield fake
    finally:
        fake.sock.close(linger=0)


@pytest.mark.timeout(20)
def test_submit_many_sends_a_burst_in_batches_and_a_lone_submit_at_once(frontend: FakeFrontend):
    """submit_many puts 600 requests into 3 SUBMIT_BATCH messages in order; submit() sends a batch of one
    before it returns; a payload that is not bytes-like fails alone, and what came before it still goes."""
    with Client(frontend.endpoint, client_id=4) as client:
        frontend.welcome(client)
        pending = client.submit_many([b"x%d" % i for i in range(600)], priority=2)
        frontend.wait_for(3, "3 SUBMIT_BATCH messages")
        batches = frontend.batches()
        assert [len(b) for b in batches] == [limits.BATCH_ITEMS, limits.BATCH_ITEMS, 600 - 2 * limits.BATCH_ITEMS]
        items = [item for batch in batches for item in batch]
        assert [i[0] for i in items] == [pend.request_id for pend in pending] == list(range(1, 601))
        assert items[7] == [8, 2, b"x7"]
        client.submit(bytearray(b"lone"), priority=1)  # no further call: it must be on the wire already
        frontend.wait_for(4, "the lone submit")
        assert frontend.batches()[3] == [[601, 1, b"lone"]]
        with pytest.raises(TypeError):
            client.submit_many([b"ok", 42])
        frontend.wait_for(5, "what came before the bad payload")
        assert frontend.batches()[4] == [[602, 5, b"ok"]] and client.unanswered == 602


@pytest.mark.timeout(20)
def test_nothing_to_send_sends_nothing_and_a_payload_over_the_limit_is_refused_here(frontend: FakeFrontend):
    """submit_many of nothing (or of a first item that is no payload) sends no empty batch; a payload
    over the balancer's limit (as CLIENT_WELCOME said) is a ValueError before anything changes. The
    first submission to reach the ROUTER is the one valid submit, made last."""
    with Client(frontend.endpoint, client_id=3) as client:
        assert client.submit_many([]) == []
        with pytest.raises(TypeError):
            client.submit_many([5])
        assert client.unanswered == 0
        client.max_payload = 1000
        with pytest.raises(ValueError, match="over the balancer's limit of 1000"):
            client.submit(b"x" * 1001)
        assert client.unanswered == 0
        client.submit(b"y" * 1000)
        assert client.unanswered == 1
        frontend.wait_for(1, "the valid submit at the ROUTER")
        assert frontend.arrived == [(MsgType.SUBMIT_BATCH, [[1, 5, b"y" * 1000]])]


@pytest.mark.timeout(20)
def test_a_big_payload_leaves_in_its_own_submit_between_the_batches_around_it(frontend: FakeFrontend):
    """A payload over LONE_PAYLOAD_BYTES goes as a single SUBMIT with its own frame, in its place: the
    small ones before and after it still go in batches, and the order of submission is kept."""
    big = b"B" * (limits.LONE_PAYLOAD_BYTES + 1)
    at_limit = b"L" * limits.LONE_PAYLOAD_BYTES  # not over: rides in a batch
    with Client(frontend.endpoint, client_id=5) as client:
        client.submit_many([b"a", at_limit, big, b"c"], priority=3)
        frontend.wait_for(3, "batch, single, batch")
    assert frontend.arrived[0] == (MsgType.SUBMIT_BATCH, [[1, 3, b"a"], [2, 3, at_limit]])
    msg_type, (client_id, request_id, priority, _incarnation, payload) = frontend.arrived[1]
    assert (msg_type, client_id, request_id, priority, payload) == (MsgType.SUBMIT, 5, 3, 3, big)
    assert frontend.arrived[2] == (MsgType.SUBMIT_BATCH, [[4, 3, b"c"]])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [16, limits.LONE_PAYLOAD_BYTES + 1])
def test_a_second_answer_is_a_harmless_repeat_when_it_says_the_same_and_a_conflict_otherwise(
    frontend: FakeFrontend, size: int
):
    """The Client remembers each answer by a digest of its body: an answer that comes again (a retry's) with
    the same body is counted as repeated, one with another body, even one byte apart, as conflicting."""
    body = b"r" * size
    other = body[:-1] + b"s"
    with Client(frontend.endpoint, client_id=8) as client:
        frontend.welcome(client)
        pending = client.submit(b"work")
        frontend.wait_for(1, "the submission")
        route = frontend.route
        for answer in (body, body, other):
            frontend.sock.send_multipart(
                [route, p.encode(MsgType.RESULT, pending.request_id, "processed", 1, 1, False), answer]
            )
        wait_until(
            lambda: client.pump(0.01) is not None and client.repeated_answers + client.conflicting_answers == 2,
            10,
            "two more answers",
        )
        assert pending.result(timeout=1).body == body
        assert (client.repeated_answers, client.conflicting_answers) == (1, 1)


@pytest.mark.parametrize("timeout", [0.0, -0.0015, -1.0])
def test_pump_with_no_time_left_only_looks(client: Client, timeout: float):
    """A timeout of 0 or less (a caller's `deadline - now`) takes what has arrived and returns at once:
    no wait for ever, and no socket error from a negative ZMQ_RCVTIMEO."""
    started = time.monotonic()
    assert client.pump(timeout) == 0
    assert time.monotonic() - started < scaled(0.5)


@pytest.mark.timeout(20)
def test_beyond_its_window_a_client_queues_at_home_blocks_on_a_full_queue_and_cancels_queued_ones_itself(
    frontend: FakeFrontend,
):
    """Granted one request out, the Client sends the first and queues the next two; a fourth submit finds the
    local queue full and, with queue_timeout_s, raises QueueFull with nothing changed. A queued request
    cancelled is answered `cancelled` at once and never sent."""
    with Client(frontend.endpoint, client_id=6, queue_max=2, queue_timeout_s=0.2) as client:
        frontend.welcome(client, requests=1)
        first, second, third = (client.submit(b"r%d" % i) for i in range(3))
        frontend.wait_for(1, "the first submission")
        assert client.queued == 2 and client.unanswered == 3
        with pytest.raises(QueueFull, match="stayed full"):
            client.submit(b"r3")
        assert client.unanswered == 3 and client.submit_many([]) == []
        second.cancel()
        cancelled = second.result(timeout=1)
        assert (cancelled.status, cancelled.server_id, cancelled.attempts) == (p.CANCELLED, None, 0)
        assert client.queued == 2 and client.unanswered == 2  # its entry is skipped when the line moves
        assert client.submit(b"r4").request_id == 4  # room again; the refused one took no id
    assert frontend.batches() == [[[first.request_id, 5, b"r0"]]]
    assert third.request_id == 3


@pytest.mark.timeout(20)
def test_a_newer_leadership_on_the_same_endpoint_gets_what_is_unanswered_at_once(frontend: FakeFrontend):
    """The member that stepped down leads again (or wins once etcd is back) on the endpoint the Client talks
    to: its first word after a standby said none leads, or of a newer epoch, makes the Client re-send what is
    unanswered now, not after a back-off that had grown to 20 s. The first epoch ever heard re-sends nothing."""

    def submits(route: list[bytes], timeout_s: float) -> list[int]:
        """Request ids of the SUBMITs that arrive within `timeout_s` (noting the Client's route)."""
        ids, deadline = [], time.monotonic() + timeout_s
        while frontend.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            frames = frontend.sock.recv_multipart()
            route[:] = [frames[0]]
            msg_type, fields = p.decode(frames[1])
            if msg_type is MsgType.SUBMIT_BATCH:
                ids.extend(item[0] for item in fields[2])
            elif msg_type is MsgType.SUBMIT:
                ids.append(fields[0])
            if time.monotonic() >= deadline:
                break
        return ids

    try:
        p.set_epoch(5)
        with Client(frontend.endpoint, client_id=4, retry_s=30.0) as client:
            frontend.welcome(client)
            client.submit(b"a")
            route: list[bytes] = []
            assert submits(route, 1.0) == [1]  # sent once: the first epoch heard (5) re-sent nothing
            # No member leads (a standby says so), then the same member leads again with the same epoch (its
            # etcd key outlived an etcd restart): its first word re-sends what is unanswered.
            frontend.sock.send_multipart([route[0], p.encode(MsgType.REDIRECT, None, "no leader is elected yet")])
            client.pump(0.2)
            assert submits(route, 0.3) == []
            frontend.sock.send_multipart([route[0], p.encode(MsgType.CREDIT, 10_000, None, 0)])
            client.pump(0.2)
            assert submits(route, scaled(2.0)) == [1]
            p.set_epoch(6)
            frontend.sock.send_multipart([route[0], p.encode(MsgType.CREDIT, 10_000, None, 0)])
            client.pump(0.2)
            assert submits(route, scaled(2.0)) == [1]  # re-sent at once (retry_s is 30 s)
            p.set_epoch(4)  # an older leadership: dropped, counted, nothing re-sent
            frontend.sock.send_multipart([route[0], p.encode(MsgType.CREDIT, 10_000, None, 0)])
            client.pump(0.2)
            assert client.stale_epoch == 1 and submits(route, 0.3) == []
    finally:
        p.set_epoch(0)
