"""One scenario at several commits, in interleaved rounds: the before and after of each optimisation.

    python -m tools.by_commit --rounds 3 --scenario userpath 8d13fd4 db1cce6 HEAD
    python -m tools.by_commit --same-bench --rounds 3 --scenario million 5ab9689 HEAD -- --burst 200000

Each commit is checked out in a temporary git worktree; every round runs
`zlb bench --json --scenario NAME` once per commit, in the order given, with
that worktree first on PYTHONPATH (and as the working directory), so the
bench and every process it starts run that commit's code. Commits alternate
through the session, so a busy minute on a shared machine hurts them alike.

With --same-bench, every commit is measured by this checkout's bench/ (the
same measuring stick for all; the commits' zlb code still runs the balancer,
nodes and clients): for commits older than a change to the bench itself,
such as the scenarios added after them (capacity1, payloads, million,
killnode, lean). Options after `--` go to every `zlb bench`.

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

from bench.procs import STOP_TIMEOUT_S
from process_supervisor.supervisor import terminate
from tools.interleave import RUN_TIMEOUT_S, print_report, run_rounds

# This checkout's bench package (tools/ sits beside it), lent to every commit by --same-bench.
THIS_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def bench_at(worktree: str, scenario: str, bench_dir: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One `zlb bench --json --scenario NAME [extra]` run with the worktree's code (and bench_dir's bench/, if
    given)."""
    env = dict(os.environ, PYTHONPATH=worktree if bench_dir is None else f"{bench_dir}{os.pathsep}{worktree}")
    argv = [sys.executable, "-m", "zlb", "bench", "--json", "--scenario", scenario, *extra]
    # `python -m` puts its working directory first on the path: run from bench_dir so its bench/ wins.
    proc = subprocess.Popen(
        argv,
        cwd=worktree if bench_dir is None else bench_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:  # stopped or timed out: SIGTERM first, so the bench stops its own processes
            terminate([proc], STOP_TIMEOUT_S)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {worktree} failed: {err[-800:]}")
    return json.loads(out)[scenario]


def split_bench_args(argv: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """This tool's arguments, and those after `--`, which go to every `zlb bench`."""
    if "--" not in argv:
        return argv, ()
    cut = argv.index("--")
    return argv[:cut], tuple(argv[cut + 1 :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.by_commit", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--same-bench", action="store_true", help="measure every commit with this bench/")
    parser.add_argument("commits", nargs="+", help="anything git rev-parse takes; then -- and zlb bench options")
    own, extra = split_bench_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for commit in args.commits:
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], capture_output=True)
        if known.returncode != 0:
            parser.error(f"{commit!r} names no commit in this repository")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the worktrees are removed on kill too
    with tempfile.TemporaryDirectory(prefix="zlb-by-commit-") as tmp:
        trees = {c: os.path.join(tmp, f"tree{i}") for i, c in enumerate(args.commits)}
        bench_dir = None
        if args.same_bench:  # a directory holding only this checkout's bench package, first on the path
            bench_dir = os.path.join(tmp, "bench-only")
            os.mkdir(bench_dir)
            os.symlink(THIS_BENCH, os.path.join(bench_dir, "bench"))
        try:
            for commit, tree in trees.items():
                subprocess.run(["git", "worktree", "add", "--detach", tree, commit], check=True, capture_output=True)
            records, loads = run_rounds(
                args.rounds,
                args.commits,
                lambda commit: bench_at(trees[commit], args.scenario, bench_dir, extra),
                "round",
            )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", tree], capture_output=True)
    print_report({"scenario": args.scenario, "rounds": args.rounds, "bench_args": list(extra)}, records, loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
