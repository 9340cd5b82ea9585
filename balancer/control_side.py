"""The control socket: admin requests and queries, one request and one reply each.

The commands themselves are in balancer/control.py. Each costs a bounded slice (a page of
`requests` reads at most SCAN_PER_PAGE requests), and each loop pass answers at most
PER_PEER_PER_PASS requests from one connection, PER_PASS in all, and none once the pass has
spent PASS_BUDGET_S on them. The rest wait, in order, for the next passes (the loop comes
back without sleeping while any wait): a burst of admin queries delays admin answers, never
heartbeats, work or results. Answering every request at once, 200 pipelined pages over
300,000 waiting requests held the loop for 2.9-4.6 s and both live nodes were declared dead
(python -m tests.reliability.measure_admin_burst). Under curve with --admin-allow, the ZAP
user id of each request says whether its key may change anything. With curve on, refused handshakes on every socket are
counted and logged here too: they are what an operator asks about.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from balancer import control
from balancer.curve import ADMIN
from balancer.incidents import Incidents
from wire import protocol as p
from wire.protocol import ProtocolError
from wire.sockets import monitor_events, received

# Control requests answered per loop pass: from one connection, and in all.
PER_PEER_PER_PASS = 4
PER_PASS = 16
# A pass answers no more once it has spent this long on control requests (the one running finishes).
PASS_BUDGET_S = 0.008
# Requests read but not yet answered; beyond this the socket is left unread (its HWM holds the rest).
MAX_HELD = 256
# The monitor events of a refused handshake. A peer without curve keys shows as FAILED_PROTOCOL
# (mechanism mismatch) or, when it hung up first on reading our greeting, as NO_DETAIL.
HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
HANDSHAKE_KINDS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth_refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_dropped",
}
# A failed handshake is told on stderr at most this often per socket and cause (a peer redials every 10-200 ms).
TELL_INTERVAL_S = 5.0


class ControlSide:
    """Control handlers and curve handshake refusals."""

    def __init__(
        self,
        sock: zmq.Socket,
        state: control.BalancerState,
        incidents: Incidents,
        curve: bool,
        publish: Callable[[], None],
        write_journal: Callable[[], None] = lambda: None,
    ) -> None:
        self.sock = sock
        self.state = state
        self.incidents = incidents
        self.curve = curve
        self._publish = publish
        self._write_journal = write_journal  # records a command made are written before its answer leaves
        # The loop polls this socket's ZMQ_FD, which signals new arrivals once: after a drain that
        # stopped early, or a reply whose send took in the news of an arrival, messages can wait
        # unsignalled. True then: the loop's next pass polls without sleeping and drains again.
        self.waiting = False
        self.fd: int = sock.getsockopt(zmq.FD)
        self._monitors: dict[zmq.Socket, str] = {}
        self._held: deque[list[Any]] = deque()  # read, not yet answered: over a pass's budget
        self._told: dict[tuple[str, int, int], float] = {}  # (socket, event, error) -> when told on stderr

    def drain(self, now: float, limit: int) -> None:
        """Answer what this pass's budget allows (at most `limit`): held requests first, then new ones."""
        # What happened before a question is in the log it may ask for: an admin's /logs
        # right after /server_up must show "marked as up" (control traffic is rare).
        if self.state.scheduler.events:
            self._publish()
        pass_budget = _PassBudget(min(limit, PER_PASS))
        held = self._held
        if held:
            self._held = held = self._answer_held(held, pass_budget, now)
        if pass_budget.open() and len(held) < MAX_HELD:
            for frames in received(self.sock, pass_budget.left, copy=False, routed=True):
                if pass_budget.takes(frames[0]):
                    self._answer(frames, now)
                else:
                    held.append(frames)
                if not pass_budget.open() or len(held) >= MAX_HELD:
                    break
        self.waiting = bool(held) or bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _answer_held(self, held: deque[list[Any]], pass_budget: _PassBudget, now: float) -> deque[list[Any]]:
        """Answer held requests in order as the budget allows; return those still held, in order."""
        still: deque[list[Any]] = deque()
        while held:
            if not pass_budget.open():
                still.extend(held)
                break
            frames = held.popleft()
            if pass_budget.takes(frames[0]):
                self._answer(frames, now)
            else:
                still.append(frames)
        return still

    def _answer(self, frames: list[Any], now: float) -> None:
        try:
            if len(frames) != 2:
                raise ProtocolError("bad_frames", f"expected route and one map, got {len(frames)} frames")
            request = p.decode_map(frames[1].bytes)
        except ProtocolError as exc:
            self.incidents.bad("control", exc, now)
            reply = p.encode_map({"ok": False, "error": f"bad message: {exc}"})
        else:
            reply = self._reply(request, self._is_admin(frames[1]), now)
            if self.state.scheduler.outbox.journal:  # a request id reservation: on record before it is told
                self._write_journal()
        self.sock.send_multipart([frames[0], reply])

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
            mon = sock.get_monitor_socket(HANDSHAKE_FAILURES)
            self._monitors[mon] = name
        return list(self._monitors)

    def drain_monitors(self, now: float, _limit: int) -> None:
        for mon, name in self._monitors.items():
            for event, value in monitor_events(mon):
                self.handshake_failed(name, event, value, now)

    def handshake_failed(self, sock_name: str, event: int, value: int, now: float) -> None:
        """A refused curve handshake on a socket (the backend's monitor is balancer/drops.py's: it hands them here)."""
        kind = HANDSHAKE_KINDS.get(event, "handshake_failed")
        self.incidents.bad(sock_name, ProtocolError(kind, "curve handshake refused (unknown key or no curve)"), now)
        if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # refused keys: the authenticator tells those
            self._tell_handshake(sock_name, event, value, now)

    def _tell_handshake(self, sock_name: str, event: int, value: int, now: float) -> None:
        """A failed handshake on stderr, at most once per socket and cause per interval.

        A refused key is told by the authenticator (wire/security.py); a peer without curve keys, or
        one whose --server-key is not ours, never reaches it: before this, only the log file knew.
        """
        last = self._told.get((sock_name, event, value))
        if last is not None and now - last < TELL_INTERVAL_S:
            return
        self._told[(sock_name, event, value)] = now
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            why = "hung up during the curve handshake (a peer without curve keys, or a plain TCP probe)"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            why = "connected without curve keys: it needs --curve-secret and --server-key (this balancer's public key)"
        else:
            why = f"failed the curve handshake (libzmq error {value:#x}): is its --server-key our public key?"
        print(f"zlb balancer: refused a peer on the {sock_name}: it {why}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for mon in self._monitors:
            mon.close(linger=0)


class _PassBudget:
    """What one loop pass may still spend on control requests: a count in all, a count per peer, a time."""

    def __init__(self, total: int) -> None:
        self.left = total
        self._per_peer: dict[bytes, int] = {}
        self._until = time.perf_counter() + PASS_BUDGET_S

    def open(self) -> bool:
        return self.left > 0 and time.perf_counter() < self._until

    def takes(self, route: bytes) -> bool:
        """Count one answer to `route` if its peer is within its share; False: hold it for a later pass."""
        answered = self._per_peer.get(route, 0)
        if answered >= PER_PEER_PER_PASS:
            return False
        self._per_peer[route] = answered + 1
        self.left -= 1
        return True
