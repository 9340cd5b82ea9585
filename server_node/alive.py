"""A node's own sign of life, for a container's probes: `zlb server --alive-file PATH`.

The node's loop rewrites the file at least every ALIVE_EVERY_S seconds, whether or not a balancer answers
(a node keeps redialling on its own), saying whether it has joined one. `zlb server-check` reads it: the
file's age tells whether the node's loop still runs (a stopped or wedged process stops writing it), its
`joined` whether a balancer took the node in. Neither asks the balancer, so a balancer outage makes a
node unready but never dead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# How often the loop rewrites the file at most (and, with a file to keep, wakes at least).
ALIVE_EVERY_S = 1.0


class AliveFile:
    """The file a node's loop keeps fresh: {"pid", "joined", "node_id"}, replaced whole each time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._due = 0.0
        self._said: tuple[bool, int | None] | None = None
        self._complained = False

    def tick(self, now: float, joined: bool, node_id: int | None) -> None:
        """Rewrite the file when ALIVE_EVERY_S has passed since the last time, or what it says changed."""
        if now < self._due and self._said == (joined, node_id):
            return  # every turn of a busy loop comes here: nothing allocated
        self._due, self._said = now + ALIVE_EVERY_S, (joined, node_id)
        state: dict[str, Any] = {"pid": os.getpid(), "joined": joined, "node_id": node_id}
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(temporary, self.path)  # a reader sees the old file or the new one, never half of one
        except OSError as exc:
            if not self._complained:  # the probe reading it will fail and say so; once here is enough
                self._complained = True
                print(f"zlb server: cannot write --alive-file {self.path}: {exc}", file=sys.stderr, flush=True)


def check(path: str, max_age_s: float, need_joined: bool) -> str | None:
    """What is wrong with the node that keeps `path`, in words; None when it is alive (and joined, if asked)."""
    try:
        age = time.time() - os.stat(path).st_mtime
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {exc} (is zlb server running with --alive-file {path}?)"
    if age > max_age_s:
        return f"the node last wrote {path} {age:.0f} s ago (more than {max_age_s:g} s): its loop does not run"
    if need_joined and not (isinstance(state, dict) and state.get("joined")):
        return "the node runs but has not joined a balancer (none answers it, or it is being refused)"
    return None
