"""Where the balancer's four sockets are: the defaults and the ZLB_* variables that override them."""

from __future__ import annotations

import os

# Default endpoints; every zlb command reads the ZLB_* variables, the balancer
# binds them and every other role connects to them.
DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
DEFAULT_EVENTS = "tcp://127.0.0.1:5557"
DEFAULT_CONTROL = "tcp://127.0.0.1:5558"
ENDPOINT_ENV = {
    "frontend": ("ZLB_FRONTEND", DEFAULT_FRONTEND),
    "backend": ("ZLB_BACKEND", DEFAULT_BACKEND),
    "events": ("ZLB_EVENTS", DEFAULT_EVENTS),
    "control": ("ZLB_CONTROL", DEFAULT_CONTROL),
}


def endpoint(role: str) -> str:
    """The endpoint for a socket role, from its ZLB_* variable or the default."""
    var, default = ENDPOINT_ENV[role]
    return os.environ.get(var) or default
