"""wire/sockets.py: a big payload is lent to libzmq, not copied; a small one is copied."""

from __future__ import annotations

import os
import sys

import pytest
import zmq

from wire.sockets import ZERO_COPY_BYTES, received, send_frames


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wire-sockets-test")
    b.connect("inproc://wire-sockets-test")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size, lent", [(ZERO_COPY_BYTES + 1, True), (ZERO_COPY_BYTES, False), (16, False)])
def test_a_last_frame_of_bytes_over_the_bound_is_lent_not_copied(pair, size: int, lent: bool):
    """Lent, libzmq holds a reference to the very object until the message is taken (inproc passes it on);
    copied, it holds none. Either way the receiver gets the bytes intact."""
    a, b = pair
    payload = os.urandom(size)
    before = sys.getrefcount(payload)
    assert send_frames(a, [b"header", payload])
    assert (sys.getrefcount(payload) > before) is lent
    assert b.poll(5000)
    (message,) = list(received(b))
    assert message == [b"header", payload]
