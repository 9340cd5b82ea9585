"""Measure the two journal candidates on this machine (not a test; run by hand).

    .venv/bin/python -m tests.reliability.measure_journal [--requests 200000] [--batch 64] [--only log] [--runs 3]
    .venv/bin/python -m tests.reliability.measure_journal --end-to-end --requests 50000 [--runs 3]

Both write what the balancer writes per request (an ACCEPTED record with a
100-byte payload and a FINISHED record with a 60-byte result), one batch per
loop iteration, and both survive `kill -9` of the writer: the msgpack log
with one os.write() per batch plus an fsync thread every 50 ms, SQLite in WAL
mode with synchronous=NORMAL and one transaction per batch. For the log it
also times a replay of the file it wrote (what a restart reads) and prints
which balancer.journal it measured, so an older tree can be measured with the
same script: PYTHONPATH=/path/to/old/tree python tests/reliability/measure_journal.py
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

from balancer import journal as jr
from balancer.journal import Journal
from balancer.scheduler import ACCEPTED, FINISHED
from wire import control_client

PAYLOAD = b"p" * 100
RESULT = b"r" * 60


def batches(requests: int, batch: int):
    for start in range(0, requests, batch):
        ids = range(start, min(requests, start + batch))
        yield [(ACCEPTED, 1, i, 5, b"client-1", PAYLOAD) for i in ids] + [
            (FINISHED, 1, i, 5, "processed", 0, 1, RESULT) for i in ids
        ]


def measure_log(path: str, requests: int, batch: int) -> tuple[float, list[float]]:
    journal = Journal(path)
    journal.open([])
    lat = []
    t0 = time.perf_counter()
    for records in batches(requests, batch):
        t = time.perf_counter()
        journal.append(records)
        lat.append(time.perf_counter() - t)
    journal.close()
    return time.perf_counter() - t0, lat


def measure_sqlite(path: str, requests: int, batch: int) -> tuple[float, list[float]]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE req (client_id INTEGER, request_id INTEGER, priority INTEGER, route BLOB, payload BLOB,"
        " status TEXT, server_id INTEGER, attempts INTEGER, result BLOB, PRIMARY KEY (client_id, request_id))"
    )
    lat = []
    t0 = time.perf_counter()
    for records in batches(requests, batch):
        t = time.perf_counter()
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO req (client_id, request_id, priority, route, payload, status)"
            " VALUES (?, ?, ?, ?, ?, 'pending')",
            [r[1:] for r in records if r[0] == ACCEPTED],
        )
        db.executemany(
            "UPDATE req SET status = ?, server_id = ?, attempts = ?, result = ? WHERE client_id = ? AND request_id = ?",
            [(r[4], r[5], r[6], r[7], r[1], r[2]) for r in records if r[0] == FINISHED],
        )
        db.execute("COMMIT")
        lat.append(time.perf_counter() - t)
    db.close()
    return time.perf_counter() - t0, lat


def report(name: str, requests: int, elapsed: float, lat: list[float], path: str) -> None:
    lat.sort()
    size = sum(os.path.getsize(f) for f in (path, path + "-wal") if os.path.exists(f))
    print(
        f"{name:14} {requests / elapsed:>10,.0f} requests/s  batch p50 {lat[len(lat) // 2] * 1e6:7.0f} us"
        f"  p99 {lat[int(len(lat) * 0.99)] * 1e6:7.0f} us  {size / requests:6.0f} bytes/request"
    )


def measure_replay(path: str, requests: int) -> None:
    """How fast a restart reads back what measure_log wrote (every request finished, so all are kept)."""
    t0 = time.perf_counter()
    recovered = jr.replay(path, keep_finished=requests)
    elapsed = time.perf_counter() - t0
    print(f"{'  replay':14} {recovered.records / elapsed:>10,.0f} records/s  ({recovered.records:,} records)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--end-to-end", action="store_true", help="Through real processes, with and without.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("log", "sqlite"), help="Measure one candidate only.")
    args = parser.parse_args()
    if args.end_to_end:
        main_end_to_end(args.requests, args.runs)
        return
    print(f"balancer.journal from {jr.__file__}")
    candidates = [("msgpack log", measure_log), ("sqlite WAL", measure_sqlite)]
    for _ in range(args.runs if args.only else 1):
        for name, func in candidates:
            if args.only and not name.startswith({"log": "msgpack", "sqlite": "sqlite"}[args.only]):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, name.replace(" ", "_"))
                elapsed, lat = func(path, args.requests, args.batch)
                report(name, args.requests, elapsed, lat, path)
                if func is measure_log:
                    measure_replay(path, args.requests)


def measure_end_to_end(requests: int, journal_dir: str | None) -> float:
    """Requests per second through a real balancer (with or without --journal), two echo nodes, one client."""
    import subprocess
    import sys

    from client_node.client import Client
    from tests.harness import Endpoints, wait_until

    ends = Endpoints.fresh()
    env = {**os.environ, **ends.env()}
    argv = [sys.executable, "-m", "zlb"]
    extra = ["--journal", os.path.join(journal_dir, "j")] if journal_dir else []
    procs = [subprocess.Popen([*argv, "balancer", "--log-file", "", "--keep-finished", "0", *extra], env=env)]
    try:
        wait_until(lambda: _answers(ends.control), 15, "the balancer")
        procs += [
            subprocess.Popen([*argv, "server", "--handler", "echo", "--capacity", "256"], env=env) for _ in range(2)
        ]
        wait_until(lambda: len(control_client.call(ends.control, "servers")) == 2, 15, "two nodes")
        with Client(ends.frontend, client_id=1, retry_s=None) as client:
            t0 = time.perf_counter()
            for _ in range(requests):
                client.submit(b"x" * 100)
            for _ in client.as_completed(timeout=120):
                pass
            return requests / (time.perf_counter() - t0)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _answers(control: str) -> bool:
    try:
        control_client.call(control, "ping", timeout_s=0.5)
        return True
    except control_client.BalancerUnreachable:
        return False


def main_end_to_end(requests: int, runs: int) -> None:
    for label, use_journal in (("no journal", False), ("--journal", True)):
        rates = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                rates.append(measure_end_to_end(requests, tmp if use_journal else None))
        print(f"{label:11} " + "  ".join(f"{r:,.0f}" for r in rates) + " requests/s")


if __name__ == "__main__":
    main()
