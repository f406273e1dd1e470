"""Observe detached worker processes (``runtime: process``) from their store records."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.model import RuntimeInstance, WorkerRow
from reconciler.proctree import process_matches


def process_instances(rows: Iterable[WorkerRow]) -> list[RuntimeInstance]:
    """One instance per process-runtime record that has been started.

    Liveness is checked with psutil (no subprocess); a recycled pid is told
    apart by its creation time.
    """
    found = []
    for row in rows:
        if row.runtime != "process" or row.pid is None:
            continue
        alive = process_matches(row.pid, row.pid_create_time)
        found.append(RuntimeInstance(worker_id=row.id, runtime="process", pid=row.pid,
                                     alive=alive, exit_status=None if alive else row.exit_code))
    return found
