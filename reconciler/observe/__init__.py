"""Build an ``Observation`` of a pool: tmux panes, processes, the store (I/O only)."""

from __future__ import annotations

import time

from reconciler.model import Observation
from reconciler.observe.procs import process_instances
from reconciler.observe.tmux import tmux_instances
from reconciler.store.sqlite import Store


def observe(pool: str, tmux_socket: str | None, store: Store,
            now: float | None = None) -> Observation:
    """Snapshot one pool: one tmux call, one psutil check per process worker, one store read."""
    rows = store.workers()
    instances = tmux_instances(tmux_socket, pool) if tmux_socket else []
    instances += process_instances(rows)
    return Observation(pool=pool, observed_at=time.time() if now is None else now,
                       instances=tuple(instances), workers=tuple(rows),
                       queue=store.queue_counts())
