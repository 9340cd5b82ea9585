"""A node's results wait out a back-off: with no connection (it gave up on a silent balancer) a finished
request's DONE is kept, its ticket still held, and leaves right after the next HELLO, which lists it.
Dropped, as before, each such request ran again elsewhere (tests/reliability/test_balancer_pause.py)."""

from __future__ import annotations

import pytest
import zmq

from server_node.node import NodeConfig, ServerNode
from tests.harness import free_port
from wire import protocol as p
from wire.protocol import MsgType


@pytest.mark.timeout(30)
def test_a_result_finished_without_a_connection_waits_for_the_next_hello_and_leaves_after_it():
    ctx = zmq.Context()
    backend = f"tcp://127.0.0.1:{free_port()}"
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    router.bind(backend)
    node = ServerNode(NodeConfig(backend=backend, node_id=4, handler="echo"), context=ctx)
    try:
        node.held[7] = None  # WORK with ticket 7 arrived, then the connection was given up (sock is None)
        node._finished(7, True, b"answer")
        node._send_done()
        assert node.held == {7: None} and node._done == [(7, True, b"answer")] and node.dropped == 0

        node._connect()  # the back-off is over: HELLO lists ticket 7, and its DONE follows
        node._send_done()
        hello = router.recv_multipart()
        msg_type, _fields, body = p.decode_routed(hello)
        assert msg_type is MsgType.HELLO and p.decode_tickets(body) == [7]
        msg_type, fields, _body = p.decode_routed(router.recv_multipart())
        assert msg_type in (MsgType.DONE, MsgType.DONE_BATCH)
        done = fields[0] if msg_type is MsgType.DONE_BATCH else [fields]
        assert [item[0] for item in done] == [7]
        assert node.held == {} and node._done == [] and node.dropped == 0
    finally:
        node.close()
        router.close(linger=0)
        ctx.term()
