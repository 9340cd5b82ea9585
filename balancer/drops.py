"""Dropped connections on the backend: a node killed outright is dead within a grace, not a liveness.

A killed process's TCP connections are closed by its kernel at once, but ZeroMQ hides that from the
ROUTER; its socket monitor reports it (EVENT_DISCONNECTED, about a millisecond after a kill -9).
The event names a file descriptor, not a node, arrives on its own socket unordered against the
backend's messages, and the number is given to the next connection: so an event only says that
*some* node's connection dropped, and it never judges a node by itself. The loop sends every node
a PING (ROUTER_MANDATORY) once `grace_s` has passed since the last drop: a node whose route has no
connection then (EHOSTUNREACH) is dead, its connection dropped (`node.disconnected`); its work goes
back to the queue as a silent node's would at its deadline (Scheduler.disconnected). Every other
node just had one more PING. A node whose connection was reset and is back within the grace (its
DEALER reconnects by itself after 10-20 ms, server_node/node.py) has a route again: a resync, not
a death. Heartbeats still judge what only silence shows (a hung or stopped process, a partition).

Only a node's connection counts: one whose handshake succeeded. A port scan, a TCP probe, a refused
curve key (its node redials every 10-20 ms) fail theirs, and would otherwise keep the probe coming.
The monitor names the descriptor of an acceptance and of a drop but not of a handshake, so each
success makes a session of every connection accepted and not yet through its handshake (usually one;
a failure among them, reported just before its own drop by libzmq's one I/O thread, spares that drop).
The monitor's events come in order, so the acceptance of a number's next holder is always reported
after the drop of its last. Each drop pushes the probe back to a full grace after it, so a probe
never lands in the reconnection gap of a reset it has not waited for; under a churn of more than one
drop per grace, the probe comes MAX_DEFER_GRACES graces after the first drop all the same (a reset
caught in its reconnection gap then is a false death, which the returning node repairs). Nor does a
probe judge while the loop's own stall excuses its nodes (NodeTable.judging): nodes that gave up on
a silent balancer close their sockets and sit out a back-off.

With curve on, the backend's one monitor (libzmq allows one per socket) also reports refused
handshakes, which go to the control side as on the other sockets (ControlSide.handshake_failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import zmq

from balancer.control_side import HANDSHAKE_FAILURES
from balancer.incidents import Incidents
from balancer.majordomo import Majordomo
from balancer.node_side import NodeSide
from balancer.nodes import NodeTable
from wire.sockets import monitor_events

_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_FOLLOWED = _ACCEPTED | _DISCONNECTED | _SUCCEEDED | HANDSHAKE_FAILURES
# A probe waits a grace after the last drop, and at most this many graces after the first it answers for.
MAX_DEFER_GRACES = 4


class Drops:
    """The backend's monitor: drops of node connections, and the probe that tells which node dropped."""

    def __init__(
        self,
        backend: zmq.Socket,
        grace_s: float | None,
        table: NodeTable,
        nodes: NodeSide,
        mdp: Majordomo,
        incidents: Incidents,
        handshake_failed: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        self.grace_s = grace_s  # None: heartbeats alone judge
        self._table = table
        self._nodes = nodes
        self._mdp = mdp
        self._incidents = incidents
        self._handshake_failed = handshake_failed
        self._backend = backend
        events = _FOLLOWED if grace_s is not None else HANDSHAKE_FAILURES if handshake_failed is not None else 0
        self.monitor: zmq.Socket | None = backend.get_monitor_socket(events) if events else None
        # Descriptors of backend connections (a number is reused by later ones): accepted and not yet through
        # their handshake, and through it (a node's or a Majordomo worker's).
        self._handshaking: set[int] = set()
        self._sessions: set[int] = set()
        self._failed = False  # a handshake failure was just reported: the drop that follows is its own
        self.due_at = math.inf  # when the loop probes (Balancer.run): a grace after the last drop
        self._first_at = math.inf  # the first drop the next probe answers for

    def drain(self, now: float, _limit: int) -> None:
        """Read the monitor: connections followed, a node's drop scheduling the probe, refused handshakes told."""
        handshaking, sessions = self._handshaking, self._sessions
        for event, value in monitor_events(self.monitor):
            if event == _ACCEPTED:
                handshaking.add(value)
            elif event == _SUCCEEDED:
                sessions |= handshaking
                handshaking.clear()
            elif event == _DISCONNECTED:
                handshaking.discard(value)
                if value in sessions:
                    sessions.discard(value)
                    if not self._failed:
                        self._incidents.count("node_connections_dropped")  # deaths and resets alike
                        # A grace after the last drop, but never more than MAX_DEFER_GRACES after the first:
                        # any peer that completes a handshake (no key needed without curve) and leaves every
                        # few ms would otherwise put the probe off for as long as it keeps at it.
                        self._first_at = min(self._first_at, now)
                        self.due_at = min(now + self.grace_s, self._first_at + MAX_DEFER_GRACES * self.grace_s)
                self._failed = False
            else:
                self._failed = True
                if self._handshake_failed is not None:
                    self._handshake_failed("backend", event, value, now)

    def probe(self, now: float) -> None:
        """The grace after the last drop is over: a node with no connection now is dead."""
        self.due_at = self._first_at = math.inf
        if not self._table.judging(now):
            return  # the loop's own stall: its nodes may have given up on it, and redial after a back-off
        self._nodes.probe(now)
        if self._mdp.workers:
            self._mdp.probe(now)

    def close(self) -> None:
        if self.monitor is not None:
            self._backend.disable_monitor()
            self.monitor.close(linger=0)
