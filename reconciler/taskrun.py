"""Run one task command: argv, own process group, output to a log, timeout, cancel.

The command runs in a new session so its whole tree can be signalled; its
output is copied both to the attempt's log file and to the worker's stdout
(visible in the tmux window).  Nothing it starts outlives it:

- it gets ``PR_SET_PDEATHSIG`` (Linux), so it is sent SIGTERM the moment its
  worker dies, even by SIGKILL, before that worker could record its pid;
- with an attempt ``mark`` every process it starts carries the mark in its
  environment, so the ones that double-forked away or left the group with
  ``setsid`` are found by it and killed when the command ends (without one,
  descendants are remembered while it runs, the weaker fallback);
- output is read until the command's processes are gone, not until every
  copy of the pipe closes: a daemon holding it cannot stall the attempt.

Nothing here polls at a fine grain: the exit is waited for on a pidfd (the
finish time is the exit's, not a poll's), output on its pipe; only the
timeout and a cancel request are checked every ``CANCEL_CHECK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.exitstatus import describe_exit
from reconciler.marks import MARK_VAR, attempt_mark, kill_marked
from reconciler.paths import open_private_append
from reconciler.proctree import kill_tree

CANCEL_CHECK_SECONDS = 0.5  # a cancel request is noticed this soon (it comes by heartbeat)
TAIL_BYTES = 2000
PUMP_QUIET_SECONDS = 0.2  # once told to stop, the output reader stops after this much quiet
PUMP_DRAIN_SECONDS = 1.0  # how long it keeps reading once the command's processes are gone
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunResult:
    status: str  # succeeded | failed | timeout | cancelled
    exit_code: int | None
    error: str | None
    ended_at: float | None = None  # when it exited, timed out or was cancelled (not cleaned)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when its parent dies.

    ``prctl`` is looked up here, before any fork: the child only makes the
    call, which is async-signal-safe.  The signal follows the *thread* that
    forked, so workers run their commands from their main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def run_command(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path,
                timeout: float, grace: float, should_cancel: Callable[[], bool],
                echo: bool = True, on_start: Callable[[int], None] | None = None,
                on_output: Callable[[], None] | None = None,
                mark: tuple[str, int] | None = None) -> RunResult:
    """Run ``argv`` until it exits, times out or is cancelled.

    Never raises for the command's own faults: they become the result.
    ``on_start`` receives the command's pid (also its process group id), so a
    supervisor can record it and kill the tree even if this process dies.
    ``mark`` is the attempt's ``(pool key, attempt id)``: every process of the
    command carries it, and whatever still carries it when the command ends
    is killed.
    """
    log_fd = open_private_append(log)
    env = dict(env)
    if mark is not None:
        env[MARK_VAR] = attempt_mark(*mark)
    try:
        try:
            child = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True,
                                     preexec_fn=_die_with_parent())
        except OSError as exc:
            message = f"cannot run {argv[0]!r}: {exc.strerror}"
            _write_quietly(log_fd, (message + "\n").encode())
            return RunResult("failed", 127 if isinstance(exc, FileNotFoundError) else 126, message)
        except (ValueError, subprocess.SubprocessError) as exc:  # e.g. a NUL byte in an argument
            message = f"cannot run {argv[0]!r}: {exc}"
            _write_quietly(log_fd, (message + "\n").encode())
            return RunResult("failed", 126, message)
        if on_start is not None:
            on_start(child.pid)
        stop_r, stop_w = os.pipe()
        pump = threading.Thread(target=_pump, args=(child, log_fd, echo, on_output, stop_r),
                                daemon=True)
        pump.start()
        exit_waiter = ExitWaiter(child)
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        outcome: str | None = None
        while True:
            if mark is None:
                _remember_descendants(child.pid, seen)
            if exit_waiter.wait(max(0.0, min(CANCEL_CHECK_SECONDS,
                                             deadline - time.monotonic()))):
                break  # the moment it exits: the finish is not rounded to a poll
            if time.monotonic() >= deadline:
                outcome = "timeout"
            elif should_cancel():
                outcome = "cancelled"
            if outcome:
                ended_at = time.time()
                reaped = kill_tree(child.pid, grace)
                if reaped is not None:  # psutil reaped it: Popen.wait would see no child
                    child.returncode = reaped
                break
        if outcome is None:
            ended_at = time.time()
        code = child.wait()
        exit_waiter.close()
        if mark is not None:
            kill_marked(*mark, grace)
        else:
            _kill_leftovers(seen, grace)
        os.write(stop_w, b"!")
        pump.join(timeout=PUMP_DRAIN_SECONDS + PUMP_QUIET_SECONDS + 1)
        if not pump.is_alive():
            # a pump still blocked in a write keeps the pipe: closing it under the
            # thread could hand its fd number to an unrelated file
            if child.stdout is not None:
                child.stdout.close()
            os.close(stop_r)
        os.close(stop_w)
        if outcome == "timeout":
            return RunResult("timeout", code, f"timed out after {timeout:g}s", ended_at)
        if outcome == "cancelled":
            return RunResult("cancelled", code, "cancelled by operator", ended_at)
        if code == 0:
            return RunResult("succeeded", 0, None, ended_at)
        reason = describe_exit(code)
        return RunResult("failed", code, reason, ended_at)
    finally:
        os.close(log_fd)


class ExitWaiter:
    """Waits for a child's exit with a timeout, sleeping on a pidfd until it exits instead
    of the short sleeps ``Popen.wait(timeout)`` polls with."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        try:
            self.pidfd: int | None = os.pidfd_open(child.pid)
        except (OSError, AttributeError):  # no pidfds here (before Linux 5.3)
            self.pidfd = None

    def wait(self, seconds: float) -> bool:
        """True once the child has exited (and was reaped), False after ``seconds``."""
        if self.pidfd is None:
            try:
                self.child.wait(timeout=seconds)
                return True
            except subprocess.TimeoutExpired:
                return False
        if self.child.returncode is None:
            select.select([self.pidfd], [], [], seconds)
        return self.child.poll() is not None

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _write_quietly(fd: int, data: bytes) -> bool:
    """Write to a log; False (never an exception) when the disk is full or failing."""
    try:
        os.write(fd, data)
        return True
    except OSError:
        return False


