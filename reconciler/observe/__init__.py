"""Build an ``Observation`` of a pool: tmux panes, processes, worktrees, the store (I/O only).

Cost per pass does not grow with the worker count: one ``tmux list-panes``
per socket in use, one ``git worktree list``, a psutil check per process
worker, and a few store reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.liveness import controller_alive
from reconciler.marks import marked_processes, pool_key
from reconciler.model import (
    AttemptRow,
    Observation,
    ProcessRef,
    QueueCounts,
    RuntimeInstance,
    WorkerRow,
)
from reconciler.observe.git import pool_worktrees
from reconciler.observe.procs import process_instances
from reconciler.observe.tmux import tmux_instances
from reconciler.paths import PoolPaths
from reconciler.proctree import process_matches
from reconciler.pueueview import PueueView, view_of
from reconciler.runtimes.pueue import PueueClient, PueueError
from reconciler.specmodel import PueueSpec
from reconciler.store.port import StorePort
from reconciler.tmuxcli import pool_socket


def observe(paths: PoolPaths, sockets: Iterable[str | None], store: StorePort | None, *,
            repo: Path | None = None, worktree_root: Path | None = None,
            controller_lock: Path | None = None, now: float | None = None,
            pueue: PueueSpec | None = None, due_limit: int = 0) -> Observation:
    """Snapshot one pool.  ``store`` is None for a pool that was never applied.
    ``pueue``: the pool's pueue group (runtime: pueue), read once, with the first
    ``due_limit`` due tasks to hand on."""
    # pueue first: a task it reports done has ended its wrapper, whose result is then
    # in the store read below (never a live attempt taken for one that died)
    view = pueue_view(pueue, paths.name) if pueue is not None else None
    # processes first, the store after: a marked process seen here belongs to an
    # attempt that is already in the store, so it is never taken for a stray
    marked = marked_processes(pool_key(paths.root)) if store is not None else {}
    rows = store.workers() if store is not None else []
    in_use = {s for s in sockets if s} | {r.tmux_socket for r in rows if r.tmux_socket}
    # each socket name by the absolute path of the pool's server: the caller's
    # TMUX_TMPDIR does not matter (reconciler.tmuxcli)
    instances = [i for socket in sorted(in_use)
                 for i in tmux_instances(pool_socket(paths.root, socket, paths.tmux_conf),
                                         paths.name, str(paths.root), socket)]
    instances += _unseen_tmux_workers(rows, {i.worker_id for i in instances})
    instances += process_instances(rows, paths.logs)
    worktrees, worker_worktrees = pool_worktrees(repo, worktree_root) \
        if repo and worktree_root else ((), ())
    controller = store.controller() if store is not None else None
    running = tuple(store.running_attempts()) if store is not None else ()
    return Observation(
        pool=paths.name, observed_at=time.time() if now is None else now,
        instances=tuple(instances), workers=tuple(rows),
        queue=store.queue_counts() if store is not None else QueueCounts(),
        worktrees=worktrees, worker_worktrees=worker_worktrees,
        attempt_worktrees=store.attempt_worktrees(worktrees)
        if store is not None and worktrees else {},
        running=running, attempt_processes=_with_recorded_agents(marked, running),
        restart_history=store.restart_history() if store is not None else {},
        controller_alive=controller_alive(controller_lock, controller, time.time())
        if controller_lock else None,
        controller=controller,
        pueue=view,
        due_tasks=tuple(store.due_tasks(due_limit)) if view and store is not None else (),
        paused_until=store.paused_until() if view and store is not None else 0.0,
        foreign_restarts=store.pueue_restarts()
        if view and view.foreign and store is not None else {},
        pueue_task_statuses=store.task_statuses(sorted({key[0] for key in view.ours}))
        if view and store is not None else {},
        next_due_at=store.next_claim_at() if view and store is not None else None)


def pueue_view(pueue: PueueSpec, pool: str) -> PueueView:
    """One ``pueue status --json`` as ``pool`` sees its group; a daemon that does not
    answer is down (a document that is not pueue's is an error, not a down daemon)."""
    client = PueueClient(config=pueue.config)
    try:
        state = client.status()
    except PueueError:
        state = None
    return view_of(state, pool, pueue.group)


def _with_recorded_agents(marked: Mapping[int, tuple[ProcessRef, ...]],
                          running: Iterable[AttemptRow]) -> dict[int, tuple[ProcessRef, ...]]:
    """Marked processes plus each running attempt's recorded agent, if it still runs
    (an agent that replaced its own environment no longer carries the mark)."""
    found = dict(marked)
    for attempt in running:
        if attempt.pid and process_matches(attempt.pid, attempt.pid_create_time):
            have = found.get(attempt.id, ())
            if all(p.pid != attempt.pid for p in have):
                found[attempt.id] = (*have, ProcessRef(attempt.pid, attempt.pid_create_time))
    return found


def _unseen_tmux_workers(rows: Iterable[WorkerRow], seen: set[str]) -> list[RuntimeInstance]:
    """tmux workers whose window no server we can reach shows, but whose process lives.

    ``tmux -L NAME`` resolves NAME under ``$TMUX_TMPDIR``, so a command run with
    another one (another shell, a systemd unit) sees no server.  The worker's
    pid, checked with its start time, still tells the truth: such a worker is
    reported alive (without a window handle), so it is drained and stopped by
    pid instead of being forgotten while it keeps taking tasks.
    """
    return [RuntimeInstance(worker_id=r.id, runtime="tmux", pid=r.pid, alive=True,
                            socket=r.tmux_socket)
            for r in rows if r.runtime == "tmux" and r.id not in seen and r.pid
            and process_matches(r.pid, r.pid_create_time)]
