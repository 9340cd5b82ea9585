"""Following the leader: which of a balancer group's endpoints a client or node talks to, and its epoch.

A client or node is given one endpoint or a comma-separated list (`--frontend
a,b`, `ZLB_BACKEND=a,b`). It talks to one at a time. A standby answers
REDIRECT with the leader's endpoint and the peer moves there at once; silence
for longer than the balancer's liveness moves it to the next endpoint in the
list (the one it talked to may be a dead leader). Every message from a balancer
carries the epoch of its leadership: the peer remembers the newest it has seen
and drops anything older (a leader that was paused, partitioned or replaced
and speaks again), counting it. Epoch 0 is a balancer without HA and always
taken. docs/PROTOCOL.md, "Leaders, standbys and epochs".
"""

from __future__ import annotations


def endpoint_list(value: str) -> list[str]:
    """The endpoints in a comma-separated value, in order, without blanks or repeats; ValueError if none."""
    out: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    if not out:
        raise ValueError(f"no endpoint in {value!r}")
    return out


class Following:
    """The endpoints a peer may talk to, the one it talks to now, and the newest epoch it has seen."""

    def __init__(self, endpoints: str | list[str]) -> None:
        self.endpoints = endpoint_list(endpoints) if isinstance(endpoints, str) else list(endpoints)
        self.index = 0
        self.epoch = 0
        self.stale = 0  # messages dropped for an epoch older than `epoch`
        self.moves = 0  # how often the peer moved to another endpoint

    @property
    def current(self) -> str:
        return self.endpoints[self.index]

    @property
    def several(self) -> bool:
        """More than one endpoint: silence is a reason to try the next."""
        return len(self.endpoints) > 1

    def fresh(self, epoch: int) -> bool:
        """Whether a message of `epoch` may be acted on; newer epochs are remembered, older ones counted."""
        if epoch >= self.epoch or epoch == 0:
            self.epoch = max(self.epoch, epoch)
            return True
        self.stale += 1
        return False

    def redirected(self, endpoint: str | None) -> bool:
        """A standby named the leader: True if that is somewhere else (the caller reconnects there)."""
        if endpoint is None or endpoint == self.current:
            return False
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)  # a leader we were not told of: it is one of the group
        self.index = self.endpoints.index(endpoint)
        self.moves += 1
        return True

    def next(self) -> str:
        """Silence: the next endpoint in the list (the same one when there is only one)."""
        self.index = (self.index + 1) % len(self.endpoints)
        if self.several:
            self.moves += 1
        return self.current
