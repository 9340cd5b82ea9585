"""Unit tests for the one percentile definition (wire/percentiles.py) the bench, zlb monitor and zlb http share."""

from __future__ import annotations

import pytest

from wire.percentiles import p50_p90_p99, percentile


def test_percentile_nearest_rank_of_ten_values() -> None:
    """Nearest rank picks a measured value: p50 of 1..10 is 5, p90 is 9, p99 and p100 are 10."""
    values = list(range(1, 11))
    assert [percentile(values, q) for q in (0, 50, 90, 99, 100)] == [1, 5, 9, 10, 10]


def test_percentile_of_one_value_and_of_none() -> None:
    """A single sample is every percentile; no samples give None."""
    assert percentile([7], 50) == 7
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range() -> None:
    """A percentile outside 0..100 is a programming error."""
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_p99_of_a_thousand_values_ignores_the_top_ten() -> None:
    """p99 of 1..1000 is 990: ten samples are above it."""
    assert percentile(list(range(1, 1001)), 99) == 990


def test_p50_p90_p99_name_their_figures_and_are_none_without_samples() -> None:
    """The three reported figures, keyed as every caller shows them; no samples give None, never zero.

    The p50 of two samples is the lower: half the samples are at or below it.
    """
    assert p50_p90_p99(list(range(1, 11))) == {"p50": 5, "p90": 9, "p99": 10}
    assert p50_p90_p99([4.6, 6.5]) == {"p50": 4.6, "p90": 6.5, "p99": 6.5}
    assert p50_p90_p99([]) == {"p50": None, "p90": None, "p99": None}
