"""A probe inside a balancer: what its memory is made of, sampled every 5 ms.

    python -m tests.reliability.memory_probe REPORT [--trace] [--series FILE] [--profile FILE] -- ZLB_ARGS

Runs `zlb ZLB_ARGS` (a balancer) in this process with a thread sampling its RSS,
glibc's heap (mallinfo2), what its memory budget counts and, with --trace, what
Python allocated (tracemalloc); writes the sample of highest RSS and the last
one to REPORT as JSON. tests/reliability/measure_memory.py starts it with --probe.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.reliability.measure_memory import rss


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mallinfo() -> Any:
    fn = getattr(ctypes.CDLL(None), "mallinfo2", None)  # glibc 2.33 and later
    if fn is not None:
        fn.restype = _Mallinfo2
    return fn


def probe_sample(mallinfo: Any, tracing: bool, balancers: list[Any]) -> dict[str, int]:
    """This process now: RSS, glibc's heap (every arena), what the budget counts (read from another
    thread without a lock: a measurement) and what Python allocated. Bytes; in_flight is a count."""
    import tracemalloc

    sample = {"rss": rss(os.getpid())}
    if balancers:
        view = balancers[0].sched.budget.view()
        for key in ("live", "due", "unsent", "kept", "reserved"):
            sample[key] = view.get(f"{key}_bytes", 0)  # due_bytes: only before protocol version 7
        sample["in_flight"] = balancers[0].sched.in_flight()
    if mallinfo is not None:
        m = mallinfo()
        # uordblks: heap bytes in use; fordblks: free but kept; hblkhd: in mmapped chunks (unmapped at free)
        sample.update(heap_used=m.uordblks, heap_free=m.fordblks, mmapped=m.hblkhd)
    if tracing:
        sample["python"] = tracemalloc.get_traced_memory()[0]
    return sample


def probe(argv: list[str]) -> None:
    """`REPORT [--trace] [--series FILE] [--profile FILE] -- ZLB_ARGS`: run `zlb ZLB_ARGS` in this process
    with a thread sampling it; write the sample of highest RSS and the last one to REPORT (JSON)."""
    import tracemalloc

    from balancer import loop
    from zlb.cli import main

    report, rest = argv[0], argv[1:]
    cut = rest.index("--")
    options, zlb_args = rest[:cut], rest[cut + 1 :]
    trace = "--trace" in options
    series_to = options[options.index("--series") + 1] if "--series" in options else None
    profile_to = options[options.index("--profile") + 1] if "--profile" in options else None
    if trace:
        tracemalloc.start()
    balancers: list[Any] = []
    made = loop.Balancer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        balancers.append(self)

    loop.Balancer.__init__ = init  # the probe reads the budget of the one the command makes
    mallinfo = _mallinfo()
    peak: dict[str, int] = {"rss": 0}
    series: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            now = probe_sample(mallinfo, trace, balancers)
            if series_to:
                series.append((time.monotonic(), now))
            if now["rss"] > peak["rss"]:
                peak.clear()
                peak.update(now)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        if profile_to:
            import cProfile

            names = {"main": main, "zlb_args": zlb_args}
            cProfile.runctx("main(zlb_args, standalone_mode=False)", {}, names, profile_to)
        else:
            main(zlb_args, standalone_mode=False)
    finally:
        stop.set()
        thread.join()
        last = probe_sample(mallinfo, trace, balancers)
        Path(report).write_text(json.dumps({"peak": peak, "last": last}))
        if series_to:
            Path(series_to).write_text("".join(json.dumps([t, s]) + "\n" for t, s in series))


if __name__ == "__main__":
    probe(sys.argv[1:])