def _pump(child: subprocess.Popen[bytes], log_fd: int, echo: bool,
          on_output: Callable[[], None] | None, stop: int) -> None:
    """Copy the command's output to the log (and the worker's terminal) until the pipe
    closes, or until ``stop`` (a pipe) is written to and the output has been quiet for
    ``PUMP_QUIET_SECONDS`` (or drained for ``PUMP_DRAIN_SECONDS``): a daemon that kept
    the pipe must not hold the attempt.  Until then it sleeps in ``select``.

    A log write that fails (disk full) is reported once on the worker's stderr;
    reading goes on, so the command is never blocked on a full pipe.
    """
    assert child.stdout is not None
    fd = child.stdout.fileno()
    logging = True
    stop_by: float | None = None
    while True:
        if stop_by is None:
            ready, _, _ = select.select([fd, stop], [], [])
            if stop in ready:
                stop_by = time.monotonic() + PUMP_DRAIN_SECONDS
            if fd not in ready:
                continue
        else:
            left = stop_by - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([fd], [], [], min(PUMP_QUIET_SECONDS, left))
            if not ready:
                return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        if logging and not _write_quietly(log_fd, chunk):
            logging = False
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("reconciler: cannot write the task log (disk full?); "
                                 "its further output is not kept\n")
        if on_output is not None:
            on_output()
        if echo:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()


def _remember_descendants(pid: int, seen: dict[int, float]) -> None:
    import psutil
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen.setdefault(proc.pid, proc.create_time())


def _kill_leftovers(seen: Mapping[int, float], grace: float) -> None:
    """Kill remembered descendants that outlived the command (same pid *and* start time)."""
    import psutil
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
