"""Per-trial locks, so two runners on one sweep directory never train the same trial.

`DIR/<trial_id>/lock` is held with `fcntl.flock(LOCK_EX | LOCK_NB)` by the process that trains
the trial. The kernel releases it when that process dies, however it dies (kill -9 included),
so a stale lock cannot exist and nothing has to be "taken over". The file's content (pid, host,
start time) only tells `sweep status` who holds it. flock is reliable on local filesystems; on
Linux NFS clients it is emulated with POSIX byte-range locks, which need a working lock
manager (NFSv4, or lockd for v3) - see docs/sweeps.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK = "lock"


class TrialLock:
    """An exclusive, non-blocking lock on one trial directory (a context manager)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (the file stays; its content is only informative)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds the trial's lock (pid, host, started), or None when it is free.

    Probing takes the lock for an instant, so never call this where a worker might be trying
    to acquire the same trial (the worker would see it busy and skip it); `sweep status` only.
    """
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 4096, 0) or b"{}")
            except json.JSONDecodeError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_info(run_dir: str | Path) -> dict[str, Any] | None:
    """The lock file's last content without probing the lock (for progress display)."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
