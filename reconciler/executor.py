"""Carry out a ``Plan`` through the runtime ports and the store.

The executor decides nothing: the planner said what and why.  It does the
immediate actions first (clear exited windows, replace dead workers, start
missing ones, remove orphaned worktrees), then the graceful ones: every worker
to stop or roll is asked to drain at once (store flag + SIGTERM), and each is
replaced or removed as soon as its own current task has finished, or killed
(its task requeued, not counted as a failure) after ``worker.stopGrace``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.durations import format_duration
from reconciler.errors import ReconcilerError
from reconciler.model import Action, ActionKind, Observation, Plan, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.proctree import kill_tree
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.process import ProcessRuntime
from reconciler.runtimes.tmux import TmuxRuntime
from reconciler.spec import PoolSpec
from reconciler.store.sqlite import Store
from reconciler.worktrees import remove_worktree, repo_lock

DRAIN_POLL_SECONDS = 0.2


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def worker_argv(paths: PoolPaths, worker_id: str, spec_id: int) -> list[str]:
    """How a worker process is started: this Python, this package, argv only."""
    return [sys.executable, "-m", "reconciler", "--state-dir", str(paths.state_dir), "worker",
            "--pool", paths.name, "--id", worker_id, "--spec-id", str(spec_id)]


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
        self.force = force
        self.runtimes = runtimes if runtimes is not None else default_runtimes(spec, paths)

    def execute(self, plan: Plan, observation: Observation) -> ExecutionReport:
        report = ExecutionReport()
        graceful: list[Action] = []
        for action in plan.actions:
            if action.graceful and not self.force:
                graceful.append(action)
                continue
            instance = observation.instance(action.target)
            if action.kind is ActionKind.CLEAN:
                self._clean_worktree(Path(action.target), report)
            elif action.kind in (ActionKind.REMOVE, ActionKind.STOP):
                # a stop forced by the operator does not count against the task's attempts
                self._retire(action, instance, consume=action.kind is ActionKind.REMOVE)
            elif action.kind is ActionKind.RESTART:
                self._clear(action, instance, consume=not action.graceful)
                self._start(action.target, restarted=True)
            else:
                self._start(action.target, restarted=False)
            report.done.append(action.describe())
        if graceful:
            self._drain_then_finish(graceful, observation, report)
        return report

    # ------------------------------------------------------------------ steps

    def _start(self, worker_id: str, *, restarted: bool) -> None:
        runtime = self.runtimes[self.spec.runtime]
        self.store.register_worker(
            worker_id, runtime=runtime.name, pid=None, pid_create_time=None,
            spec_id=self.spec_id, template_hash=self.spec.template_hash(),
            template_digests=self.spec.template_digests(), restarted=restarted,
            tmux_socket=self.spec.tmux_socket if runtime.name == "tmux" else None)
        started = runtime.start(worker_id, worker_argv(self.paths, worker_id, self.spec_id))
        self.store.set_worker_process(worker_id, started.pid, started.create_time)

    def _clear(self, action: Action, instance: RuntimeInstance | None, *, consume: bool) -> None:
        """Remove what is left of a worker, kill the commands it ran, requeue their tasks."""
        if instance is not None:
            self.runtimes[instance.runtime].remove(action.target, instance,
                                                   self.spec.worker.stop_grace)
        for attempt in self.store.running_attempts(action.target):
            if attempt.pid:  # the agent outlives its dead worker: it has a session of its own
                kill_tree(attempt.pid, self.spec.worker.stop_grace)
        self.store.requeue_attempts_of(
            action.target, f"worker {action.target} replaced: {action.reason}",
            consume=consume, max_attempts=self.spec.tasks.max_attempts,
            retry_backoff=self.spec.tasks.retry_backoff)

    def _retire(self, action: Action, instance: RuntimeInstance | None, *, consume: bool) -> None:
        self._clear(action, instance, consume=consume)
        self.store.mark_worker_removed(action.target, action.reason)

    def _clean_worktree(self, path: Path, report: ExecutionReport) -> None:
        try:
            with repo_lock(self.paths.repo_locks, self.spec.repo):
                remove_worktree(self.spec.repo, path)
        except ReconcilerError as exc:
            report.problems.append(f"could not remove worktree {path}: {exc.one_line()}")

    def _drain_then_finish(self, actions: list[Action], observation: Observation,
                           report: ExecutionReport) -> None:
        grace = self.spec.worker.stop_grace
        deadline = time.monotonic() + grace
        waiting: dict[str, tuple[Action, RuntimeInstance | None]] = {}
        for action in actions:
            instance = observation.instance(action.target)
            self.store.request_drain(action.target, action.reason)
            if instance is not None:
                self.runtimes[instance.runtime].request_stop(instance)
            waiting[action.target] = (action, instance)
            self.progress(f"waiting for {action.target} to finish its current task "
                          f"(at most {format_duration(grace)}, worker.stopGrace)")
        while waiting:
            overdue = time.monotonic() >= deadline
            for worker_id, (action, instance) in list(waiting.items()):
                running = instance is not None and \
                    self.runtimes[instance.runtime].is_running(instance)
                if running and not overdue:
                    continue
                del waiting[worker_id]
                if running:
                    self.progress(f"{worker_id} still busy after {format_duration(grace)}: "
                                  "killing it; its task goes back to the queue")
                elif instance is not None:  # it has exited: never signal that pid again
                    instance = dataclasses.replace(instance, alive=False)
                if action.kind is ActionKind.RESTART:
                    self._clear(action, instance, consume=False)
                    self._start(worker_id, restarted=True)
                else:
                    self._retire(action, instance, consume=False)
                report.done.append(action.describe())
                verb = "replaced" if action.kind is ActionKind.RESTART else "stopped"
                self.progress(f"{worker_id} {verb}")
            if waiting:
                time.sleep(DRAIN_POLL_SECONDS)
