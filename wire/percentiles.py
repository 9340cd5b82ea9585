"""Nearest-rank percentiles: the one definition behind every latency figure zlb shows.

`zlb bench`'s tables, `zlb monitor`'s latency line and `zlb http`'s dashboard
all pick their p50/p90/p99 here, so the same samples give the same figures
everywhere. Nearest rank (the smallest value with at least pct% of the values
at or below it) always answers with a value that was measured, never an
interpolation between two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The percentiles every summary reports.
REPORTED = (50, 90, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank `pct` percentile (0..100) of already sorted values; None when there are none."""
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is outside 0..100")
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(pct / 100 * n))
    return sorted_values[rank - 1]


def p50_p90_p99(sorted_values: Sequence[float]) -> dict[str, float | None]:
    """{"p50": …, "p90": …, "p99": …} of already sorted values (each None when there are none)."""
    return {f"p{pct}": percentile(sorted_values, pct) for pct in REPORTED}
