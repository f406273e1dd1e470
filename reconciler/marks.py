"""Attempt marks: every process a task starts carries its attempt's identity.

A worker puts ``RECONCILER_ATTEMPT_MARK=<pool key>:<attempt id>`` into the
environment of every command of an attempt (setup, agent, hooks) *after* the
claim is committed and *before* anything starts.  Children inherit it, so a
process that double-forked away from its parent, or outlived a worker that
died before it could record the agent's pid, is still found on the host by
reading ``/proc/PID/environ``.  That is what lets the controller

- end an attempt only once every process of it is confirmed gone, so a task
  is never requeued while its previous agent still works on it;
- kill, on every pass, processes of the pool that no running attempt owns.

The pool key is derived from the pool's directory, so two pools (or two test
runs) with the same name in different state directories never touch each
other's processes.  A process that clears its own environment (``env -i``)
drops its mark; the agent's recorded pid and process group still cover it.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.model import ProcessRef
from reconciler.proctree import create_time_of, kill_processes

if TYPE_CHECKING:
    import psutil

MARK_VAR = "RECONCILER_ATTEMPT_MARK"
_PROC = Path("/proc")


def pool_key(pool_root: Path) -> str:
    """A short, stable name for one pool directory (not a secret)."""
    return hashlib.sha256(str(pool_root.resolve()).encode()).hexdigest()[:16]


def attempt_mark(key: str, attempt_id: int) -> str:
    return f"{key}:{attempt_id}"


def marked_processes(key: str) -> dict[int, tuple[ProcessRef, ...]]:
    """Every live process carrying a mark of pool ``key``, by attempt id.

    Reads each process's environment once (a few milliseconds for a few
    hundred processes); zombies, kernel threads and processes we may not
    read have none and are skipped.
    """
    needle = f"{MARK_VAR}={key}:".encode()
    found: dict[int, list[ProcessRef]] = defaultdict(list)
    me = os.getpid()
    for pid, environ in _environments(me):
        start = environ.find(needle)
        if start < 0 or (start > 0 and environ[start - 1] != 0):
            continue
        end = environ.find(b"\0", start)
        value = environ[start + len(needle):end if end >= 0 else None]
        if not value.isdigit():
            continue
        started = create_time_of(pid)
        if started is not None:
            found[int(value)].append(ProcessRef(pid, started))
    return {attempt: tuple(refs) for attempt, refs in found.items()}


def _environments(skip: int) -> list[tuple[int, bytes]]:
    if not _PROC.is_dir():  # not Linux: psutil reads environments more slowly
        import psutil

        return [(p.pid, _joined(p)) for p in psutil.process_iter() if p.pid != skip]
    out: list[tuple[int, bytes]] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == skip:
            continue
        try:
            out.append((int(entry.name), (entry / "environ").read_bytes()))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return out


def _joined(proc: psutil.Process) -> bytes:
    import psutil
    try:
        return b"\0".join(f"{k}={v}".encode() for k, v in proc.environ().items())
    except psutil.Error:
        return b""


def kill_marked(key: str, attempt_id: int, grace: float) -> None:
    """Kill every process of one attempt: SIGTERM to all at once, SIGKILL after ``grace``.

    Looks again afterwards, since a process may fork while it is being
    terminated; three rounds catch any realistic fork chain.
    """
    for _ in range(3):
        refs = marked_processes(key).get(attempt_id, ())
        if not refs:
            return
        kill_processes(refs, grace)
