"""glibc's allocator, set for big payloads once a node meets one, and its memory returned when the node idles.

Each big payload a node receives is a fresh buffer of its size (libzmq's, then the bytes its handler gets).
With glibc's defaults a buffer of 256 KiB comes from the heap once one like it was freed, and the heap is
handed back to the kernel whenever more than twice that lies free at its top: with a window of requests
churning, that is every few requests, and each one then faults its pages in afresh (a page fault and a
zeroed page per 4 KiB). Held in the heap instead (trimmed only past TRIM_THRESHOLD_BYTES, mapped apart only
past MMAP_THRESHOLD_BYTES), a node's CPU per 256 KiB request fell by 5 to 54 us (of 250-340) in four paired
runs of `python -m tools.cpu_by_role --capacity 50 --window 64 --payload-bytes 262144 --duration 2 --rounds 2`.
What the heap holds then stays in the process, so a node idle for IDLE_S gives it back (malloc_trim).

Nothing changes before the first big payload: ctypes is imported then, not at start (a node that never
sees one stays as lean as it started: tests/test_cli_group.py), and elsewhere than glibc nothing changes.
"""

from __future__ import annotations

from typing import Any

# A payload over this is big (what a Client and a node lend to libzmq: wire/sockets.ZERO_COPY_BYTES).
BIG_PAYLOAD_BYTES = 64 * 1024
TRIM_THRESHOLD_BYTES = 64 * 2**20
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest on 64 bits: a bigger buffer is mapped on its own anyway
IDLE_S = 2.0
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class Allocator:
    """Tuned at the first big payload; trimmed once per idle spell after that."""

    __slots__ = ("_busy_at", "_libc", "_trimmed", "tuned")

    def __init__(self) -> None:
        self.tuned = False
        self._libc: Any = None
        self._busy_at = 0.0
        self._trimmed = True

    def saw(self, size: int, now: float) -> None:
        """A payload (or result) of `size` bytes at `now`."""
        if size > BIG_PAYLOAD_BYTES:
            if not self.tuned:
                self._tune()
            self._busy_at = now
            self._trimmed = False

    def idle(self, now: float) -> bool:
        """The node holds no work at `now`: what the heap holds goes back once IDLE_S passed since the last big
        payload. True when it trimmed."""
        if self._trimmed or now - self._busy_at < IDLE_S:
            return False
        self._trimmed = True
        if self._libc is not None:
            self._libc.malloc_trim(0)
        return True

    def _tune(self) -> None:
        self.tuned = True
        import ctypes  # only now: a node that never sees a big payload does without it

        try:
            libc = ctypes.CDLL(None)
            mallopt, _trim = libc.mallopt, libc.malloc_trim  # both, or neither (not glibc)
        except (OSError, AttributeError):
            return
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        self._libc = libc
