"""Observe detached worker processes (``runtime: process``) from their store records."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reconciler.model import RuntimeInstance, WorkerRow
from reconciler.proctree import process_matches
from reconciler.runtimes.exits import recorded_exit


def process_instances(rows: Iterable[WorkerRow], log_dir: Path) -> list[RuntimeInstance]:
    """One instance per process-runtime record that has been started.

    Liveness is read from /proc (no subprocess); a recycled pid is told apart by
    its creation time.  An exited worker's status is the one it recorded itself
    (a clean stop), else the one its reaper wrote (a crash, a kill).
    """
    found = []
    for row in rows:
        if row.runtime != "process" or row.pid is None:
            continue
        alive = process_matches(row.pid, row.pid_create_time)
        status = None if alive else row.exit_code
        if not alive and status is None:
            status = recorded_exit(log_dir, row.id, row.pid)
        signalled = status is not None and status < 0
        found.append(RuntimeInstance(worker_id=row.id, runtime="process", pid=row.pid,
                                     alive=alive, exit_status=None if signalled else status,
                                     exit_signal=-status if signalled and status else None))
    return found
