"""Medians and ranges over interleaved `zlb bench` runs, for figures that hold on a noisy machine.

Each round runs every named scenario once, each in its own `zlb bench --json`
process, so broker A and broker B alternate through the whole session rather
than one running in a quiet minute and the other in a busy one.

    python -m tools.interleave --runs 5 --scenario harness --scenario userpath

Prints one JSON object: per scenario, per numeric field, the median, the
minimum, the maximum and every value in run order; plus the load average
before each run and every run's raw record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

# One `zlb bench --scenario X` at full size takes well under this; a stuck run must not hang the session.
RUN_TIMEOUT_S = 1800


def run_once(scenario: str, extra: list[str]) -> dict[str, Any]:
    """One `zlb bench --json --scenario NAME`; its record for that scenario."""
    argv = [sys.executable, "-m", "zlb", "bench", "--json", "--scenario", scenario, *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-800:]}")
    return json.loads(done.stdout)[scenario]


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median, min, max and values of every numeric top-level field present in each record."""
    out: dict[str, dict[str, Any]] = {}
    for key in records[0]:
        values = [r.get(key) for r in records]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
    return out


def run_rounds(
    rounds: int, names: list[str], run: Callable[[str], dict[str, Any]], noun: str = "run"
) -> tuple[dict[str, list[dict[str, Any]]], list[float]]:
    """`rounds` times, `run(name)` for each name in turn: the records by name, and the load average
    before each run (both in run order)."""
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    loads: list[float] = []
    for i in range(rounds):
        for name in names:
            loads.append(round(os.getloadavg()[0], 2))
            records[name].append(run(name))
            print(f"{noun} {i + 1}/{rounds} {name} done (load average {loads[-1]})", file=sys.stderr, flush=True)
    return records, loads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.interleave", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", action="append", required=True, help="repeat for several, run in turn")
    parser.add_argument("bench_args", nargs="*", help="passed to zlb bench after --, e.g. -- --duration 5")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    records, loads = run_rounds(args.runs, args.scenario, lambda name: run_once(name, args.bench_args))
    print_report({"runs": args.runs}, records, loads)
    return 0


def print_report(head: dict[str, Any], records: dict[str, list[dict[str, Any]]], loads: list[float]) -> None:
    """One JSON object: `head`, the load before each run, per name the summary, and every record."""
    summary = {name: summarise(recs) for name, recs in records.items()}
    report = {**head, "load_average_before_each_run": loads, "summary": summary, "records": records}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
