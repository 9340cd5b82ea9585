"""Python bytecode instructions per hop, one request at a time: zlb or the frame relay.

    python -m tools.opcodes --target zlb                  # the Client API, a zlb balancer, one echo node
    python -m tools.opcodes --target relay                # a lean client, bench.framerelay, bench.rawecho
    python -m tools.opcodes --target zlb --code /tmp/old  # zlb as in another checkout (a worktree)

Every process runs with tools/opcount first on its path, whose sitecustomize counts the
opcodes its main thread runs from each wake-up to the next message it sends ("before the
send": on the request's path) and from that send to its next wait ("after": off the path,
but on a shared machine's cores). The table gives, per process, the median count per
segment (the balancer's two hops apart: a submission and a result) and the functions
that run most before the send. Unlike a timing, a count does not move with the load:
what it measures is what a change removed, not what that saved in microseconds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
from typing import Any

from tools import hops

OPCOUNT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opcount")
# Segments counted only after this many of a process's first: imports and the warm-up are not the loop.
SKIP_SEGMENTS = 200


def summarise(counted: dict[str, Any], top: int) -> dict[str, Any]:
    """One process's median opcodes per segment, before and after its sends, and its top functions."""
    out: dict[str, Any] = {}
    for kind in ("before", "after"):
        segments = counted["segments"][kind][SKIP_SEGMENTS:] or counted["segments"][kind]
        out[kind] = statistics.median(n for n, _hop in segments) if segments else None
        for hop in sorted({hop for _n, hop in segments if hop}):
            out[f"{kind}_{hop}"] = statistics.median(n for n, h in segments if h == hop)
    for key, functions in counted["functions"].items():
        kind, _, hop = key.partition("_")
        total = max(1, sum(1 for _n, h in counted["segments"][kind] if h == hop or not hop))
        ranked = sorted(functions, key=lambda f: -f[2])
        out[f"top_{key}"] = [[name, where, round(n / total, 1)] for name, where, n in ranked[:top]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.opcodes", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("zlb", "relay"), required=True)
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds")
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--top", type=int, default=8, help="functions listed per process")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--code", help="run the processes from this checkout (e.g. a worktree of an older commit)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup_s < 0 or args.top < 0:
        parser.error("--duration must be positive, --warmup-s and --top not negative")
    if args.code is not None and not os.path.isdir(os.path.join(args.code, "balancer")):
        parser.error(f"--code {args.code!r} is not a zlb checkout")
    with tempfile.TemporaryDirectory(prefix="zlb-opcount-") as count_dir:
        tracer = (OPCOUNT_DIR, "ZLB_OPCOUNT")
        _load, roles = hops.run(args.target, args.duration, args.warmup_s, count_dir, args.code, tracer)
        out = collections.OrderedDict()
        for path in sorted(glob.glob(os.path.join(count_dir, "*.json"))):
            role = roles.get(int(os.path.basename(path)[:-5]), "client")
            with open(path) as fh:
                counted = json.load(fh)
            if counted["segments"]["before"]:  # the bench's own processes wait without sending
                out[role] = summarise(counted, args.top)
    if not out:
        print("tools.opcodes: nothing was counted", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.target}: median Python opcodes per segment (before the send, on the path; after it)")
    for role, row in out.items():
        print(f"  {role:<7} before {row['before']!s:>7}   after {row['after']!s:>7}")
        for hop in ("submit", "result"):
            if f"before_{hop}" in row:
                print(f"    {hop} hop: before {row[f'before_{hop}']!s:>7}   after {row.get(f'after_{hop}')!s:>7}")
        hop_keys = [f"_{hop}" for hop in ("submit", "result") if f"top_before_{hop}" in row] or [""]
        for kind in ("before", "after"):
            for hop in hop_keys:
                where = f" in the {hop[1:]} hop" if hop else ""
                print(f"    functions {kind} the send{where}, per segment:")
                for name, where, n in row.get(f"top_{kind}{hop}", []):
                    print(f"            {n:8.1f}  {name} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
