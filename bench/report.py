"""The bench's text table."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("scenario", "SCENARIO"),
    ("target", "TARGET"),
    ("requests_per_s", "REQ/S"),
    ("p50_us", "P50 us"),
    ("p90_us", "P90 us"),
    ("p99_us", "P99 us"),
    ("max_us", "MAX us"),
    ("cpu_us_per_request", "CPU us/REQ"),
    ("rss_mb", "RSS MiB"),
    ("note", "NOTE"),
)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:g}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text lines, numbers right-aligned."""
    cells = [[h for _k, h in COLUMNS]] + [[_cell(r.get(k)) for k, _h in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = []
        for i, (key, _h) in enumerate(COLUMNS):
            text = line[i]
            left = key in ("scenario", "target", "note")
            parts.append(text.ljust(widths[i]) if left else text.rjust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return lines
