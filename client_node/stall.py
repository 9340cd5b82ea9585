"""Why a command's requests do not come back: no live node to take them.

A request waits in the balancer while no node can take it (none joined, or every
one drained, down or dead), and the command that sent it used to wait in silence.
Once nothing has come back for STALL_S, `StallWatch` asks the balancer's control
socket for its nodes (a cheap query, at most every ASK_EVERY_S) and, when none is
active, says why on stderr, once per distinct reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wire import control_client

# Nothing back for this long, a command asks whether any node can take its requests.
STALL_S = 3.0
# While nothing comes back, it asks again this often (and speaks only when the reason changes).
ASK_EVERY_S = 5.0
ASK_TIMEOUT_S = 1.0
# What an admin does about each state, in the hint.
REMEDY = {"draining": "zlb up ID puts a drained one back", "down": "zlb up ID puts one back"}


def no_live_node(servers: list[dict[str, Any]]) -> str | None:
    """Why no node can take a request, from a `servers` reply; None when one is active."""
    if any(s.get("state") == "active" for s in servers):
        return None
    if not servers:
        return "no server node has joined the balancer (start one: zlb server)"
    by_state: dict[str, list[int]] = {}
    for s in servers:
        by_state.setdefault(str(s.get("state")), []).append(s["server_id"])
    remedies = [REMEDY[state] for state in sorted(by_state) if state in REMEDY]
    if len(by_state) == 1:
        ((state, ids),) = by_state.items()
        head = f"every server is {state} (servers {' '.join(map(str, ids))})"
    else:
        listed = "; ".join(f"{state}: {' '.join(map(str, ids))}" for state, ids in sorted(by_state.items()))
        head = f"no server is active ({listed})"
    return head + (f"; {remedies[0]}" if remedies else "")


class StallWatch:
    """Tells `say` why requests wait, when nothing has come back for a while and no node is live."""

    def __init__(self, control: str, say: Callable[[str], None], started: float) -> None:
        self.control = control
        self.say = say
        self.heard_at = started
        self.next_ask = started + STALL_S
        self.told: str | None = None

    def check(self, now: float, got: int, waiting: int) -> None:
        """Called after each wait: `got` results arrived in it, `waiting` requests are still unanswered."""
        if got:
            self.heard_at = now
            self.next_ask = now + STALL_S
            return
        if not waiting or now < self.next_ask:
            return
        self.next_ask = now + ASK_EVERY_S
        try:
            servers = control_client.call(self.control, "servers", timeout_s=ASK_TIMEOUT_S)
        except (control_client.BalancerUnreachable, control_client.ControlError):
            return  # cannot tell; the command's own timeout still holds
        why = no_live_node(servers)
        if why is not None and why != self.told:
            self.say(f"no live server can take the {waiting} waiting request(s): {why}")
        self.told = why
