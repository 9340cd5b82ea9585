"""Click options shared by every zlb command: endpoints and timings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from wire import protocol as p
from wire.endpoints import ENDPOINT_ENV

# Bounds for sizes and durations given on a command line: far past any real use, and small enough
# that what is built from them (socket options, byte counts, timer arithmetic, JSON) stays finite.
MAX_MIB = 4 * 2**20  # 4 TiB
MAX_SECONDS = 10 * 365 * 86_400.0  # ten years


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf, which every comparison lets through."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def mib_range(low: float = 0) -> FiniteRange:
    """A size in MiB: at least `low`, finite, at most MAX_MIB."""
    return FiniteRange(low, MAX_MIB)


def seconds_range(low: float = 0, min_open: bool = False) -> FiniteRange:
    """A duration in seconds: at least (or, with min_open, above) `low`, finite, at most MAX_SECONDS."""
    return FiniteRange(low, MAX_SECONDS, min_open=min_open)


def millis_range(low: float = 0) -> FiniteRange:
    """A duration in milliseconds: at least `low`, finite, at most MAX_SECONDS."""
    return FiniteRange(low, MAX_SECONDS * 1000)


# Ids travel as msgpack unsigned integers.
ID_RANGE = click.IntRange(0, 2**64 - 1)

HELP = {
    "frontend": "Client endpoint (ROUTER on the balancer).",
    "backend": "Server-node endpoint (ROUTER on the balancer).",
    "events": "Event endpoint (PUB on the balancer).",
    "control": "Admin endpoint (ROUTER on the balancer).",
}


def _checked_endpoints(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One endpoint, or an HA group's comma-separated list: each TRANSPORT://ADDRESS, or one line and exit 2."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise click.BadParameter("no endpoint given (tcp://HOST:PORT, ipc://PATH, ...)")
    for part in parts:
        transport, sep, address = part.partition("://")
        if not sep or not transport.isalpha() or not address or any(c.isspace() for c in address):
            raise click.BadParameter(f"{part!r} is not an endpoint (tcp://HOST:PORT, ipc://PATH, ...)")
    return value


def endpoint_option(role: str) -> Callable[[Any], Any]:
    """`--<role>` with its ZLB_* variable and default, as every command reads it."""
    var, default = ENDPOINT_ENV[role]
    return click.option(
        f"--{role}",
        envvar=var,
        default=default,
        show_default=True,
        show_envvar=True,
        callback=_checked_endpoints,
        help=HELP[role],
    )


def endpoints(*roles: str) -> Callable[[Any], Any]:
    """Add the endpoint options of several roles."""

    def decorate(func: Any) -> Any:
        for role in reversed(roles):
            func = endpoint_option(role)(func)
        return func

    return decorate


def shown_option(name: str, kind: Any, default: Any, help_text: str, *dest: str) -> Callable[[Any], Any]:
    """A typed option whose default --help shows: the common shape of zlb's options."""
    return click.option(name, *dest, type=kind, default=default, show_default=True, help=help_text)


def path_option(name: str, help_text: str, *dest: str) -> Callable[[Any], Any]:
    """An optional existing file (or, when `dest` ends in `_dir`, directory)."""
    directory = bool(dest) and dest[0].endswith("_dir")
    kind = click.Path(exists=True, dir_okay=directory, file_okay=not directory)
    return click.option(name, *dest, type=kind, default=None, help=help_text)


def heartbeat_options(func: Any) -> Any:
    """`--heartbeat-ms` and `--liveness`."""
    liveness_help = "Silent intervals before a peer is declared dead."
    func = shown_option("--liveness", click.IntRange(1, 100), p.LIVENESS, liveness_help)(func)
    interval_help = "Heartbeat interval in milliseconds."
    return shown_option("--heartbeat-ms", click.IntRange(10, 600_000), p.HEARTBEAT_INTERVAL_MS, interval_help)(func)


def json_option(func: Any) -> Any:
    """`--json`: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def grace_option(default_s: float) -> Callable[[Any], Any]:
    """`--grace-s`: how long a SIGTERM'd process lets in-flight work finish."""
    return click.option(
        "--grace-s",
        type=seconds_range(0),
        default=default_s,
        show_default=True,
        help="On SIGTERM, how long in-flight work may take to finish.",
    )


def service_names(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: each --service name checked (1-64 of A-Z a-z 0-9 . _ : -), with a clear error."""
    names = value if isinstance(value, tuple) else (value,)
    for name in names:
        if name is not None and p.service_error(name):
            raise click.BadParameter(p.service_error(name), param=param)
    if isinstance(value, tuple) and len(value) > p.MAX_NODE_SERVICES:
        raise click.BadParameter(f"at most {p.MAX_NODE_SERVICES} services", param=param)
    return tuple(dict.fromkeys(value)) if isinstance(value, tuple) else value
