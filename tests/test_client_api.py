"""The Client API refuses what it cannot do before it changes anything (no balancer needed)."""

from __future__ import annotations

import pytest

from client_node.client import Client
from tests.harness import free_port


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
