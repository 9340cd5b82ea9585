"""wire/sockets.py sends every frame as a copy: nothing is lent to libzmq past the send call, so a process may
exit with a big message in flight (a lent one was freed under libzmq at exit: EFAULT, or a corrupt frame)."""

from __future__ import annotations

import os
import sys

import pytest
import zmq

from wire.sockets import received, send_frames


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", [16, 256 * 1024, 4 * 2**20])
def test_a_sent_payload_is_copied_so_libzmq_holds_no_reference_to_it(size: int):
    """Over inproc a message sits in the pipe until it is read: a lent payload would still be referenced then."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://wire-sockets-copy")
        b.connect("inproc://wire-sockets-copy")
        payload = os.urandom(size)
        before = sys.getrefcount(payload)
        assert send_frames(a, [b"header", payload])
        assert sys.getrefcount(payload) == before
        assert b.poll(5000)
        assert list(received(b)) == [[b"header", payload]]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
