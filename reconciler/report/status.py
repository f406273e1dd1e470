"""Status of a pool as plain data: what ``reconcile status`` prints or emits as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from reconciler.model import Observation, worker_sort_key


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    state: str
    runtime: str
    pid: int | None
    current_task: int | None
    heartbeat_age: float | None
    uptime: float | None
    restarts: int


def worker_statuses(observation: Observation, now: float) -> list[WorkerStatus]:
    """Merge store records with what the runtime sees: a gone process is ``dead``."""
    out = []
    ids = {w.id for w in observation.workers} | {i.worker_id for i in observation.instances}
    for worker_id in sorted(ids, key=worker_sort_key):
        row = observation.worker(worker_id)
        inst = observation.instance(worker_id)
        state = row.state if row else "unknown"
        if inst is None or not inst.alive:
            state = "exited" if row and row.state == "exited" else "dead"
        elif row and row.drain_requested:
            state = "draining"
        out.append(WorkerStatus(
            id=worker_id, state=state,
            runtime=inst.runtime if inst else (row.runtime if row else "?"),
            pid=inst.pid if inst and inst.alive else None,
            current_task=row.current_task if row and state not in ("dead", "exited") else None,
            heartbeat_age=round(now - row.heartbeat_at, 3) if row and row.heartbeat_at else None,
            uptime=round(now - row.started_at, 3) if row and row.started_at and inst
            and inst.alive else None,
            restarts=row.restarts if row else 0))
    return out


def status_document(observation: Observation, now: float) -> dict[str, Any]:
    return {
        "pool": observation.pool,
        "observed_at": observation.observed_at,
        "workers": [asdict(w) for w in worker_statuses(observation, now)],
        "queue": asdict(observation.queue),
    }
