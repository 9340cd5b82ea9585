"""Unit tests for the benchmark's arithmetic: latency summaries, ratios, rates (percentiles: test_percentiles)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from bench import defaults, procstat, report, stats
from bench.cli import parse_scenarios
from bench.scenarios import SCENARIOS
from bench.scenarios_scale import stall_phases
from bench.starthandler import Start, read_starts
from tools.by_commit import split_bench_args
from tools.interleave import summarise
from tools.profile import top_functions


def test_latency_summary_converts_ns_to_us_and_sorts() -> None:
    """Unsorted nanoseconds become sorted-order percentiles in microseconds."""
    summary = stats.latency_summary_us([4000, 1000, 3000, 2000])
    assert summary == {"p50_us": 2.0, "p90_us": 4.0, "p99_us": 4.0, "max_us": 4.0}


def test_latency_summary_of_nothing_is_all_none() -> None:
    """No round trips: every figure is None, never zero."""
    assert stats.latency_summary_us([]) == {"p50_us": None, "p90_us": None, "p99_us": None, "max_us": None}


def test_ratio_rounds_and_guards_missing_values() -> None:
    """A ratio is rounded to three places; a missing or zero reference gives None."""
    assert stats.ratio(1, 3) == 0.333
    assert stats.ratio(30_000, 20_000) == 1.5
    assert stats.ratio(None, 2) is None
    assert stats.ratio(2, None) is None
    assert stats.ratio(2, 0) is None


def test_rate_and_per_item() -> None:
    """Rates per second and costs per item; empty intervals and counts give None."""
    assert stats.rate(500, 0.25) == 2000.0
    assert stats.rate(5, 0) is None
    assert stats.per_item(1_000_000, 3) == 333333.33
    assert stats.per_item(10, 0) is None


def test_parse_scenarios_accepts_repeats_and_commas_in_canonical_order() -> None:
    """--scenario queue,latency --scenario latency runs latency then queue, once each."""
    assert parse_scenarios(("queue,latency", "latency")) == ["latency", "queue"]
    assert parse_scenarios(()) == list(SCENARIOS)


def test_parse_scenarios_runs_a_replaced_name_as_its_successor() -> None:
    """`payload` was replaced by `payloads`: asking for either (or both) runs payloads, once."""
    assert parse_scenarios(("payload",)) == ["payloads"]
    assert parse_scenarios(("payloads,payload", "lean")) == ["payloads", "lean"]


def test_non_default_options_are_those_that_differ_from_zlb_balancers_own_defaults() -> None:
    """An option given at its default value is not a change; a different value or an option with no default is,
    and the description names the default beside it."""
    changed = defaults.changed(["--heartbeat-ms", "500", "--max-memory-mb", "0", "--journal", "/j", "--liveness", "3"])
    assert changed == {"--max-memory-mb": "0", "--journal": "/j"}
    assert defaults.changed(["--max-memory-mb", "256.0"]) == {}
    assert defaults.changed(["--require-standby"]) == {"--require-standby": "true"}
    assert defaults.describe(changed) == "--max-memory-mb 0 (default 256), --journal /j (default none)"


def test_starts_file_gives_whole_lines_only(tmp_path) -> None:
    """A start still being written (no newline yet) is left for the next look; a missing file is no start."""
    path = tmp_path / "starts.txt"
    assert read_starts(str(path)) == []
    path.write_text("7 1 0 4242 1000\n7 2 1 4343 2000\n8 1 1")
    assert read_starts(str(path)) == [Start(7, 1, 0, 4242, 1000), Start(7, 2, 1, 4343, 2000)]


def test_by_commit_passes_what_follows_a_double_dash_to_zlb_bench() -> None:
    """Its own options before `--`, zlb bench's after it; no `--`, nothing extra."""
    assert split_bench_args(["--scenario", "million", "HEAD", "--", "--burst", "100"]) == (
        ["--scenario", "million", "HEAD"],
        ("--burst", "100"),
    )
    assert split_bench_args(["--scenario", "lean", "HEAD"]) == (["--scenario", "lean", "HEAD"], ())


def test_parse_scenarios_rejects_unknown_names() -> None:
    """An unknown scenario is a clear usage error."""
    with pytest.raises(click.BadParameter, match="unknown scenario 'fast'"):
        parse_scenarios(("throughput,fast",))


