"""Pure arithmetic for the benchmark: latency summaries, ratios, rates.

No clock and no I/O here, so the unit tests can pin every edge case.
"""

from __future__ import annotations

from collections.abc import Sequence

from wire.percentiles import p50_p90_p99


def latency_summary_us(latencies_ns: Sequence[int]) -> dict[str, float | None]:
    """p50/p90/p99/max in microseconds (one decimal) of round trips in nanoseconds."""
    ordered = sorted(latencies_ns)
    summary = {f"{name}_us": _us(ns) for name, ns in p50_p90_p99(ordered).items()}
    summary["max_us"] = _us(ordered[-1] if ordered else None)
    return summary


def _us(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1000, 1)


def ratio(value: float | None, reference: float | None, digits: int = 3) -> float | None:
    """value / reference, rounded; None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return round(value / reference, digits)


def rate(count: int, seconds: float) -> float | None:
    """Events per second, rounded to one decimal; None for an empty interval."""
    if seconds <= 0:
        return None
    return round(count / seconds, 1)


def per_item(total: float, count: int, digits: int = 2) -> float | None:
    """total / count, rounded; None when nothing was counted."""
    if count <= 0:
        return None
    return round(total / count, digits)
