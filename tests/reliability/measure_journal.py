"""Measure the two journal candidates on this machine (not a test; run by hand).

    .venv/bin/python -m tests.reliability.measure_journal [--requests 200000] [--batch 64]

Both write what the balancer writes per request (an ACCEPTED record with a
100-byte payload and a FINISHED record with a 60-byte result), one batch per
loop iteration, and both survive `kill -9` of the writer: the msgpack log
with one os.write() per batch plus an fsync thread every 50 ms, SQLite in WAL
mode with synchronous=NORMAL and one transaction per batch.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

from balancer.journal import Journal
from balancer.scheduler import ACCEPTED, FINISHED

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, func in (("msgpack log", measure_log), ("sqlite WAL", measure_sqlite)):
            path = os.path.join(tmp, name.replace(" ", "_"))
            elapsed, lat = func(path, args.requests, args.batch)
            report(name, args.requests, elapsed, lat, path)


if __name__ == "__main__":
    main()
