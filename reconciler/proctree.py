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
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.model import ProcessRef

if TYPE_CHECKING:
    import psutil


def descendants(pid: int) -> list[psutil.Process]:
    import psutil
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def kill_tree(pid: int, grace: float, *, include_group: bool = True) -> int | None:
    """Terminate ``pid`` and all its descendants; escalate to SIGKILL after ``grace``.

    Returns the exit status of ``pid`` when it was our child and got reaped
    here (``-signal`` for a signal, as ``subprocess`` reports it), else None.
    """
    import psutil
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
    """Kill a worker at once, without letting it record anything, and without waiting.

    SIGKILL, not SIGTERM: a SIGTERM would let it finish and report the attempt
    it is running as failed.  Its agent is not waited for here: the kernel
    sends it SIGTERM as the worker dies (``PR_SET_PDEATHSIG``), and the
    executor ends the attempt once every process carrying its mark is gone.
    ``grace`` is accepted for the runtime interface and not used.
    """
    del grace
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _safe_children(proc: psutil.Process) -> list[psutil.Process]:
    import psutil
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


def _signal_all(pid: int, procs: list[psutil.Process], sig: signal.Signals,
                include_group: bool) -> None:
    import psutil
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


def live_processes(refs: list[ProcessRef] | tuple[ProcessRef, ...]) -> list[psutil.Process]:
    """The processes of ``refs`` that are still the ones meant (same start time)."""
    import psutil
    live = []
    for ref in refs:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(ref.pid)
            same = ref.create_time is None or abs(proc.create_time() - ref.create_time) < 1.0
            if same and proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    return live


def signal_processes(refs: list[ProcessRef] | tuple[ProcessRef, ...],
                     sig: signal.Signals) -> int:
    """Send ``sig`` to each live process of ``refs`` (and to the group each one leads);
    never waits.  Returns how many were signalled."""
    import psutil
    procs = live_processes(refs)
    for proc in procs:
        with contextlib.suppress(OSError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)
    return len(procs)


def kill_processes(refs: list[ProcessRef] | tuple[ProcessRef, ...], grace: float) -> None:
    """SIGTERM all of ``refs`` at once, wait once (up to ``grace``), SIGKILL the rest."""
    import psutil
    procs = live_processes(refs)
    if not procs:
        return
    signal_processes(refs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        signal_processes([ProcessRef(p.pid, None) for p in alive], signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)


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
    found = _state_and_start(pid)
    if found is None:
        return False
    state, started = found
    return state != "Z" and (create_time is None or abs(started - create_time) < 1.0)


def process_state(pid: int) -> str | None:
    """The process's state letter (``Z``: a zombie, exited but not reaped), or None
    if there is no such process."""
    found = _state_and_start(pid)
    return found[0] if found else None


def create_time_of(pid: int) -> float | None:
    found = _state_and_start(pid)
    return found[1] if found else None


_PROC = Path("/proc")


def _state_and_start(pid: int) -> tuple[str, float] | None:
    """A live process's state letter (``Z``: zombie) and creation time, in seconds since
    the epoch as psutil computes it; None if there is no such process.

    On Linux both come from ``/proc/PID/stat`` (field 3, and field 22 in clock ticks
    since boot), so ``status`` and ``diff``, which ask this of every worker and the
    controller, need not import psutil (about 15 ms); elsewhere psutil answers.  The
    boot time is read every time, as psutil does: after the clock is stepped (NTP's
    first sync, a resumed VM) both must keep agreeing."""
    try:
        with (_PROC / str(pid) / "stat").open("rb") as file:
            fields = file.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        if _PROC.is_dir():
            return None  # gone
        return _psutil_state_and_start(pid)
    except OSError:
        return _psutil_state_and_start(pid)
    try:
        with (_PROC / "stat").open("rb") as file:
            boot = next(float(line.split()[1]) for line in file if line.startswith(b"btime"))
        return fields[0].decode(), int(fields[19]) / os.sysconf("SC_CLK_TCK") + boot
    except (OSError, ValueError, IndexError, StopIteration):
        return _psutil_state_and_start(pid)


def _psutil_state_and_start(pid: int) -> tuple[str, float] | None:
    import psutil
    try:
        proc = psutil.Process(pid)
        state = "Z" if proc.status() == psutil.STATUS_ZOMBIE else "R"
        return state, proc.create_time()
    except psutil.Error:
        return None