def test_profile_ranks_functions_by_self_samples_and_counts_recursion_once() -> None:
    """py-spy raw lines give self and total samples; a function twice in one stack counts once."""
    raw = "\n".join(
        [
            "thread (0x1);run (loop.py:1);send (socket.py:2) 30",
            "thread (0x1);run (loop.py:1);decode (protocol.py:3) 10",
            "thread (0x2);_run (eventlog.py:4);_run (eventlog.py:4);log_line (events.py:5) 20",
            "garbage line",
        ]
    )
    samples, ranked = top_functions(raw, 3)
    assert samples == 60
    assert ranked == [
        ("send (socket.py:2)", 30, 30),
        ("log_line (events.py:5)", 20, 20),
        ("decode (protocol.py:3)", 10, 10),
    ]
    _samples, everything = top_functions(raw, 10)
    assert ("_run (eventlog.py:4)", 0, 20) in everything
    assert ("run (loop.py:1)", 0, 40) in everything


def test_table_right_aligns_numbers_and_dashes_missing_values() -> None:
    """The text table puts '-' for missing figures and thousands separators on big ones."""
    lines = report.table(
        [{"scenario": "throughput", "target": "zlb", "requests_per_s": 18048.0, "p50_us": 452.8, "note": ""}]
    )
    assert lines[0].split()[:3] == ["SCENARIO", "TARGET", "REQ/S"]
    cells = lines[1].split()
    assert cells[:4] == ["throughput", "zlb", "18,048", "452.8"]
    assert cells[4:] == ["-"] * 6


def test_stall_phases_take_the_longest_round_trip_sent_within_each_phase() -> None:
    """Each ping counts for the phase in which it was sent; an empty phase is None, not zero."""
    marks = {"idle": 0, "enqueue": 100, "admin": 200, "drain": 300, "end": 400}
    samples = [(10, 2_000_000), (50, 5_000_000), (150, 1_000_000), (250, 42_000_000), (399, 3_000_000), (400, 9e9)]
    assert stall_phases(samples, marks) == {"idle": 5.0, "enqueue": 1.0, "admin": 42.0, "drain": 3.0}
    assert stall_phases([(10, 1_000_000)], {"idle": 0, "drain": 50, "end": 60}) == {"idle": 1.0, "drain": None}


def test_interleave_summary_gives_median_and_range_of_numeric_fields_only() -> None:
    """Medians and ranges cover numbers; strings, booleans and missing values are left out."""
    records = [
        {"requests_per_s": 10.0, "verdict": "ok", "p50_us": None, "ok": True},
        {"requests_per_s": 30.0, "verdict": "harness-bound", "p50_us": 2.0, "ok": False},
        {"requests_per_s": 20.0, "verdict": "ok", "p50_us": 3.0, "ok": True},
    ]
    assert summarise(records) == {
        "requests_per_s": {"median": 20.0, "min": 10.0, "max": 30.0, "runs": [10.0, 30.0, 20.0]}
    }


def test_cpu_seconds_of_another_process_is_precise_and_agrees_with_proc_stat():
    """The CPU-time clock counts in nanoseconds where /proc/PID/stat counts 10 ms ticks; both agree."""
    code = (
        "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass\n"
        "print(1, flush=True)\nsys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"1\n"
        precise = procstat.cpu_seconds(child.pid)
        with open(f"/proc/{child.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = (int(fields[11]) + int(fields[12])) / procstat.CLOCK_TICKS_PER_S
        assert precise >= 0.2 and abs(precise - ticks) <= 0.05
        assert round(precise * 1e9) % 10_000_000 != 0  # not a whole number of ticks: the clock, not /proc
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_peak_rss_of_another_process_can_start_again_from_now() -> None:
    """After a child frees 100 MiB, its peak still counts them until reset_peak_rss starts it again from now."""
    code = "import sys\nx = bytearray(100 * 2**20)\ndel x\nprint(1, flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"1\n"
        before = procstat.memory_kib(child.pid)
        assert before["VmHWM"] - before["VmRSS"] >= 90 * 1024
        assert procstat.reset_peak_rss(child.pid)
        after = procstat.memory_kib(child.pid)
        assert after["VmHWM"] - after["VmRSS"] < 10 * 1024
    finally:
        child.stdin.close()
        child.wait(timeout=10)
