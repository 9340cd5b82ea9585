"""The balancer's control side: admin requests and queries on the control ROUTER.

A mixin of the Balancer (balancer/loop.py); the commands themselves are in
balancer/control.py. Under curve with --admin-allow, the ZAP user id of each
request says whether its key may change anything.
"""

from __future__ import annotations

from typing import Any

import zmq

from balancer import control
from wire import protocol as p
from wire.protocol import ProtocolError
from wire.security import ADMIN
from wire.sockets import received


class ControlSide:
    """Control handlers of the Balancer."""

    # The loop polls the control socket's ZMQ_FD, which signals new arrivals once: after a drain
    # that stopped early, or a reply whose send took in the news of an arrival, messages can wait
    # unsignalled. True then: the loop's next pass polls without sleeping and drains it again.
    _control_waiting = False

    def _drain_control(self, now: float, limit: int) -> None:
        # What happened before a question is in the log it may ask for: an admin's /logs
        # right after /server_up must show "marked as up" (control traffic is rare).
        if self.sched.events:
            self._publish()
        for frames in received(self.control_sock, limit, copy=False, routed=True):
            try:
                if len(frames) != 2:
                    raise ProtocolError("bad_frames", f"expected route and one map, got {len(frames)} frames")
                request = p.decode_map(frames[1].bytes)
            except ProtocolError as exc:
                self._bad_input("control", exc, now)
                reply = p.encode_map({"ok": False, "error": f"bad message: {exc}"})
            else:
                reply = self._control_reply(request, self._is_admin(frames[1]), now)
            self.control_sock.send_multipart([frames[0], reply])
        self._control_waiting = bool(self.control_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _is_admin(self, frame: zmq.Frame) -> bool:
        """Under curve, the ZAP user id the balancer's authenticator gave the sender's key."""
        return self.curve is None or frame.get("User-Id") == ADMIN

    def _control_reply(self, request: dict[str, Any], admin: bool, now: float) -> bytes:
        """Run a control command; an unforeseen failure becomes an error reply, never a crash."""
        try:
            return p.encode_map(control.handle(self.state, request, now, admin))
        except Exception as exc:  # noqa: BLE001 - hostile arguments may reach corners no command foresaw
            self._bad_input("control", ProtocolError("internal_error", f"{exc.__class__.__name__}: {exc}"), now)
            return p.encode_map({"ok": False, "error": f"cannot answer: {exc.__class__.__name__}"})

    # ---- curve handshake refusals, on every socket ---------------------------

    def _watch_handshakes(self) -> None:
        """With curve on, count and log peers refused during the handshake, per socket."""
        names = {self.frontend: "frontend", self.backend: "backend", self.control_sock: "control"}
        names[self.events_sock] = "events"
        for sock, name in names.items():
            mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            self._monitors[mon] = name
            self._readers[mon] = self._drain_monitor

    def _drain_monitor(self, now: float, _limit: int) -> None:
        for mon, name in self._monitors.items():
            while True:
                try:
                    frames = mon.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                # The first frame packs a 16-bit event id and a 32-bit value; the peer is not named.
                event = int.from_bytes(frames[0][:2], "little") if frames and len(frames[0]) >= 2 else 0
                kind = "auth_refused" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake_failed"
                self._bad_input(name, ProtocolError(kind, "curve handshake refused (unknown key or no curve)"), now)
