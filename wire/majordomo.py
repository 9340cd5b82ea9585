"""Majordomo (MDP/0.2, ZeroMQ RFC 18) frames: the one place that reads or builds them.

zlb's own frames are in wire/protocol.py; this module is the codec of a foreign protocol that the
balancer also speaks (balancer/majordomo.py), so that workers and clients written for Majordomo can
join. An MDP command is a multipart message of frames (no msgpack): a protocol header, a one-byte
command, then the command's frames. Two framings are in use and both are read:

- **delimited**, as the `majortomo` package (and the Guide's REQ-style APIs) send it: an empty
  frame first, as a REQ socket would put there, then the header;
- **bare**, as RFC 18 writes it: the header first.

A peer is answered in the framing it used. On the client side the two also differ in their command
codes: `majortomo`'s client sends REQUEST as 0x02 and reads PARTIAL 0x03 and FINAL 0x04 (the worker
codes) with the reply body right after the command; RFC 18's client sends REQUEST as 0x01 and reads
PARTIAL 0x02 and FINAL 0x03 with the service name before the body. A client is answered with the
codes of the REQUEST it sent (`Dialect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.protocol import ProtocolError

WORKER = b"MDPW02"
CLIENT = b"MDPC02"
HEADERS = frozenset({WORKER, CLIENT})

# MDP/Worker commands (both framings).
READY = b"\x01"
REQUEST = b"\x02"
PARTIAL = b"\x03"
FINAL = b"\x04"
HEARTBEAT = b"\x05"
DISCONNECT = b"\x06"
# MDP/Client commands as RFC 18 numbers them (majortomo's client uses REQUEST, PARTIAL, FINAL above).
RFC_REQUEST = b"\x01"
RFC_PARTIAL = b"\x02"
RFC_FINAL = b"\x03"

# The ZeroMQ Majordomo Management Interface (RFC 8): services under this prefix are the broker's own.
MMI_PREFIX = b"mmi."
MMI_SERVICE = b"mmi.service"
MMI_FOUND = b"200"
MMI_NOT_FOUND = b"404"
MMI_NOT_IMPLEMENTED = b"501"

# The client address zlb puts in a REQUEST to a worker is the WORK ticket, in this many bytes: the
# worker echoes it in its PARTIAL and FINAL, which names the request without a lookup.
TICKET_BYTES = 8


@dataclass(slots=True)
class Message:
    """One MDP command received on a ROUTER."""

    route: bytes
    header: bytes  # WORKER or CLIENT
    command: bytes
    frames: list[Any]  # what follows the command
    delimited: bool  # framed with an empty frame before the header


@dataclass(slots=True, frozen=True)
class Dialect:
    """How a client is answered: its framing, and RFC 18's command codes (with the service frame) or majortomo's."""

    delimited: bool
    rfc: bool


def looks_like_mdp(frames: list[Any]) -> bool:
    """The cheap check: after the route, an empty frame then an MDP header, or the header at once."""
    if len(frames) < 3:
        return False
    first = frames[1]
    return (first == b"" and frames[2] in HEADERS) or first in HEADERS


def parse(frames: list[Any]) -> Message:
    """An MDP command from a ROUTER's frames; ProtocolError when they are not one (call looks_like_mdp first)."""
    delimited = frames[1] == b""
    at = 2 if delimited else 1
    if len(frames) < at + 2:
        raise ProtocolError("mdp_bad_frames", f"MDP command with {len(frames) - 1} frames")
    header, command = bytes(frames[at]), bytes(frames[at + 1])
    if header not in HEADERS:
        raise ProtocolError("mdp_bad_header", f"MDP header {header!r:.20}")
    return Message(bytes(frames[0]), header, command, frames[at + 2 :], delimited)


def ticket_address(ticket: int) -> bytes:
    return ticket.to_bytes(TICKET_BYTES, "big")


def ticket_of(address: Any) -> int:
    """The ticket a worker's PARTIAL or FINAL names; ProtocolError if the address is not one of ours."""
    if len(address) != TICKET_BYTES:
        raise ProtocolError("mdp_bad_address", f"reply to a client address of {len(address)} bytes")
    return int.from_bytes(bytes(address), "big")


def reply_parts(frames: list[Any]) -> tuple[int, list[Any]]:
    """A worker's PARTIAL or FINAL frames (after the command): (ticket, body frames)."""
    if len(frames) < 2 or frames[1] != b"":
        raise ProtocolError("mdp_bad_frames", "a reply without its client address and empty delimiter")
    return ticket_of(frames[0]), frames[2:]


def to_worker(delimited: bool, command: bytes, *frames: Any) -> list[Any]:
    """A command for a worker, in its framing."""
    return [b"", WORKER, command, *frames] if delimited else [WORKER, command, *frames]


def request_to_worker(delimited: bool, ticket: int, body: list[Any]) -> list[Any]:
    """A REQUEST: the ticket as the client address, the empty delimiter, the body frames."""
    return to_worker(delimited, REQUEST, ticket_address(ticket), b"", *body)


def final_to_client(dialect: Dialect, service: bytes, body: list[Any]) -> list[Any]:
    """A FINAL for a client, in the framing and codes of its REQUEST."""
    head = [b"", CLIENT] if dialect.delimited else [CLIENT]
    if dialect.rfc:
        return [*head, RFC_FINAL, service, *body]
    return [*head, FINAL, *body]
