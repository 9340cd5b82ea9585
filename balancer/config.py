"""What `zlb balancer` can set: BalancerConfig, with a default for every field.

The defaults belong to the modules that use them (the wire, the scheduler, the
memory budget); the grace of a graceful stop is the config's own.
balancer/serve_cli.py builds a config from the command line (every option is a
field of the same name); balancer/loop.py runs a Balancer with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from balancer.budget import DEFAULT_MAX_MEMORY_MB, MIB
from balancer.election import DEFAULT_LEASE_S
from balancer.kept import (
    DEFAULT_KEEP_FINISHED,
    DEFAULT_KEEP_FINISHED_BYTES,
    DEFAULT_KEEP_FINISHED_S,
    DEFAULT_REMEMBER_BYTES,
    DEFAULT_REMEMBER_S,
)
from balancer.scheduler import DEFAULT_MAX_ATTEMPTS
from wire import endpoints, limits
from wire import protocol as p

DEFAULT_GRACE_S = 5.0
# After its node died, a request waits this long before its next attempt (doubling per attempt, jittered;
# balancer/timers.py), so a request that kills its nodes does not take them all down at once.
DEFAULT_RETRY_BACKOFF_MS = 100
# A node whose connection drops is dead unless it is connected again within this (balancer/drops.py). A reset
# connection comes back by itself: a node's DEALER redials after 10-20 ms (server_node/node.py,
# RECONNECT_IVL_MS), plus its handshake; from the drop to the route back measured 6 ms median, 27 ms at worst
# over 60 resets (ss -K) at a load of 5 per core. A kill -9 costs this much more than the drop itself.
DEFAULT_RECONNECT_GRACE_MS = 50
# How often MDP workers heartbeat when idle (RFC 18's examples and majortomo: 2.5 s).
DEFAULT_MDP_HEARTBEAT_MS = 2500


@dataclass
class BalancerConfig:
    """Everything `zlb balancer` can set."""

    frontend: str = endpoints.DEFAULT_FRONTEND
    backend: str = endpoints.DEFAULT_BACKEND
    events: str = endpoints.DEFAULT_EVENTS
    control: str = endpoints.DEFAULT_CONTROL
    heartbeat_ms: int = p.HEARTBEAT_INTERVAL_MS
    liveness: int = p.LIVENESS
    max_queue: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_backoff_ms: int = DEFAULT_RETRY_BACKOFF_MS  # after a node died, the first wait before the next attempt
    reconnect_grace_ms: int = DEFAULT_RECONNECT_GRACE_MS  # 0: a dropped connection judges nothing, heartbeats do
    max_dead: int = 10_000  # dead letters kept at most (balancer/dead.py)
    max_dead_bytes: int = 64 * MIB
    keep_finished: int | None = DEFAULT_KEEP_FINISHED  # None: no count, only the time, bytes and budget
    keep_finished_bytes: int = DEFAULT_KEEP_FINISHED_BYTES
    keep_finished_s: float = DEFAULT_KEEP_FINISHED_S
    remember_s: float = DEFAULT_REMEMBER_S
    remember_bytes: int = DEFAULT_REMEMBER_BYTES
    max_message_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES
    log_file: str | None = None  # the CLI passes its default (under XDG_STATE_HOME); None writes no file
    journal: str | None = None
    curve_secret: str | None = None
    allow_dir: str | None = None
    admin_allow_dir: str | None = None
    node_allow_dir: str | None = None  # with it, only these keys may join the backend (wire/security.py)
    grace_s: float = DEFAULT_GRACE_S
    max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_MB * MIB  # None: no budget (bytes still counted)
    # HA (balancer/member.py): etcd://HOST:PORT[,...]/GROUP, this member's replication endpoint.
    ha: str | None = None
    replication: str | None = None
    require_standby: bool = False
    ha_lease_s: int = DEFAULT_LEASE_S
    # A standby whose oldest unapplied answer waited longer is dropped (balancer/replication.py).
    standby_max_lag_ms: int = 1000
    # Majordomo (balancer/majordomo.py): an idle MDP worker silent for liveness x this is dead (2.5 s: the
    # interval of RFC 18's examples and of majortomo); every MDP client request gets this deadline (None: none).
    mdp_heartbeat_ms: int = DEFAULT_MDP_HEARTBEAT_MS
    mdp_deadline_ms: int | None = None
    endpoints: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.endpoints = {
            "frontend": self.frontend,
            "backend": self.backend,
            "events": self.events,
            "control": self.control,
        }

    def scheduler_options(self) -> dict[str, Any]:
        """The Scheduler's settings from this config (plain values): the loop's, and a standby's compaction
        child's, which restores a state as a start with this config would (balancer/replica_compaction.py)."""
        return {
            "heartbeat_s": self.heartbeat_ms / 1000,
            "liveness": self.liveness,
            "max_queue": self.max_queue,
            "max_attempts": self.max_attempts,
            "keep_finished": self.keep_finished,
            "keep_finished_bytes": self.keep_finished_bytes,
            "keep_finished_s": self.keep_finished_s,
            "remember_s": self.remember_s,
            "remember_bytes": self.remember_bytes,
            "journal": self.journal is not None,
            "max_memory_bytes": self.max_memory_bytes,
            "retry_backoff_s": self.retry_backoff_ms / 1000,
            "max_dead": self.max_dead,
            "max_dead_bytes": self.max_dead_bytes,
        }

