"""Starting the frame-only baseline and driving the lean and the user-path load.

Split from harness.py to keep each module small: these helpers take a Bench
and use its process set, so everything they start is stopped by PID with
the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
from array import array
from collections.abc import Callable
from typing import Any

from bench import stats
from bench.harness import START_TIMEOUT_S, Bench, BenchError, LineReader, LoadResult, Target
from bench.procs import python_argv

# A user-path run answers 50,000 requests; even a slow, shared machine does that well within this.
USER_RUN_TIMEOUT_S = 600.0


def start_frame_relay(bench: Bench, nodes: int, capacity: int) -> Target:
    """bench.framerelay plus `nodes` raw echo nodes, each announced to the relay."""

    def add_node(target: Target) -> None:
        argv = python_argv("bench.rawecho", "--backend", target.backend, "--capacity", str(capacity))
        target.nodes.append(bench.procs.start(bench.name("rawecho"), argv, stdout=subprocess.DEVNULL))

    return bench.start_announcing_relay("bench.framerelay", "frame relay", nodes, add_node, "raw nodes")


def lean_load(
    bench: Bench, target: Target, clients: int, window: int, duration: float, warmup_s: float, payload_bytes: int = 16
) -> LoadResult:
    """`clients` bench.leanload processes against a broker whose nodes echo frames."""
    procs, files = [], []
    for _ in range(clients):
        lat_file = os.path.join(bench.workdir, f"{bench.name('leanload-lat')}.lat")
        load = ("--window", str(window), "--duration", str(duration), "--warmup-s", str(warmup_s))
        load += ("--payload-bytes", str(payload_bytes), "--latency-file", lat_file)
        procs.append(start_lean_client(bench, target, *load))
        files.append(lat_file)
    return bench.collect(bench.go(target, procs, files), warmup_s + duration + 60)


def start_lean_client(bench: Bench, target: Target, *args: str) -> subprocess.Popen:
    """One bench.leanload process (a new client id) told `args`; it waits for the bench's go."""
    argv = python_argv(
        "bench.leanload", "--frontend", target.frontend, "--client-id", str(bench.next_client_id()), *args, "--wait-go"
    )
    return bench.procs.start(bench.name("leanload"), argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def start_user_client(bench: Bench, target: Target, *args: str) -> subprocess.Popen:
    """One bench.userclient process (a new client id) told `args`; it waits for the bench's go."""
    argv = python_argv(
        "bench.userclient",
        *("--frontend", target.frontend, "--client-id", str(bench.next_client_id())),
        *args,
        "--wait-go",
    )
    return bench.procs.start(bench.name("userclient"), argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def user_submit(bench: Bench, target: Target, clients: int, total: int, one_by_one: bool = False) -> LoadResult:
    """`clients` processes using the Client API share `total` submits, then wait with as_completed.

    They submit with submit_many (the documented way to send a burst), or with submit() in a
    loop when `one_by_one`.

    Throughput is every answer over the union of the processes' windows
    (first submit to last result), as a user timing the whole job would see it.
    """
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    procs = [
        start_user_client(bench, target, "--submit", str(count), *(("--one-by-one",) if one_by_one else ()))
        for count in per_client
    ]
    load = bench.collect(bench.go(target, procs, []), USER_RUN_TIMEOUT_S)
    start = min(c["start_mono_ns"] for c in load.clients)
    end = max(c["end_mono_ns"] for c in load.clients)
    load.requests_per_s = stats.rate(load.completed, (end - start) / 1e9)
    return load


def user_windowed(
    bench: Bench, target: Target, clients: int, window: int, duration: float, warmup_s: float, payload_bytes: int
) -> LoadResult:
    """`clients` processes using the Client API, each keeping `window` requests in flight with submit()."""
    procs, files = [], []
    for _ in range(clients):
        lat_file = os.path.join(bench.workdir, f"{bench.name('window')}.lat")
        args = ("--window", str(window), "--duration", str(duration), "--warmup-s", str(warmup_s))
        args += ("--payload-bytes", str(payload_bytes), "--latency-file", lat_file)
        procs.append(start_user_client(bench, target, *args))
        files.append(lat_file)
    return bench.collect(bench.go(target, procs, files), warmup_s + duration + 90)


def user_one_at_a_time(bench: Bench, target: Target, duration: float, warmup_s: float) -> LoadResult:
    """One process using the Client API: submit(...).result(), one request at a time."""
    lat_file = os.path.join(bench.workdir, f"{bench.name('one')}.lat")
    args = ("--one-at-a-time", "--duration", str(duration), "--warmup-s", str(warmup_s), "--latency-file", lat_file)
    proc = start_user_client(bench, target, *args)
    return bench.collect(bench.go(target, [proc], [lat_file]), warmup_s + duration + 60)


# One-at-a-time comparisons alternate between the two brokers in this many slices (ABBA order),
# so a change in the shared machine's load during a run weighs on both alike.
PAIRED_SLICES = 4


def paired_one_at_a_time(
    bench: Bench, zlb: Target, relay: Target, duration: float, warmup_s: float
) -> tuple[LoadResult, LoadResult]:
    """zlb's Client API and a lean client on the frame relay, one request at a time, in alternating slices.

    Both brokers run throughout (the idle one only heartbeats); each slice is a fresh client with
    its own warm-up; every slice's round trips are pooled. Returns (zlb, relay).
    """
    slice_s = duration / PAIRED_SLICES
    return alternated(
        lambda: user_one_at_a_time(bench, zlb, slice_s, warmup_s),
        lambda: lean_load(bench, relay, 1, 1, slice_s, warmup_s),
    )


def alternated(
    first: Callable[[], LoadResult], second: Callable[[], LoadResult], slices: int = PAIRED_SLICES
) -> tuple[LoadResult, LoadResult]:
    """Each run `slices` times in ABBA order (A B B A ...), each side's slices pooled. Returns (first, second)."""
    parts: tuple[list[LoadResult], list[LoadResult]] = ([], [])
    for i in range(slices):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            parts[side].append((first, second)[side]())
    return pooled(parts[0]), pooled(parts[1])


def pooled(parts: list[LoadResult]) -> LoadResult:
    """Several runs against one broker as one: counts and CPU summed, round trips pooled."""
    latencies = array("q")
    for part in parts:
        latencies.extend(part.latencies_ns)
    rates = [part.requests_per_s for part in parts if part.requests_per_s is not None]
    return LoadResult(
        requests_per_s=round(sum(rates) / len(rates), 1) if rates else None,
        latency_us=stats.latency_summary_us(latencies),
        completed=sum(part.completed for part in parts),
        sent=sum(part.sent for part in parts),
        unanswered=sum(part.unanswered for part in parts),
        duplicates=sum(part.duplicates for part in parts),
        rejected=sum(part.rejected for part in parts),
        failed=sum(part.failed for part in parts),
        broker_cpu_s=sum(part.broker_cpu_s for part in parts),
        clients=[client for part in parts for client in part.clients],
        helper_cpu_s=sum(part.helper_cpu_s for part in parts),
        latencies_ns=latencies,
    )


def resent(load: LoadResult) -> int:
    """Requests the Client API sent again (its retry timer) during a user-path run."""
    return sum(int(c.get("resent", 0)) for c in load.clients)


def busy_notices(load: LoadResult) -> int | None:
    """Busy refusals the Client API was told of during a user-path run (None: its Client does not count them)."""
    counts = [c.get("busy_notices") for c in load.clients]
    return None if any(n is None for n in counts) else sum(counts)


def cpu_fields(prefix: str, load: LoadResult) -> dict[str, Any]:
    """The broker's CPU per request and requests/s under a prefix, for a JSON record."""
    return {f"{prefix}_requests_per_s": load.requests_per_s, f"{prefix}_cpu_us_per_request": load.cpu_us_per_request}


def start_probe(bench: Bench, target: Target) -> tuple[subprocess.Popen, str]:
    """bench.stallprobe pinging the target's control socket; returns the process and its output file."""
    name = bench.name("stallprobe")
    out = os.path.join(bench.workdir, f"{name}.bin")
    argv = python_argv("bench.stallprobe", "--control", str(target.control), "--out", out)
    proc = bench.procs.start(name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if LineReader(proc).line(START_TIMEOUT_S, "the stall probe to start") != "ready":
        raise BenchError("the stall probe did not start")
    return proc, out


def stop_probe(bench: Bench, probe: tuple[subprocess.Popen, str]) -> tuple[list[tuple[int, int]], int]:
    """Tell the probe to stop; its (sent monotonic ns, round trip ns) samples and how many pings it made."""
    proc, path = probe
    try:
        out, _ = proc.communicate(b"stop\n", timeout=60)
    except subprocess.TimeoutExpired:
        raise BenchError("the stall probe did not stop within 60 s") from None
    bench.procs.stop([proc])
    if proc.returncode != 0:
        raise BenchError(f"the stall probe exited with code {proc.returncode}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    raw = array("q")
    with open(path, "rb") as fh:
        raw.frombytes(fh.read())
    return list(zip(raw[0::2], raw[1::2])), summary["pings"]
