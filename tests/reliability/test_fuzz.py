"""Fuzz: malformed frames at a live balancer's frontend, backend and control sockets."""

from __future__ import annotations

import os

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_node.client import Client, json_payload
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from wire import limits
from wire import protocol as p
from wire.protocol import MsgType

MAX_MESSAGE_BYTES = 64 * 1024

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=16),
    st.binary(max_size=16),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
# Headers that look almost right: a plausible version and type with fields of any shape.
near_headers = st.builds(
    lambda version, kind, fields: msgpack.packb([version, kind, *fields]),
    st.sampled_from([p.PROTOCOL_VERSION, p.PROTOCOL_VERSION, 0, 2, "1", None, True]),
    st.sampled_from([int(t) for t in MsgType]) | st.integers(-5, 300) | values,
    st.lists(values, max_size=7),
)
# Things a parser must not trust: huge length prefixes, deep nesting, reserved bytes, ext types.
nasty = st.sampled_from(
    [
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xffabc",  # bin32 claiming 4 GiB
        b"\xdd\x7f\xff\xff\xff",  # array32 claiming 2**31 items
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 2**32 pairs
        b"\x91" * 3000 + b"\xc0",  # arrays nested 3,000 deep
        b"\x81\xa1k" * 1300 + b"\xc0",  # maps nested 1,300 deep
        b"\xd4\x01\x00",  # an ext type
        b"\xc1",  # the never-used byte
        b"\x93\x01\x01" + b"\xcf" + b"\xff" * 8,  # SUBMIT with a truncated field list
        b"x" * (limits.MAX_HEADER_BYTES + 1),  # over the header limit
        b"",
    ]
)
frame = st.one_of(st.binary(max_size=48), near_headers, nasty, near_headers.map(lambda b: b[: len(b) // 2]))
messages = st.lists(frame, min_size=1, max_size=4)
control_maps = st.one_of(
    st.builds(
        lambda cmd, args: msgpack.packb({"cmd": cmd, **args}),
        st.sampled_from(["servers", "requests", "status", "logs", "request", "down", "up", "drain", "configure"])
        | st.text(max_size=8)
        | values,
        st.dictionaries(
            st.sampled_from(["status", "client", "limit", "offset", "format", "server_id", "servers", "clients"]),
            values,
            max_size=4,
        ),
    ),
    frame,
)


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    return sock


def fuzz(balancer: LiveBalancer, examples: int) -> None:
    """Throw `examples` generated messages at each socket; every control message must get a reply."""
    ctx = zmq.Context.instance()
    ends = balancer.endpoints
    front, back, ctl = (dealer(ctx, ep) for ep in (ends.frontend, ends.backend, ends.control))
    sent_control = [0]
    replies = [0]

    def read_replies() -> None:
        # An admin reads its replies as they come: unread, they would pile up past the control
        # socket's send HWM, where the ROUTER drops them (as it must for any peer that never reads).
        while ctl.poll(0):
            ctl.recv_multipart()
            replies[0] += 1

    try:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(messages, messages, st.lists(control_maps, min_size=1, max_size=3))
        def throw(to_front: list[bytes], to_back: list[bytes], to_control: list[bytes]) -> None:
            front.send_multipart(to_front)
            back.send_multipart(to_back)
            ctl.send_multipart(to_control)
            sent_control[0] += 1
            read_replies()

        throw()
        # Random generation need not hit every kind; these make the counters below certain.
        front.send_multipart([b"\xc1", b"payload"])
        front.send_multipart([b"x" * (limits.MAX_HEADER_BYTES + 1), b"payload"])
        back.send_multipart([b"\xc1"])
        ctl.send_multipart([b"\xc1"])
        sent_control[0] += 1

        def all_answered() -> bool:
            read_replies()
            return replies[0] >= sent_control[0]

        wait_until(all_answered, 30, "a reply to every control message")
        assert replies[0] == sent_control[0]
    finally:
        for sock in (front, back, ctl):
            sock.close(linger=0)


def assert_garbage_counted(balancer: LiveBalancer) -> None:
    """`zlb status` answers and shows the bad input per socket and kind, with nothing unforeseen."""
    kinds = ("frontend.malformed", "backend.malformed", "control.malformed", "frontend.too_large")
    # Each socket is its own connection, so the last of them may still be in flight: wait with a deadline.
    bad = wait_until(
        lambda: (lambda b: all(b.get(k, 0) > 0 for k in kinds) and b)(balancer.call("status")["bad_input"]),
        10,
        f"bad-input counters {kinds}",
    )
    assert "internal_error" not in " ".join(bad), bad


def assert_still_serving(balancer: LiveBalancer) -> None:
    """A real node joins and a real request runs end to end."""
    balancer.start_server(7)
    balancer.wait_servers_active({7}, timeout=15)
    with Client(balancer.endpoints.frontend, client_id=99_999, retry_s=0.5) as client:
        result = client.submit(json_payload(0, "after the storm"), priority=1, request_id=1).result(timeout=20)
    assert result.ok
    assert result.value()["echo"] == "after the storm"


def test_fuzzed_frames_are_counted_and_survived(procs: ProcessGroup, endpoints: Endpoints):
    """Hundreds of malformed messages on every socket: all counted, control always answers, work still flows."""
    balancer = start_balancer(procs, endpoints, 100, "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    fuzz(balancer, int(os.environ.get("ZLB_FUZZ_EXAMPLES", "300")))
    assert_garbage_counted(balancer)
    assert_still_serving(balancer)
    assert balancer.proc.popen.poll() is None


def test_oversized_messages_are_refused_and_survived(procs: ProcessGroup, endpoints: Endpoints):
    """A message over --max-message-bytes is refused by libzmq on each socket; the balancer serves on."""
    balancer = start_balancer(procs, endpoints, 100, "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    ctx = zmq.Context.instance()
    big = b"z" * (2 * MAX_MESSAGE_BYTES)
    for ep in (endpoints.frontend, endpoints.backend, endpoints.control):
        sock = dealer(ctx, ep)
        sock.send_multipart([p.encode(MsgType.SUBMIT, 1, 1, 1), big])
        sock.close(linger=1000)
    assert_still_serving(balancer)
    assert balancer.call("requests", client=1) == []  # the oversized submit never got in
    assert balancer.call("status")["requests"]["submitted"] == 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_long_run(procs: ProcessGroup, endpoints: Endpoints):
    """The same storm with ZLB_FUZZ_EXAMPLES (default 20,000) messages per socket."""
    balancer = start_balancer(procs, endpoints, 100, "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    fuzz(balancer, int(os.environ.get("ZLB_FUZZ_EXAMPLES_LONG", "20000")))
    assert_garbage_counted(balancer)
    assert_still_serving(balancer)
