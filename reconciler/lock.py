"""One ``apply`` (or ``delete``) per pool at a time.

An advisory ``flock`` on ``apply.lock`` in the pool directory.  The holder
writes who it is into the file so a second command that gives up can name it.
The kernel drops the lock when the holder dies, so a crash never leaves the
pool locked.  A lock file that cannot be created or written (a full or
read-only disk) is one ``PoolError`` line before anything else happens: a
command never acts without its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import LockHeldError, PoolError

LOCK_HINT = "free some disk space, or make the state directory writable, then retry"


def _lock_error(path: Path, what: str, exc: OSError) -> PoolError:
    return PoolError(f"cannot {what} the lock file {path}: {exc.strerror or exc}",
                     hint=LOCK_HINT)


@contextmanager
def pool_lock(path: Path, *, what: str, timeout: float = 10.0) -> Iterator[None]:
    """Hold the pool lock for the ``with`` block; wait up to ``timeout`` seconds for it."""
    fd = take_lock(path, timeout)
    if fd is None:
        raise LockHeldError(f"another command holds the lock of this pool: {_holder(path)}",
                            hint=f"wait for it to finish, or stop it; lock file {path}")
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv0": sys.argv[0]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:  # before the block runs: nothing has been done yet
            raise _lock_error(path, "write", exc) from exc
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def take_lock(path: Path, timeout: float) -> int | None:
    """Take ``path``'s exclusive lock and return its descriptor (closing it lets go), or
    None if another process still holds it after ``timeout``.  Polled, because a
    status probe may hold a shared lock for an instant.  A lock file that cannot be
    opened or created (disk full, read-only) raises ``PoolError``."""
    fd = open_lock_file(path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def open_lock_file(path: Path) -> int:
    """Open (creating it 0600 if needed) ``path`` for locking; ``PoolError`` if impossible.

    Call it before acting when a lock will be needed later, so that a full or
    read-only disk stops a command before it has changed anything."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _lock_error(path, "open", exc) from exc


def is_locked(path: Path) -> bool:
    """Whether some process holds ``path``'s lock (a probe: shared, never blocking).

    A missing file means no holder; the probe never creates one.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a probe lock we may have taken
    return False


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "unknown holder"
    return f"`reconcile {info.get('command', '?')}` (pid {info.get('pid')} on " \
           f"{info.get('host')}, since {info.get('since')})"
