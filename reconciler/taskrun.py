"""Run one task command: argv, own process group, output to a log, timeout, cancel.

The command runs in a new session so its whole tree can be signalled; its
output is copied both to the attempt's log file and to the worker's stdout
(visible in the tmux window).  Descendants are remembered while it runs so
that ones that escaped with ``setsid`` are killed too when it ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from reconciler.paths import open_private_append
from reconciler.proctree import kill_tree

POLL_SECONDS = 0.1
TAIL_BYTES = 2000


@dataclass(frozen=True)
class RunResult:
    status: str  # succeeded | failed | timeout | cancelled
    exit_code: int | None
    error: str | None


def run_command(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path,
                timeout: float, grace: float, should_cancel: Callable[[], bool],
                echo: bool = True, on_start: Callable[[int], None] | None = None,
                on_output: Callable[[], None] | None = None) -> RunResult:
    """Run ``argv`` until it exits, times out or is cancelled.

    Never raises for the command's own faults: they become the result.
    ``on_start`` receives the command's pid (also its process group id), so a
    supervisor can record it and kill the tree even if this process dies.
    """
    log_fd = open_private_append(log)
    try:
        try:
            child = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True)
        except OSError as exc:
            message = f"cannot run {argv[0]!r}: {exc.strerror}"
            os.write(log_fd, (message + "\n").encode())
            return RunResult("failed", 127 if isinstance(exc, FileNotFoundError) else 126, message)
        except ValueError as exc:  # e.g. a NUL byte in an argument or the environment
            message = f"cannot run {argv[0]!r}: {exc}"
            os.write(log_fd, (message + "\n").encode())
            return RunResult("failed", 126, message)
        if on_start is not None:
            on_start(child.pid)
        pump = threading.Thread(target=_pump, args=(child, log_fd, echo, on_output),
                                daemon=True)
        pump.start()
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        outcome: str | None = None
        while child.poll() is None:
            _remember_descendants(child.pid, seen)
            if time.monotonic() >= deadline:
                outcome = "timeout"
            elif should_cancel():
                outcome = "cancelled"
            if outcome:
                reaped = kill_tree(child.pid, grace)
                if reaped is not None:  # psutil reaped it: Popen.wait would see no child
                    child.returncode = reaped
                break
            time.sleep(POLL_SECONDS)
        code = child.wait()
        _kill_leftovers(seen, grace)
        pump.join(timeout=5)
        if not pump.is_alive() and child.stdout is not None:
            # a pump still blocked on an escaped writer keeps the pipe: closing it
            # under the thread could hand its fd number to an unrelated file
            child.stdout.close()
        if outcome == "timeout":
            return RunResult("timeout", code, f"timed out after {timeout:g}s")
        if outcome == "cancelled":
            return RunResult("cancelled", code, "cancelled by operator")
        if code == 0:
            return RunResult("succeeded", 0, None)
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return RunResult("failed", code, reason)
    finally:
        os.close(log_fd)


def _pump(child: subprocess.Popen[bytes], log_fd: int, echo: bool,
          on_output: Callable[[], None] | None) -> None:
    assert child.stdout is not None
    fd = child.stdout.fileno()
    for chunk in iter(lambda: os.read(fd, 65536), b""):
        os.write(log_fd, chunk)
        if on_output is not None:
            on_output()
        if echo:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()


def _remember_descendants(pid: int, seen: dict[int, float]) -> None:
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen.setdefault(proc.pid, proc.create_time())


def _kill_leftovers(seen: Mapping[int, float], grace: float) -> None:
    """Kill remembered descendants that outlived the command (same pid *and* start time)."""
    for pid, created in seen.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                kill_tree(pid, grace, include_group=False)


def log_tail(log: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log, decoded leniently."""
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
