"""Where a request's round trip goes, hop by hop, one request at a time: zlb or the frame relay.

    python -m tools.hops --target zlb      # the Client API, a zlb balancer, one `zlb server --handler echo`
    python -m tools.hops --target relay    # a lean client, bench.framerelay, one bench.rawecho
    python -m tools.hops --target zlb --code /tmp/old   # zlb as in another checkout (a worktree of an older commit)

Every process is started with tools/hoptrace first on its path, whose sitecustomize notes
when the process woke (a poll returned something) and when it sent a message. Requests go
one at a time, so the notes line up: client send, broker wakes, broker sends, node wakes,
node sends, broker wakes, broker sends, client wakes. The table gives the median of each
part over every request after the warm-up: the wake-ups (the message in flight: the
sender's and the receiver's ZeroMQ I/O threads and the kernel) and the Python each
process runs between its wake-up and its send. The client's own Python is its measured
round trip less the chain. Run both targets one after the other, several times: a shared
machine's load moves every figure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
from typing import Any

from bench import baselines
from bench.harness import Bench, LoadResult, Target

HOPTRACE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hoptrace")
# The chain of one round trip: (who, what) in order.
CHAIN = (("client", "S"), ("broker", "W"), ("broker", "S"), ("node", "W"), ("node", "S"), ("broker", "W"),
         ("broker", "S"), ("client", "W"))  # fmt: skip
PARTS = (
    "client -> broker (wake-up)",
    "broker Python (submit)",
    "broker -> node (wake-up)",
    "node Python",
    "node -> broker (wake-up)",
    "broker Python (result)",
    "broker -> client (wake-up)",
)


def run(
    target_kind: str,
    duration: float,
    warmup_s: float,
    trace_dir: str,
    code: str | None = None,
    tracer: tuple[str, str] = (HOPTRACE_DIR, "ZLB_HOPTRACE"),
) -> tuple[LoadResult, dict[int, str]]:
    """Start the target traced, run one client one request at a time; the load and each traced pid's role.

    `code`: a checkout whose zlb (and bench clients) the started processes run instead of this one's.
    `tracer`: the directory whose sitecustomize every process loads, and the variable naming `trace_dir`.
    """
    root = code or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (tracer[0], root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, tracer[1]: trace_dir, "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="zlb-hops-") as workdir:
        bench = Bench(workdir, env)
        target: Target | None = None
        try:
            if target_kind == "zlb":
                target = bench.start_zlb(1, 50)
                load = baselines.user_one_at_a_time(bench, target, duration, warmup_s)
            else:
                target = baselines.start_frame_relay(bench, 1, 50)
                load = baselines.lean_load(bench, target, 1, 1, duration, warmup_s)
            roles = {target.broker.pid: "broker", **{node.pid: "node" for node in target.nodes}}
        finally:
            if target is not None:
                bench.stop(target)
            bench.procs.stop_all()
    return load, roles


def chains(trace_dir: str, roles: dict[int, str]) -> list[list[int]]:
    """Each round trip's eight moments (ns), in CHAIN order, from the traced processes' notes."""
    notes: list[tuple[int, str, str]] = []
    for path in glob.glob(os.path.join(trace_dir, "*.json")):
        pid = int(os.path.basename(path)[:-5])
        with open(path) as fh:
            marks = json.load(fh)
        if marks:  # the client is the one traced process with notes that is neither broker nor node
            who = roles.get(pid, "client")
            notes.extend((at, who, kind) for kind, at in marks)
    notes.sort()
    found, i = [], 0
    while i < len(notes):
        if notes[i][1:] != CHAIN[0]:
            i += 1
            continue
        moments, j = [notes[i][0]], i + 1
        for step in CHAIN[1:]:
            while j < len(notes) and notes[j][1:] != step and notes[j][1:] != CHAIN[0]:
                j += 1
            if j == len(notes) or notes[j][1:] != step:
                break
            moments.append(notes[j][0])
            j += 1
        if len(moments) == len(CHAIN):
            found.append(moments)
        i = j if len(moments) == len(CHAIN) else i + 1
    return found


def report(load: LoadResult, found: list[list[int]], skip: int) -> dict[str, Any]:
    """Medians in microseconds of each part, the chain, and the client's own round trip."""
    rows = found[skip:] or found
    parts = {name: statistics.median(c[k + 1] - c[k] for c in rows) / 1000 for k, name in enumerate(PARTS)}
    chain = statistics.median(c[-1] - c[0] for c in rows) / 1000
    round_trip = load.latency_us["p50_us"]
    return {
        "round_trips_traced": len(rows),
        "parts_us": {k: round(v, 1) for k, v in parts.items()},
        "chain_us": round(chain, 1),
        "round_trip_p50_us": round_trip,
        "client_python_us": None if round_trip is None else round(round_trip - chain, 1),
        "wake_ups_us": round(sum(v for k, v in parts.items() if "wake-up" in k), 1),
        "python_us": round(sum(v for k, v in parts.items() if "Python" in k), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.hops", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("zlb", "relay"), required=True)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds")
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--code", help="run the processes from this checkout (e.g. a worktree of an older commit)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup_s < 0:
        parser.error("--duration must be positive and --warmup-s not negative")
    if args.code is not None and not os.path.isdir(os.path.join(args.code, "balancer")):
        parser.error(f"--code {args.code!r} is not a zlb checkout")
    with tempfile.TemporaryDirectory(prefix="zlb-hoptrace-") as trace_dir:
        load, roles = run(args.target, args.duration, args.warmup_s, trace_dir, args.code)
        found = chains(trace_dir, roles)
    if not found:
        print("tools.hops: no complete round trip in the traces", file=sys.stderr)
        return 1
    # The warm-up's round trips are traced too: skip as many as the warm-up held.
    skip = max(0, len(found) - load.completed + int(len(found) * args.warmup_s / (args.warmup_s + args.duration)))
    out = report(load, found, min(skip, len(found) - 1))
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.target}: {out['round_trips_traced']} round trips, medians in microseconds")
    for name, value in out["parts_us"].items():
        print(f"  {name:<28} {value:8.1f}")
    print(f"  {'chain (client send -> wake)':<28} {out['chain_us']:8.1f}")
    print(f"  {'client round trip p50':<28} {out['round_trip_p50_us']:8.1f}")
    print(f"  {'client Python (the rest)':<28} {out['client_python_us']:8.1f}")
    print(f"  wake-ups {out['wake_ups_us']:.1f}, Python in broker and node {out['python_us']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
