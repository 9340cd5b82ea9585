"""docs/PERFORMANCE.md stays a reference (issue 19): at most 300 lines; the history lives in git."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_performance_reference_stays_at_most_300_lines():
    lines = (ROOT / "docs" / "PERFORMANCE.md").read_text().splitlines()
    assert 50 < len(lines) <= 300, f"docs/PERFORMANCE.md has {len(lines)} lines: keep it a reference"
