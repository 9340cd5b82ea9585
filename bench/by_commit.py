"""One scenario at several commits, in interleaved rounds: the before and after of each optimisation.

    python -m bench.by_commit --rounds 3 --scenario userpath 8d13fd4 db1cce6 HEAD

Each commit is checked out in a temporary git worktree; every round runs
`zlb bench --json --scenario NAME` once per commit, in the order given, with
that worktree first on PYTHONPATH (and as the working directory), so the
bench and every process it starts run that commit's code. Commits alternate
through the session, so a busy minute on a shared machine hurts them alike.

Prints one JSON object: per commit, per numeric field, the median, minimum,
maximum and every value in round order; plus the load average before each
run. The worktrees are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from bench.interleave import RUN_TIMEOUT_S, run_rounds, summarise


def bench_at(worktree: str, scenario: str) -> dict[str, Any]:
    """One `zlb bench --json --scenario NAME` run with the worktree's code."""
    env = dict(os.environ, PYTHONPATH=worktree)
    argv = [sys.executable, "-m", "zlb", "bench", "--json", "--scenario", scenario]
    done = subprocess.run(
        argv, cwd=worktree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {worktree} failed: {done.stderr[-800:]}")
    return json.loads(done.stdout)[scenario]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.by_commit", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("commits", nargs="+", help="anything git rev-parse takes")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the worktrees are removed on kill too
    with tempfile.TemporaryDirectory(prefix="zlb-by-commit-") as tmp:
        trees = {c: os.path.join(tmp, f"tree{i}") for i, c in enumerate(args.commits)}
        try:
            for commit, tree in trees.items():
                subprocess.run(["git", "worktree", "add", "--detach", tree, commit], check=True, capture_output=True)
            records, loads = run_rounds(
                args.rounds, args.commits, lambda commit: bench_at(trees[commit], args.scenario), "round"
            )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", tree], capture_output=True)
    result = {
        "scenario": args.scenario,
        "rounds": args.rounds,
        "load_average_before_each_run": loads,
        "summary": {c: summarise(recs) for c, recs in records.items()},
        "records": records,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
