"""Wake-ups between processes of one pool: a named pipe per listener, a byte per ring.

The controller and each idle worker sleep in ``select`` until something
they care about happens, instead of polling the store: a command that
changes what the controller should do (``apply``, ``delete``, ``restart``,
a worker that starts or ends a task) rings the controller's bell; adding or
requeueing tasks rings the workers' bells.  A bell is a FIFO in the pool's
``bells/`` directory (0700, so only the owner can ring it):

- a listener opens its FIFO for reading (and keeps one write end open
  itself, so it never sees end-of-file when the last ringer closes);
- ringing opens the FIFO write-only and non-blocking and writes one byte:
  with no listener the open fails (ENXIO) and nothing waits; with a full
  pipe the byte is dropped (one unread byte already wakes the listener).

A ring is a hint, never the only path: listeners still wake on their own
deadlines, so a lost ring costs latency, never correctness.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

WORKER_PREFIX = "w-"


def bells_dir(pool_root: Path) -> Path:
    return pool_root / "bells"


def controller_bell(pool_root: Path) -> Path:
    return bells_dir(pool_root) / "controller"


def worker_bell(pool_root: Path, worker_id: str) -> Path:
    return bells_dir(pool_root) / worker_id


class Bell:
    """The listening end of one bell: ``fileno()`` for ``select``, ``clear()`` after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._read, self._keep = self._open_fifo(path)
            self.shared = True
        except OSError:
            # a filesystem without named pipes: a private pipe still wakes this process
            # (stops, signals); rings from others are lost, and listeners' own
            # deadlines (an idle worker's recheck, the controller's interval) take over
            self._read, self._keep = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.shared = False

    @staticmethod
    def _open_fifo(path: Path) -> tuple[int, int]:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                path.unlink()  # a stray file (or link) where the bell belongs
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        flags = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        read = os.open(path, os.O_RDONLY | flags)
        # our own write end: the pipe never reads as closed between two ringers
        return read, os.open(path, os.O_WRONLY | flags)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        """Wake this listener from inside its own process (a signal handler may call it)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._keep, b"!")

    def clear(self) -> int:
        """Read every pending ring; how many there were."""
        count = 0
        while True:
            try:
                chunk = os.read(self._read, 4096)
            except BlockingIOError:
                return count
            if not chunk:
                return count
            count += len(chunk)

    def close(self, *, unlink: bool = False) -> None:
        """Close; with ``unlink``, also remove the FIFO if it is still the one opened (a
        successor of the same name may have made its own)."""
        with contextlib.suppress(OSError):
            if unlink and self.shared and \
                    os.lstat(self.path).st_ino == os.fstat(self._read).st_ino:
                self.path.unlink()
        for fd in (self._read, self._keep):
            with contextlib.suppress(OSError):
                os.close(fd)


def ring(path: Path) -> bool:
    """Wake whoever listens on ``path``; False when nobody does (no listener: ENXIO; no
    bell: ENOENT) or the ring cannot be made.  Never blocks and never raises: a ring is
    a hint, and what rang (a task added, an apply) has already happened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False  # never write into a file that happens to sit there
        with contextlib.suppress(BlockingIOError):
            os.write(fd, b"!")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def ring_controller(pool_root: Path) -> bool:
    return ring(controller_bell(pool_root))


def ring_workers(pool_root: Path) -> int:
    """Wake every idle worker of the pool (new or requeued tasks); how many listened."""
    try:
        names = [p for p in bells_dir(pool_root).iterdir()
                 if p.name.startswith(WORKER_PREFIX)]
    except OSError:
        return 0
    return sum(ring(path) for path in names)
