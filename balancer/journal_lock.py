"""One owner per journal: an OS lock on `PATH.lock` beside it, naming its owner.

Why a file beside the journal and not the journal itself: compaction and
recovery rename a new file over the journal, and a lock belongs to the inode
it was taken on, so a lock on the journal would stay behind on the replaced
file and a second balancer could lock the new one. The lock file is never
renamed, and never removed while held (removed, a second balancer could lock a
new file of that name while the first still holds the old one): after a clean
stop it stays, its owner line emptied.

flock(2), not fcntl/lockf: a POSIX record lock is dropped when its process
closes *any* descriptor of the file (a replay reading the mark would do that),
while flock's belongs to this one open file description. The kernel drops it
when the process dies, however it dies, so kill -9 leaves no stale lock.
Python's descriptors are not inherited by child processes (the log writer), so
the lock stays this process's.

Layout: the synced mark (balancer/journal_format.py: a fixed-width first line,
rewritten in place by the loop), then one JSON line naming the owner: pid,
host, endpoints, since. A second balancer reads that line to say who holds the
journal, before it binds a socket or reads the journal.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from balancer import journal_format as jf
from balancer.journal_format import JournalError

# A lock just taken names its owner within microseconds; a second balancer waits at most this to read it.
OWNER_WAIT_S = 0.5


class JournalLocked(JournalError):
    """Another live process holds the journal's lock."""


class JournalLock:
    """The held lock of one journal: its descriptor, the owner line, the synced mark."""

    def __init__(self, journal: str, path: str, fd: int, owner: dict[str, Any]) -> None:
        self.journal = journal
        self.path = path
        self._fd = fd
        self._owner = owner

    @classmethod
    def acquire(cls, journal: str, path: str, endpoints: dict[str, str]) -> JournalLock:
        """Lock `path` for `journal` and name this process in it, or raise JournalLocked naming the owner."""
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "endpoints": endpoints, "since": time.time()}
        lock = cls(journal, path, _locked(journal, path), owner)
        lock._name_owner()
        return lock

    def problem(self) -> str | None:
        """Why the lock no longer guards the journal (its file removed or replaced), or None."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return f"the journal's lock file {self.path} was removed: a second balancer could take the journal"
        except OSError as exc:
            return f"cannot stat the journal's lock file {self.path}: {exc}"
        held = os.fstat(self._fd)
        if (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            return f"the journal's lock file {self.path} was replaced"
        return None

    def renew(self) -> str | None:
        """Lock the file at the path again if it is no longer the one held; why it cannot be, or None."""
        if self.problem() is None:
            return None
        try:
            fd = _locked(self.journal, self.path)
        except JournalError as exc:
            return str(exc)
        os.close(self._fd)  # the old file's lock goes with it
        self._fd = fd
        self._name_owner()
        return None

    def write_mark(self, mark: jf.Mark) -> None:
        """Rewrite the synced mark in place (a lost mark costs only the exactness of a later count)."""
        try:
            os.pwrite(self._fd, jf.encode_mark(mark), 0)
        except OSError:
            pass  # the journal's own checks report a failing disk

    def release(self) -> None:
        """Empty the owner line and unlock; the file and its mark stay for the next owner."""
        try:
            os.ftruncate(self._fd, jf.MARK_BYTES)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1

    def _name_owner(self) -> None:
        line = json.dumps(self._owner).encode() + b"\n"
        try:
            if os.fstat(self._fd).st_size < jf.MARK_BYTES:  # a new file: a blank mark line until the first fsync
                os.pwrite(self._fd, b" " * (jf.MARK_BYTES - 1) + b"\n", 0)
            os.pwrite(self._fd, line, jf.MARK_BYTES)
            os.ftruncate(self._fd, jf.MARK_BYTES + len(line))
        except OSError as exc:
            raise JournalError(f"cannot write the journal's lock file {self.path}: {exc.strerror}") from None


def _locked(journal: str, path: str) -> int:
    """A descriptor of `path` holding its exclusive lock, or JournalLocked naming the holder."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot open the journal's lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalLocked(f"journal {journal} is in use by another balancer: {owner_of(path)}") from None
    except OSError as exc:
        os.close(fd)
        raise JournalError(f"cannot lock the journal's lock file {path}: {exc.strerror}") from None
    return fd


def owner_of(path: str, wait_s: float = OWNER_WAIT_S) -> str:
    """Who holds the lock file at `path`, as its owner line says (read again for up to `wait_s` while it is empty)."""
    deadline = time.monotonic() + wait_s
    while True:
        owner = _read_owner(path)
        if owner is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.01)  # wait-ok: the owner writes its line right after it takes the lock
    if owner is None:
        return f"a process whose lock file {path} names no owner"
    ends = ", ".join(f"{role} {url}" for role, url in (owner.get("endpoints") or {}).items())
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} ({ends}), since {since}; lock file {path}"


def _read_owner(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(jf.MARK_BYTES)
            owner = json.loads(fh.readline() or b"null")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None
