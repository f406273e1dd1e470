"""Kill a whole process tree: its process group plus every psutil descendant.

Children that called ``setsid`` leave the group, so the descendants are
collected *before* signalling and signalled one by one as well (DESIGN rule 7):
SIGTERM first, SIGKILL to whatever is still alive after the grace period.
Each process gets one SIGTERM, never two (agents may treat a second one as
"quit now, skip the cleanup").
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def kill_tree(pid: int, grace: float, *, include_group: bool = True) -> int | None:
    """Terminate ``pid`` and all its descendants; escalate to SIGKILL after ``grace``.

    Returns the exit status of ``pid`` when it was our child and got reaped
    here (``-signal`` for a signal, as ``subprocess`` reports it), else None.
    """
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return None
    procs = [root, *descendants(pid)]
    _signal_all(pid, procs, signal.SIGTERM, include_group)
    gone, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        # descendants may have forked again during the grace period
        procs = alive + [p for a in alive for p in _safe_children(a)]
        _signal_all(pid, procs, signal.SIGKILL, include_group)
        gone += psutil.wait_procs(procs, timeout=5)[0]
    code = next((getattr(p, "returncode", None) for p in gone if p.pid == pid), None)
    return code if isinstance(code, int) else None


def kill_supervised(pid: int, grace: float) -> None:
    """Kill a worker and the task it supervises, without letting it record anything.

    The worker gets SIGKILL first (a SIGTERM would let it finish and report
    the attempt it is running as failed); then its former descendants, which
    were collected beforehand, are terminated with the usual grace.
    """
    children = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    for child in children:
        kill_tree(child.pid, grace)


def _safe_children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


def _signal_all(pid: int, procs: list[psutil.Process], sig: signal.Signals,
                include_group: bool) -> None:
    grouped = False
    if include_group:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                grouped = True
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if grouped and os.getpgid(proc.pid) == pid:
                continue  # the group signal reached it already
            proc.send_signal(sig)


def request_stop(pid: int | None) -> None:
    """SIGTERM the worker process alone: it finishes its current task, then exits."""
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """True if ``pid`` is alive and (when known) is the same process we started.

    Comparing the creation time guards against a recycled pid.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
