"""Which of `zlb balancer`'s defaults a scenario changed, so that its output says so.

A benchmark never changes a default silently: every option the bench gives a
balancer (beyond its endpoints and its log file, which always go to the
bench's own ports and scratch directory) is compared with the default of
`zlb balancer` itself (read from its click command, so a changed default is
seen here too), and each one that differs is named in the scenario's record
(`non_default`) and in a note under the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from balancer.serve_cli import balancer


def _defaults() -> dict[str, Any]:
    return {opt: param.default for param in balancer.params for opt in param.opts if opt.startswith("--")}


def _same(value: str, default: Any) -> bool:
    if default is None or isinstance(default, bool):
        return False
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return value == str(default)


def changed(options: Sequence[str]) -> dict[str, str]:
    """`--option value` pairs (a flag alone counts as `true`) whose value is not the balancer's default."""
    defaults = _defaults()
    out: dict[str, str] = {}
    i = 0
    while i < len(options):
        name = options[i]
        has_value = i + 1 < len(options) and not options[i + 1].startswith("--")
        value = options[i + 1] if has_value else "true"
        i += 2 if has_value else 1
        if not _same(value, defaults.get(name)):
            out[name] = value
    return out


def describe(non_default: dict[str, str]) -> str:
    """`--max-memory-mb 0 (default 256), --journal FILE (default none)`."""
    defaults = _defaults()
    parts = []
    for name, value in non_default.items():
        default = defaults.get(name)
        parts.append(f"{name} {value} (default {'none' if default is None else default})")
    return ", ".join(parts)
