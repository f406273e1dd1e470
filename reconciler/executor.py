"""Carry out a ``Plan``: one ``match`` over the action types, effects through ports.

The executor decides nothing: the planner said what, why and how (which
processes to kill, whether a restart counts, whether a budget starts afresh).
It never waits either: a graceful stop is a drain request (store flag +
SIGTERM), and a later pass sees the worker exit, or overrun ``stopGrace``.
The one check it makes is the one an action carries: the guard of a hung
worker's restart, re-read right before the kill.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.actions import (
    CONTROLLER,
    AttemptRef,
    Change,
    CleanWorktree,
    DrainWorker,
    Plan,
    ProcessRef,
    ReleaseWorker,
    RemoveWorker,
    ReplaceWorker,
    ResetBudget,
    StartController,
    StartWorker,
    StopController,
    StopWorker,
)
from reconciler.errors import ReconcilerError
from reconciler.model import RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.report.plan import describe
from reconciler.runtimes.base import Runtime
from reconciler.specmodel import PoolSpec
from reconciler.store.port import StorePort


class ProcessPort(Protocol):
    def kill(self, process: ProcessRef, grace: float) -> None:
        """Kill ``process`` and its tree (SIGTERM, SIGKILL after ``grace``) if it is
        still that process."""

    def request_stop(self, process: ProcessRef) -> None:
        """SIGTERM ``process`` alone if it is still that process."""


class WorktreePort(Protocol):
    def clean(self, path: Path) -> None:
        """Remove a task worktree, its uncommitted work committed to its branch first."""


@dataclass(frozen=True)
class Ports:
    """Every effect the executor has: the store, the runtimes, processes, git, the clock."""

    store: StorePort
    runtimes: Mapping[str, Runtime]
    processes: ProcessPort
    worktrees: WorktreePort
    clock: Callable[[], float]


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # guards that held
    problems: list[str] = field(default_factory=list)


def worker_argv(paths: PoolPaths, worker_id: str, generation: int) -> list[str]:
    """How a worker process is started: this Python, this package, argv only."""
    return [sys.executable, "-m", "reconciler", "--state-dir", str(paths.state_dir), "worker",
            "--pool", paths.name, "--id", worker_id, "--spec-id", str(generation)]


def controller_argv(paths: PoolPaths) -> list[str]:
    return [sys.executable, "-m", "reconciler", "--state-dir", str(paths.state_dir),
            "controller", "--pool", paths.name]


class Executor:
    def __init__(self, spec: PoolSpec, generation: int, paths: PoolPaths, ports: Ports, *,
                 progress: Callable[[str], None] = lambda _line: None) -> None:
        self.spec = spec
        self.generation = generation
        self.paths = paths
        self.ports = ports
        self.store = ports.store
        self.progress = progress

    def execute(self, plan: Plan) -> ExecutionReport:
        report = ExecutionReport()
        now = self.ports.clock()
        for step in plan.steps:
            self.store.set_health(step.worker, step.source, step.dest, step.reason, now=now)
        for action in plan.changes:
            line = describe(action)
            try:
                skipped = self._act(action, now)
            except ReconcilerError as exc:  # one worker's trouble must not stop the pass
                report.problems.append(f"{line}: {exc.one_line()}")
                continue
            if skipped:
                report.skipped.append(f"{line}: not done, {skipped}")
            else:
                report.done.append(line)
                self.progress(line)
        return report

    def _act(self, action: Change, now: float) -> str | None:
        """Carry out one action; return why it was skipped, if its guard held."""
        match action:
            case StartWorker(worker=worker):
                self._start(worker, restarted=False, counted=False, reason="",
                            reset_budget="a fresh start", now=now)
            case ReplaceWorker(worker=worker, unless_heartbeat_after=after):
                if after is not None:
                    beat = self.store.worker_heartbeat(worker)
                    if beat is not None and beat > after:
                        return "it heartbeat since it was observed"
                self._end(worker, action.instance, action.attempts, action.reason,
                          counted=action.counted, now=now)
                self._start(worker, restarted=True, counted=action.counted,
                            reason=action.reason, reset_budget=action.reset_budget, now=now)
            case DrainWorker(worker=worker, instance=instance):
                self.store.request_drain(worker, action.reason, now=now)
                if instance is not None:
                    self.ports.runtimes[instance.runtime].request_stop(instance)
            case StopWorker(worker=worker) | RemoveWorker(worker=worker):
                counted = action.counted if isinstance(action, StopWorker) else True
                self._end(worker, action.instance, action.attempts, action.reason,
                          counted=counted, now=now)
                self.store.mark_worker_removed(worker, action.reason, now=now)
            case ReleaseWorker(worker=worker):
                self._end(worker, action.instance, action.attempts, action.reason,
                          counted=True, now=now)
            case ResetBudget(worker=worker, reason=reason):
                self.store.reset_restart_budget(worker, reason, now=now)
            case CleanWorktree(path=path):
                self.ports.worktrees.clean(Path(path))
            case StartController(hung=hung):
                self._start_controller(hung, now)
            case StopController(process=process):
                self.store.request_controller_stop(now=now)
                if process is not None:
                    self.ports.processes.request_stop(process)
            case _:
                raise TypeError(f"no executor case for {action!r}")
        return None

    def _start_controller(self, hung: ProcessRef | None, now: float) -> None:
        """Always a detached process, whatever the workers' runtime: a controller inside
        the pool's tmux server would die with it, and then nothing would restore it."""
        if hung is not None:  # it holds the lock but no longer heartbeats
            self.ports.processes.kill(hung, 1.0)
        started = self.ports.runtimes["process"].start(CONTROLLER, controller_argv(self.paths))
        # recorded now, so the next pass does not start another before this one is up
        self.store.record_controller_launch(started.pid, started.create_time, now=now)

    def _start(self, worker_id: str, *, restarted: bool, counted: bool, reason: str,
               reset_budget: str | None, now: float) -> None:
        runtime = self.ports.runtimes[self.spec.runtime]
        self.store.register_worker(
            worker_id, runtime=runtime.name, pid=None, pid_create_time=None,
            spec_id=self.generation, template_hash=self.spec.template_hash(),
            template_digests=self.spec.template_digests(), restarted=restarted,
            tmux_socket=self.spec.tmux_socket if runtime.name == "tmux" else None,
            counted=counted, reason=reason, reset_budget=reset_budget is not None,
            budget_reason=reset_budget, now=now)
        started = runtime.start(worker_id, worker_argv(self.paths, worker_id, self.generation))
        self.store.set_worker_process(worker_id, started.pid, started.create_time)

    def _end(self, worker_id: str, instance: RuntimeInstance | None,
             attempts: tuple[AttemptRef, ...], reason: str, *, counted: bool,
             now: float) -> None:
        """Remove what is left of a worker, kill the agents of its attempts, requeue their
        tasks (using up a try if ``counted``), then clean their worktrees."""
        grace = self.spec.worker.stop_grace
        if instance is not None:
            self.ports.runtimes[instance.runtime].remove(worker_id, instance, grace)
            if instance.handle is None:  # no window to clear: only its pid is left to forget
                self.store.forget_worker_process(worker_id)
        for attempt in attempts:
            # the agent outlives its dead worker (it has a session of its own); its start
            # time tells it apart from an unrelated process that got the same pid since
            if attempt.agent is not None:
                self.ports.processes.kill(attempt.agent, grace)
        self.store.requeue_attempts_of(worker_id, f"worker {worker_id}: {reason}",
                                       consume=counted, policy=self.spec.retry_policy, now=now)
        for attempt in attempts:
            if attempt.worktree is not None:
                self.ports.worktrees.clean(Path(attempt.worktree))
