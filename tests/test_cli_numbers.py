"""Absurd numbers on the command line: one line naming the option, exit 2, before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from zlb.cli import main

ABSURD = [
    (["balancer", "--keep-finished-mb", "1e300"], "--keep-finished-mb"),
    (["balancer", "--keep-finished-s", "nan"], "--keep-finished-s"),
    (["balancer", "--remember-s", "inf"], "--remember-s"),
    (["balancer", "--remember-mb", "inf"], "--remember-mb"),
    (["balancer", "--max-dead-mb", "nan"], "--max-dead-mb"),
    (["balancer", "--grace-s", "nan"], "--grace-s"),
    (["balancer", "--max-memory-mb", str(2**63 - 1)], "--max-memory-mb"),
    (["balancer", "--max-message-bytes", str(2**63)], "--max-message-bytes"),
    (["server", "--id", str(2**64)], "--id"),
    (["server-check", "--alive-file", "x", "--max-age", "nan"], "--max-age"),
    (["send", "--cost-ms", "nan"], "--cost-ms"),
    (["send", "--timeout", "inf"], "--timeout"),
    (["client", "--id", str(2**64)], "--id"),
    (["cluster", "--cost-ms", "inf"], "--cost-ms"),
    (["http", "--control-timeout", "nan"], "--control-timeout"),
    (["status", "--timeout", "nan"], "--timeout"),
]


@pytest.mark.parametrize("args,option", ABSURD)
def test_an_absurd_number_is_refused_in_one_line_naming_its_option(args: list[str], option: str | None) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:")
    if option is not None:
        assert option in last and ("not a finite number" in last or "not in the range" in last), last


def test_the_largest_sizes_and_durations_allowed_still_parse() -> None:
    """The bounds are far past any real use: the largest value of each parses (checked with --help's parse)."""
    from wire.options import MAX_MIB, MAX_SECONDS, mib_range, seconds_range

    assert mib_range().convert(str(MAX_MIB), None, None) == MAX_MIB
    assert seconds_range().convert(str(MAX_SECONDS), None, None) == MAX_SECONDS
    assert seconds_range(0, min_open=True).convert("0.001", None, None) == 0.001
