"""CPU time and memory of another process, read from /proc (Linux only).

psutil is not a dependency: two small files give everything the bench needs.
CPU time comes from the process's CPU-time clock (clock_getcpuclockid), in
nanoseconds: /proc/PID/stat counts in 10 ms ticks, which a short run (a quick
bench's thousand requests at 11 us each) can round to nothing.
"""

from __future__ import annotations

import ctypes
import os

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _getcpuclockid, _gettime = _libc.clock_getcpuclockid, _libc.clock_gettime
except (OSError, AttributeError):
    _getcpuclockid = _gettime = None


def _clock_cpu_seconds(pid: int) -> float | None:
    """The process's CPU time (all its threads) by its CPU-time clock; None where there is none."""
    if _getcpuclockid is None:
        return None
    clock, spec = ctypes.c_int(), _Timespec()
    if _getcpuclockid(pid, ctypes.byref(clock)) != 0 or _gettime(clock, ctypes.byref(spec)) != 0:
        return None
    return spec.tv_sec + spec.tv_nsec / 1e9


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    precise = _clock_cpu_seconds(pid)
    if precise is not None:
        return precise
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        stat = fh.read()
    # The command name (field 2) may hold spaces; everything after its ')' is fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def children(pid: int) -> list[int]:
    """The process's child processes (the balancer's log writer), from every thread's children file."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                found.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU time of the process's children so far (those that are still running)."""
    total = 0.0
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            continue  # it ended between the listing and the read
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def rss_mib(pid: int) -> float:
    """Resident memory now, in MiB."""
    return round(memory_kib(pid)["VmRSS"] / 1024, 1)


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory so far, in MiB."""
    return round(memory_kib(pid)["VmHWM"] / 1024, 1)


def reset_peak_rss(pid: int) -> bool:
    """Start the process's peak (VmHWM) again from its RSS now, so one phase's peak can be read alone;
    False where the kernel does not allow it (then the peak runs on from the process's start)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
