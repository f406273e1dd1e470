"""Carry out one ``Plan`` pass through the runtime ports and the store.

The executor decides nothing: the planner said what and why.  It never waits
either: a graceful stop or roll is a drain request (store flag + SIGTERM)
here, and a later pass (the controller's, or ``apply --wait``'s) sees the
worker exit, or overrun ``stopGrace``, and replaces or removes it.
Actions marked ``pending`` (a drain or a restart backoff in progress) are left
for a later pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.model import Action, ActionKind, Observation, Plan, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.planner import CONTROLLER
from reconciler.proctree import kill_tree, process_matches, request_stop
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.process import ProcessRuntime
from reconciler.runtimes.tmux import TmuxRuntime
from reconciler.spec import PoolSpec
from reconciler.store.sqlite import Store
from reconciler.worktrees import commit_wip, remove_worktree, repo_lock


class WorkerRecovered(ReconcilerError):
    """A worker planned for a restart was found healthy on a second look."""


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def worker_argv(paths: PoolPaths, worker_id: str, spec_id: int) -> list[str]:
    """How a worker process is started: this Python, this package, argv only."""
    return [sys.executable, "-m", "reconciler", "--state-dir", str(paths.state_dir), "worker",
            "--pool", paths.name, "--id", worker_id, "--spec-id", str(spec_id)]


def controller_argv(paths: PoolPaths) -> list[str]:
    return [sys.executable, "-m", "reconciler", "--state-dir", str(paths.state_dir),
            "controller", "--pool", paths.name]


def default_runtimes(spec: PoolSpec, paths: PoolPaths) -> dict[str, Runtime]:
    return {"tmux": TmuxRuntime(spec.tmux_socket, spec.name, paths.tmux_conf),
            "process": ProcessRuntime(paths.logs)}


class Executor:
    def __init__(self, spec: PoolSpec, spec_id: int, paths: PoolPaths, store: Store, *,
                 progress: Callable[[str], None] = lambda _line: None,
                 force: bool = False, runtimes: Mapping[str, Runtime] | None = None) -> None:
        self.spec = spec
        self.spec_id = spec_id
        self.paths = paths
        self.store = store
        self.progress = progress
        self.force = force  # stop now instead of draining (``delete --force``)
        self.runtimes = runtimes if runtimes is not None else default_runtimes(spec, paths)

    def execute(self, plan: Plan, observation: Observation) -> ExecutionReport:
        report = ExecutionReport()
        for step in plan.steps:
            self.store.set_health(step.worker, step.source, step.dest, step.reason)
        for action in plan.actions:
            if (action.pending or action.graceful) and not self.force:
                if action.graceful and not action.pending:
                    self._drain(action, observation.instance(action.target))
                    report.done.append(action.describe())
                continue
            try:
                self._act(action, observation)
            except ReconcilerError as exc:  # one worker's trouble must not stop the pass
                report.problems.append(f"{action.describe()}: {exc.one_line()}")
                continue
            report.done.append(action.describe())
            self.progress(action.describe())
        return report

    # ------------------------------------------------------------------ steps

    def _act(self, action: Action, observation: Observation) -> None:
        instance = observation.instance(action.target)
        row = observation.worker(action.target)
        if action.kind is ActionKind.CLEAN:
            self._clean_worktree(Path(action.target))
        elif action.kind is ActionKind.STOP and action.target == CONTROLLER:
            self.store.request_controller_stop()
            info = self.store.controller()
            if info and info.pid and process_matches(info.pid, info.pid_create_time):
                request_stop(info.pid)
        elif action.kind is ActionKind.STOP:
            self._retire(action, instance, consume=False)  # the operator's choice: free
        elif action.kind is ActionKind.REMOVE:
            self._retire(action, instance, consume=True)
        elif action.kind is ActionKind.RELEASE:
            self._clear(action, instance, consume=True)
        elif action.kind is ActionKind.RESTART:
            if action.counted and not self._still_dead(action, instance):
                raise WorkerRecovered(f"{action.target} recovered since it was observed; "
                                      "not restarted")
            self._clear(action, instance, consume=action.counted)
            new_spec = row is None or row.template_hash != self.spec.template_hash()
            self._start(action.target, restarted=True, counted=action.counted,
                        reason=action.reason, reset_budget=action.reset_budget or new_spec)
        elif action.target == CONTROLLER:
            self._start_controller()
        else:
            self._start(action.target, restarted=False, counted=False, reason="",
                        reset_budget=True)

    def _start_controller(self) -> None:
        """Always a detached process, whatever the workers' runtime: a controller inside
        the pool's tmux server would die with it, and then nothing would restore it."""
        info = self.store.controller()
        if info and info.pid and process_matches(info.pid, info.pid_create_time):
            kill_tree(info.pid, 1.0)  # hung: it holds the lock but no longer heartbeats
        started = self.runtimes["process"].start(CONTROLLER, controller_argv(self.paths))
        # recorded now, so the next pass does not start another before this one is up
        self.store.register_controller(started.pid, started.create_time)

    def _still_dead(self, action: Action, instance: RuntimeInstance | None) -> bool:
        """Re-observe one worker right before killing it: never act on a stale view.

        A gone process stays gone; a hung one may have heartbeat since the pass
        observed it (a pause, a slow disk), and is then left alone.
        """
        if instance is None or not instance.alive:
            return True
        if not self.runtimes[instance.runtime].is_running(instance):
            return True
        row = next((w for w in self.store.workers() if w.id == action.target), None)
        heartbeat = row.heartbeat_at if row else None
        return heartbeat is None or \
            time.time() - heartbeat >= self.spec.health.unresponsive_after

    def _drain(self, action: Action, instance: RuntimeInstance | None) -> None:
        self.store.request_drain(action.target, action.reason)
        if instance is not None:
            self.runtimes[instance.runtime].request_stop(instance)
        self.progress(f"{action.target}: asked to finish its current task, then stop "
                      f"({action.reason})")

    def _start(self, worker_id: str, *, restarted: bool, counted: bool, reason: str,
               reset_budget: bool) -> None:
        runtime = self.runtimes[self.spec.runtime]
        self.store.register_worker(
            worker_id, runtime=runtime.name, pid=None, pid_create_time=None,
            spec_id=self.spec_id, template_hash=self.spec.template_hash(),
            template_digests=self.spec.template_digests(), restarted=restarted,
            tmux_socket=self.spec.tmux_socket if runtime.name == "tmux" else None,
            counted=counted, reason=reason, reset_budget=reset_budget)
        started = runtime.start(worker_id, worker_argv(self.paths, worker_id, self.spec_id))
        self.store.set_worker_process(worker_id, started.pid, started.create_time)

    def _clear(self, action: Action, instance: RuntimeInstance | None, *, consume: bool) -> None:
        """Remove what is left of a worker, kill the commands it ran, requeue their tasks."""
        if instance is not None:
            self.runtimes[instance.runtime].remove(action.target, instance,
                                                   self.spec.worker.stop_grace)
        for attempt in self.store.running_attempts(action.target):
            # the agent outlives its dead worker (it has a session of its own); its start
            # time tells it apart from an unrelated process that got the same pid since
            if attempt.pid and process_matches(attempt.pid, attempt.pid_create_time):
                kill_tree(attempt.pid, self.spec.worker.stop_grace)
        self.store.requeue_attempts_of(
            action.target, f"worker {action.target}: {action.reason}",
            consume=consume, policy=self.spec.retry_policy)

    def _retire(self, action: Action, instance: RuntimeInstance | None, *, consume: bool) -> None:
        self._clear(action, instance, consume=consume)
        self.store.mark_worker_removed(action.target, action.reason)

    def _clean_worktree(self, path: Path) -> None:
        """Remove an orphaned worktree; whatever its agent left uncommitted is first
        committed to its branch, so no work is lost with it."""
        if path.exists():
            commit_wip(path, "WIP: left by a reconciler attempt that did not finish")
        with repo_lock(self.paths.repo_locks, self.spec.repo):
            remove_worktree(self.spec.repo, path)
