"""Profile the balancer's hot loop with py-spy while the bench loads it.

    .venv/bin/pip install py-spy        # a profiling tool, not a zlb dependency
    python -m tools.profile --load throughput --duration 5

Starts a balancer with echo nodes (as the throughput scenario does), samples
it with `py-spy record --format raw` while clients keep their windows full,
and prints the functions with the most samples: self (the function itself
was running) and total (it was on the stack). Idle samples (the loop waiting
in poll) are left out by py-spy, so the shares are of busy time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter

from bench.harness import Bench
from bench.procs import STOP_TIMEOUT_S

LOADS = {
    # name: (clients, window, payload bytes)
    "throughput": (2, 100, 16),
    "latency": (1, 1, 16),
    "payload": (2, 100, 256 * 1024),
}


def top_functions(raw: str, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(function, self samples, total samples)]) from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    ranked = sorted(total, key=lambda f: (own[f], total[f]), reverse=True)[:limit]
    return samples, [(f, own[f], total[f]) for f in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=sorted(LOADS), default="throughput")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=50)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--raw", default=None, help="also keep py-spy's raw output here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    clients, window, payload = LOADS[args.load]
    with tempfile.TemporaryDirectory(prefix="zlb-profile-") as workdir:
        bench = Bench(workdir)
        raw_path = args.raw or os.path.join(workdir, "balancer.raw")
        try:
            target = bench.start_zlb(args.nodes, args.capacity)
            run = bench.start_clients(target, clients, window, duration=args.duration + 1.0, payload_bytes=payload)
            spy = bench.procs.start(
                "py-spy",
                [
                    *(py_spy, "record", "--pid", str(target.pid), "--duration", str(int(args.duration))),
                    *("--format", "raw", "--output", raw_path, "--rate", "250", "--nonblocking", "--function"),
                ],
            )
            spy.wait(args.duration + 30)
            load = bench.collect(run, args.duration + 60)
        finally:
            bench.procs.stop_all(STOP_TIMEOUT_S)
        with open(raw_path, encoding="utf-8") as fh:
            samples, ranked = top_functions(fh.read(), args.top)
    print(f"load {args.load}: {load.requests_per_s} requests/s, balancer {load.cpu_us_per_request} us CPU/request")
    print(f"{samples} busy samples of the balancer")
    print(f"{'self %':>7} {'total %':>7}  function")
    for name, own, total in ranked:
        print(f"{100 * own / max(1, samples):7.1f} {100 * total / max(1, samples):7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
