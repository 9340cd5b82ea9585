"""The Majordomo (MDP/0.2) codec, wire/majordomo.py: both framings, both client dialects, tickets as addresses."""

from __future__ import annotations

import pytest

from wire import majordomo as mdp
from wire import protocol as p
from wire.protocol import ProtocolError


def test_the_cheap_check_tells_mdp_from_zlb_and_garbage():
    zlb = [b"route", p.encode(p.MsgType.CLIENT_PING, 1, 2, 0)]
    assert not mdp.looks_like_mdp(zlb)
    assert mdp.looks_like_mdp([b"r", b"", b"MDPW02", b"\x05"])  # majortomo: the empty frame first
    assert mdp.looks_like_mdp([b"r", b"MDPC02", b"\x01", b"echo"])  # RFC 18: the header first
    assert not mdp.looks_like_mdp([b"r", b"", b"MDPW01", b"\x05"])  # MDP/0.1 is another protocol
    assert not mdp.looks_like_mdp([b"r", b""])


def test_parse_reads_both_framings():
    delimited = mdp.parse([b"r", b"", b"MDPW02", b"\x01", b"echo"])
    assert (delimited.route, delimited.header, delimited.command, delimited.frames) == (
        b"r", mdp.WORKER, mdp.READY, [b"echo"],
    )  # fmt: skip
    assert delimited.delimited
    bare = mdp.parse([b"r", b"MDPC02", b"\x01", b"echo", b"body"])
    assert (bare.header, bare.command, bare.frames, bare.delimited) == (mdp.CLIENT, b"\x01", [b"echo", b"body"], False)
    with pytest.raises(ProtocolError):
        mdp.parse([b"r", b"", b"MDPW02"])  # no command


def test_a_ticket_is_the_client_address_a_worker_echoes():
    ticket = 1_733_000_000_000_000 + 42
    frames = mdp.request_to_worker(True, ticket, [b"a", b"b"])
    assert frames[:3] == [b"", mdp.WORKER, mdp.REQUEST] and frames[4:] == [b"", b"a", b"b"]
    assert mdp.reply_parts([frames[3], b"", b"reply"]) == (ticket, [b"reply"])
    with pytest.raises(ProtocolError):
        mdp.reply_parts([b"short", b"", b"reply"])
    with pytest.raises(ProtocolError):
        mdp.reply_parts([frames[3], b"not empty", b"reply"])


def test_a_client_is_answered_in_its_own_dialect():
    majortomo = mdp.Dialect(delimited=True, rfc=False)
    rfc = mdp.Dialect(delimited=False, rfc=True)
    assert mdp.final_to_client(majortomo, b"echo", [b"x"]) == [b"", b"MDPC02", b"\x04", b"x"]
    assert mdp.final_to_client(rfc, b"echo", [b"x"]) == [b"MDPC02", b"\x03", b"echo", b"x"]
    assert mdp.to_worker(False, mdp.HEARTBEAT) == [b"MDPW02", b"\x05"]


def test_frames_other_than_one_travel_packed():
    for frames in ([], [b""], [b"a", b"", b"c" * 100_000]):
        assert p.unpack_frames(p.pack_frames(frames)) == frames
    with pytest.raises(ProtocolError):
        p.unpack_frames(b"not packed")
