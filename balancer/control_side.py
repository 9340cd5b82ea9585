"""The control socket: admin requests and queries, one request and one reply each.

The commands themselves are in balancer/control.py. Under curve with
--admin-allow, the ZAP user id of each request says whether its key may
change anything. With curve on, refused handshakes on every socket are
counted and logged here too: they are what an operator asks about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from balancer import control
from balancer.incidents import Incidents
from wire import protocol as p
from wire.protocol import ProtocolError
from wire.security import ADMIN
from wire.sockets import received


class ControlSide:
    """Control handlers and curve handshake refusals."""

    def __init__(
        self,
        sock: zmq.Socket,
        state: control.BalancerState,
        incidents: Incidents,
        curve: bool,
        publish: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.state = state
        self.incidents = incidents
        self.curve = curve
        self._publish = publish
        # The loop polls this socket's ZMQ_FD, which signals new arrivals once: after a drain that
        # stopped early, or a reply whose send took in the news of an arrival, messages can wait
        # unsignalled. True then: the loop's next pass polls without sleeping and drains again.
        self.waiting = False
        self.fd: int = sock.getsockopt(zmq.FD)
        self._monitors: dict[zmq.Socket, str] = {}

    def drain(self, now: float, limit: int) -> None:
        """Answer up to `limit` requests."""
        # What happened before a question is in the log it may ask for: an admin's /logs
        # right after /server_up must show "marked as up" (control traffic is rare).
        if self.state.scheduler.events:
            self._publish()
        for frames in received(self.sock, limit, copy=False, routed=True):
            try:
                if len(frames) != 2:
                    raise ProtocolError("bad_frames", f"expected route and one map, got {len(frames)} frames")
                request = p.decode_map(frames[1].bytes)
            except ProtocolError as exc:
                self.incidents.bad("control", exc, now)
                reply = p.encode_map({"ok": False, "error": f"bad message: {exc}"})
            else:
                reply = self._reply(request, self._is_admin(frames[1]), now)
            self.sock.send_multipart([frames[0], reply])
        self.waiting = bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _is_admin(self, frame: zmq.Frame) -> bool:
        """Under curve, the ZAP user id the balancer's authenticator gave the sender's key."""
        return not self.curve or frame.get("User-Id") == ADMIN

    def _reply(self, request: dict[str, Any], admin: bool, now: float) -> bytes:
        """Run a control command; an unforeseen failure becomes an error reply, never a crash."""
        try:
            return p.encode_map(control.handle(self.state, request, now, admin))
        except Exception as exc:  # noqa: BLE001 - hostile arguments may reach corners no command foresaw
            self.incidents.bad("control", ProtocolError("internal_error", f"{exc.__class__.__name__}: {exc}"), now)
            return p.encode_map({"ok": False, "error": f"cannot answer: {exc.__class__.__name__}"})

    # ---- curve handshake refusals, on every socket ---------------------------

    def watch_handshakes(self, sockets: dict[str, zmq.Socket]) -> list[zmq.Socket]:
        """Monitor each named socket for refused handshakes; the loop polls the monitors returned."""
        for name, sock in sockets.items():
            mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            self._monitors[mon] = name
        return list(self._monitors)

    def drain_monitors(self, now: float, _limit: int) -> None:
        for mon, name in self._monitors.items():
            while True:
                try:
                    frames = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                # The first frame packs a 16-bit event id and a 32-bit value; the peer is not named.
                event = int.from_bytes(frames[0][:2], "little") if frames and len(frames[0]) >= 2 else 0
                kind = "auth_refused" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake_failed"
                self.incidents.bad(name, ProtocolError(kind, "curve handshake refused (unknown key or no curve)"), now)

    def close(self) -> None:
        for mon in self._monitors:
            mon.close(linger=0)
