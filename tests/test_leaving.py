"""Big results on their way out (balancer/leaving.py), over a real ROUTER and DEALER on loopback: which
leave tracked, and that each stays charged to its client until libzmq is known to be done with it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from balancer.budget import MemoryBudget
from balancer.credit import Credit
from balancer.leaving import UNTRACKED_RUN_BYTES, LeavingResults
from balancer.scheduler import Scheduler
from wire import protocol as p
from wire.limits import REQUEST_OVERHEAD_BYTES
from wire.protocol import MsgType

MIB = 2**20
SIZE = 256 * 1024
DEADLINE_S = 10.0


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A ROUTER (the balancer's frontend) and a DEALER (a client) on a free loopback port."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"client-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)  # wait-ok: poll interval of a deadline-bounded wait


def connected(router: zmq.Socket, dealer: zmq.Socket) -> None:
    """The ROUTER knows the DEALER's route once the DEALER said something."""
    dealer.send(b"hello")
    until(lambda: router.poll(10) != 0, "the client's first message")
    router.recv_multipart()


def leaving_for(router: zmq.Socket, told: bool) -> tuple[LeavingResults, Credit, MemoryBudget]:
    sched = Scheduler(max_memory_bytes=64 * MIB)
    credit = Credit(sched, now=0.0)
    if told:
        credit.welcome(b"client-1", 1)  # the connection said CLIENT_HELLO
    return LeavingResults(router, sched.budget, credit), credit, sched.budget


def send_result(router: zmq.Socket, leaving: LeavingResults, body: bytes) -> bool:
    """Send one big result as ClientSide does; whether it left tracked. The frame is not kept: libzmq is done
    with a tracked one only once every reference to its buffer is gone, ours included."""
    frame = leaving.frame(b"client-1", body, len(body))
    router.send_multipart([b"client-1", b"header", frame], copy=False)
    leaving.sent(b"client-1", 1, len(body), frame)
    return getattr(frame, "tracker", None) is not None


def charged(count: int, size: int = SIZE) -> int:
    """What `count` unsent results of `size` bytes count for (each with the per-request overhead)."""
    return count * (size + REQUEST_OVERHEAD_BYTES)


def read_all(dealer: zmq.Socket, count: int) -> list[list[bytes]]:
    messages = []
    for _ in range(count):
        until(lambda: dealer.poll(10) != 0, "a message at the client")
        messages.append(dealer.recv_multipart())
    return messages


def test_to_a_told_connection_only_some_results_are_tracked_and_all_stop_counting_once_read(pair):
    router, dealer = pair
    connected(router, dealer)
    leaving, _credit, budget = leaving_for(router, told=True)
    tracked = [send_result(router, leaving, bytes(SIZE)) for _ in range(12)]
    run = UNTRACKED_RUN_BYTES // SIZE
    assert tracked == [(i + 1) % (run + 1) == 0 for i in range(12)], "UNTRACKED_RUN_BYTES untracked, then one tracked"
    assert budget.unsent == charged(12)
    read_all(dealer, 12)

    def settled() -> bool:
        leaving.release()
        return budget.unsent == 0

    until(settled, "every result to stop counting")
    assert not leaving.any
    extra = [m for m in iter(lambda: dealer.recv_multipart() if dealer.poll(50) else None, None)]
    for message in extra:  # a marker may have followed the last untracked run: a CREDIT, the window told
        assert p.decode(message[0])[0] is MsgType.CREDIT


def test_a_run_no_tracked_result_follows_is_closed_by_a_credit_marker(pair):
    router, dealer = pair
    connected(router, dealer)
    leaving, credit, budget = leaving_for(router, told=True)
    assert not send_result(router, leaving, bytes(SIZE))
    assert not send_result(router, leaving, bytes(SIZE))  # a run of two that nothing tracked follows
    assert budget.unsent == charged(2)
    results = read_all(dealer, 2)
    assert [len(m[-1]) for m in results] == [SIZE, SIZE]

    def settled() -> bool:
        leaving.release()
        return budget.unsent == 0

    until(settled, "the untracked result to stop counting")
    (marker,) = read_all(dealer, 1)
    msg_type, fields = p.decode(marker[0])
    assert msg_type is MsgType.CREDIT
    assert fields == [*credit.told[b"client-1"], 0]


def test_a_client_that_does_not_read_keeps_its_results_charged(pair):
    """Untracked results behind a tracked one still on its way stay charged; the client's own libzmq and the
    kernel take a few messages before its pipe is full, and those may stop counting."""
    router, dealer = pair
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    router.setsockopt(zmq.SNDBUF, 4096)
    connected(router, dealer)
    leaving, _credit, budget = leaving_for(router, told=True)
    assert [send_result(router, leaving, bytes(SIZE)) for _ in range(64)].count(False) >= 48
    for _ in range(20):  # passes while the client reads nothing
        leaving.release()
        time.sleep(0.005)  # wait-ok: gives libzmq time it would need to finish, to show it did not
    assert budget.unsent >= charged(32), "what waits in a non-reading client's pipe stays charged"
    read_all(dealer, 64)

    def settled() -> bool:
        leaving.release()
        return budget.unsent == 0

    until(settled, "the results to stop counting once read")


def test_to_a_connection_that_never_said_hello_every_result_is_tracked(pair):
    router, dealer = pair
    connected(router, dealer)
    leaving, _credit, budget = leaving_for(router, told=False)
    assert all(send_result(router, leaving, bytes(SIZE)) for _ in range(6))
    read_all(dealer, 6)

    def settled() -> bool:
        leaving.release()
        return budget.unsent == 0

    until(settled, "every result to stop counting")
    assert dealer.poll(50) == 0, "no marker to a connection that is told nothing"


def test_a_connection_gone_with_an_untracked_run_stops_counting_it(pair):
    router, dealer = pair
    connected(router, dealer)
    leaving, _credit, budget = leaving_for(router, told=True)
    dealer.setsockopt(zmq.RCVHWM, 1)
    send_result(router, leaving, bytes(SIZE))
    send_result(router, leaving, bytes(SIZE))
    dealer.close(linger=0)

    def settled() -> bool:
        leaving.release()
        return budget.unsent == 0

    until(settled, "a gone connection's results to stop counting")
    assert not leaving.any
