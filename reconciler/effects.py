"""The executor's ports on a real host: processes, git worktrees, runtimes, the clock.

The executor acts only through a ``Ports`` value (as honcho passes every
effect through one environment object), so its unit tests and the
convergence property test swap these for fakes of our own ports.
"""

from __future__ import annotations

import signal as signals
import time
from pathlib import Path

from reconciler.executor import Ports
from reconciler.marks import marked_processes, pool_key
from reconciler.model import ProcessRef
from reconciler.paths import PoolPaths
from reconciler.proctree import (
    kill_tree,
    live_processes,
    process_matches,
    request_stop,
    signal_processes,
)
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.process import ProcessRuntime
from reconciler.runtimes.pueue import PueueClient
from reconciler.runtimes.tmux import TmuxRuntime
from reconciler.specmodel import PoolSpec
from reconciler.store.port import StorePort
from reconciler.worktrees import commit_wip, remove_worktree


class HostProcesses:
    """Signals real processes, and only the ones we mean: a pid whose start time no
    longer matches was recycled by another process and is left alone.  ``pool_key``
    names the pool whose attempt marks it looks for."""

    def __init__(self, pool_key: str) -> None:
        self.pool_key = pool_key

    def kill(self, process: ProcessRef, grace: float) -> None:
        if process_matches(process.pid, process.create_time):
            kill_tree(process.pid, grace)

    def request_stop(self, process: ProcessRef) -> None:
        if process_matches(process.pid, process.create_time):
            request_stop(process.pid)

    def signal(self, processes: tuple[ProcessRef, ...], signal: str) -> None:
        signal_processes(processes, signal_by_name(signal))

    def wait_gone(self, processes: tuple[ProcessRef, ...], timeout: float) -> None:
        import psutil
        psutil.wait_procs(live_processes(processes), timeout=timeout)

    def alive(self, processes: tuple[ProcessRef, ...]) -> tuple[ProcessRef, ...]:
        return tuple(p for p in processes if process_matches(p.pid, p.create_time))

    def of_attempts(self, attempt_ids: tuple[int, ...]) -> tuple[ProcessRef, ...]:
        marked = marked_processes(self.pool_key)
        return tuple(p for attempt_id in attempt_ids for p in marked.get(attempt_id, ()))


def signal_by_name(name: str) -> signals.Signals:
    if name not in ("SIGTERM", "SIGKILL"):
        raise ValueError(f"not a stop signal: {name!r}")
    return signals.Signals[name]


class GitWorktrees:
    """Removes task worktrees of one repository, one git operation at a time."""

    def __init__(self, repo: Path, lock_dir: Path) -> None:
        self.repo = repo
        self.lock_dir = lock_dir

    def clean(self, path: Path) -> None:
        """Whatever the agent left uncommitted is committed to the worktree's branch
        first, so no work is lost with it."""
        if path.exists():
            commit_wip(path, "WIP: left by a reconciler attempt that did not finish")
        # the files go first, unlocked; only git's metadata update takes the lock
        remove_worktree(self.repo, path, lock_dir=self.lock_dir)


def host_runtimes(spec: PoolSpec, paths: PoolPaths) -> dict[str, Runtime]:
    return {"tmux": TmuxRuntime(spec.tmux_socket, spec.name, paths.tmux_conf),
            "process": ProcessRuntime(paths.logs)}


def host_ports(spec: PoolSpec, paths: PoolPaths, store: StorePort) -> Ports:
    return Ports(store=store, runtimes=host_runtimes(spec, paths),
                 processes=HostProcesses(pool_key(paths.root)),
                 worktrees=GitWorktrees(spec.repo, paths.repo_locks), clock=time.time,
                 pueue=PueueClient(config=spec.pueue.config) if spec.pueue else None)
