"""Carry out a ``Plan``: one ``match`` over the action types, effects through ports.

The executor decides nothing: the planner said what, why and how (which
processes to kill, whether a restart counts, whether a budget starts afresh).
It never waits out a grace period: a graceful stop is a drain request (store
flag + SIGTERM), and a later pass sees the worker exit, or overrun
``stopGrace``; what it signals in a pass it waits for once, briefly
(``SETTLE_SECONDS``), all together.  The checks it makes are the ones an
action carries: the guard of a hung worker's restart, re-read right before the
kill, and that an attempt's processes are gone before its task is requeued.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.actions import (
    CONTROLLER,
    AttemptRef,
    Change,
    CleanWorktree,
    DrainWorker,
    KillPueueTask,
    KillStrays,
    Plan,
    ReleaseWorker,
    RemovePueueTasks,
    RemoveWorker,
    ReplaceWorker,
    ResetBudget,
    RestartPueueTask,
    SetPueueGroup,
    StartController,
    StartPueueDaemon,
    StartWorker,
    StopController,
    StopWorker,
    SubmitTask,
)
from reconciler.errors import ReconcilerError
from reconciler.model import ProcessRef, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.pool import PUEUE_DOWN_KEY
from reconciler.pueuestatus import PueueState
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

    def signal(self, processes: tuple[ProcessRef, ...], signal: str) -> None:
        """Send ``signal`` (``SIGTERM`` or ``SIGKILL``) to each of ``processes`` (and the
        group each leads) that is still that process; never waits."""

    def wait_gone(self, processes: tuple[ProcessRef, ...], timeout: float) -> None:
        """Wait until all of ``processes`` have exited, or ``timeout`` has passed."""

    def alive(self, processes: tuple[ProcessRef, ...]) -> tuple[ProcessRef, ...]:
        """Those of ``processes`` that still run."""

    def of_attempts(self, attempt_ids: tuple[int, ...]) -> tuple[ProcessRef, ...]:
        """The live processes carrying these attempts' marks, looked for now (one that a
        dying agent forked after the pass observed the host is among them)."""


class PueuePort(Protocol):
    """pueue's command line (``reconciler.runtimes.pueue.PueueClient``)."""

    def start_daemon(self) -> None:
        """``pueued -d``, returning once ``pueue status`` answers."""

    def add_group(self, group: str, parallel: int) -> None: ...

    def set_parallel(self, group: str, parallel: int) -> None: ...

    def pause_group(self, group: str) -> None: ...

    def start_group(self, group: str) -> None: ...

    def add_attempt(self, *, group: str, pool: str, task_id: int, attempt: int,
                    priority: int, state_dir: Path, cwd: Path) -> int:
        """Queue ``reconcile run-task`` for one attempt; pueue's task id."""

    def kill(self, ids: Sequence[int]) -> None: ...

    def remove(self, ids: Sequence[int]) -> None: ...

    def restart_in_place(self, ids: Sequence[int]) -> None: ...

    def status(self) -> PueueState:
        """One ``pueue status --json``."""


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
    pueue: PueuePort | None = None  # runtime: pueue only


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # guards that held
    problems: list[str] = field(default_factory=list)


# ``-P``: the launch directory is never on the import path, so a ``reconciler/`` folder
# there (the parent of a clone, often ``~``) cannot shadow this package; PYTHONPATH and
# the user's site-packages still count (``-I`` would drop them).  The runtimes start
# children in the pool's own directory, whatever the caller's.
PYTHON = (sys.executable, "-P")


def worker_argv(paths: PoolPaths, worker_id: str, generation: int) -> list[str]:
    """How a worker process is started: this Python, this package, argv only."""
    return [*PYTHON, "-m", "reconciler", "--state-dir", str(paths.state_dir.absolute()),
            "worker", "--pool", paths.name, "--id", worker_id, "--spec-id", str(generation)]


def controller_argv(paths: PoolPaths) -> list[str]:
    """The controller apply starts in the background (a foreground one takes over)."""
    return [*PYTHON, "-m", "reconciler", "--state-dir", str(paths.state_dir.absolute()),
            "controller", "--pool", paths.name, "--detached"]


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
        """Carry out ``plan`` in two phases, so no grace period is waited for one
        process after another: first everything that must stop is signalled (the
        guards checked once), then one short wait for all of them, then the
        bookkeeping (requeues, starts) of what is confirmed gone."""
        report = ExecutionReport()
        now = self.ports.clock()
        for step in plan.steps:
            self.store.set_health(step.worker, step.source, step.dest, step.reason, now=now)
        todo: list[Change] = []
        for action in plan.changes:
            guard = self._guard(action)
            if guard:
                report.skipped.append(f"{describe(action)}: not done, {guard}")
            else:
                todo.append(action)
        self._stop_processes(todo, now, report)
        for action in todo:
            line = describe(action)
            try:
                waiting = self._act(action, now)
            except ReconcilerError as exc:  # one worker's trouble must not stop the pass
                report.problems.append(f"{line}: {exc.one_line()}")
                continue
            if waiting:
                report.skipped.append(f"{line}: not done yet, {waiting}")
            else:
                report.done.append(line)
                self.progress(line)
        return report

    def _guard(self, action: Change) -> str | None:
        """Why ``action`` must not be done after all (its guard held), if it must not."""
        if isinstance(action, ReplaceWorker) and action.unless_heartbeat_after is not None:
            beat = self.store.worker_heartbeat(action.worker)
            if beat is not None and beat > action.unless_heartbeat_after:
                return "it heartbeat since it was observed"
        return None

    def _stop_processes(self, actions: list[Change], now: float,
                        report: ExecutionReport) -> None:
        """Phase one: end the attempts being taken away (a fence: their workers can no
        longer record a result), kill the live workers being ended, signal every
        process of those attempts and every stray, then wait once for all of them."""
        ending = [a for action in actions for a in _ended_attempts(action) if a.signal]
        first = [a.attempt_id for a in ending if a.signal == "SIGTERM"]
        if first:
            self.store.mark_attempts_signalled(first, now=now)
        for action in actions:
            instance = _ended_instance(action)
            if instance is None:
                continue
            if isinstance(action, StopWorker) and instance.alive:
                # a planned stop: its health reads stopped, never dead, while its task's
                # processes are still exiting
                self.store.request_drain(action.worker, action.reason, now=now)
            try:
                self.ports.runtimes[instance.runtime].remove(action_worker(action), instance,
                                                             self.spec.worker.stop_grace)
            except ReconcilerError as exc:  # one worker's trouble must not stop the pass
                report.problems.append(f"{describe(action)}: {exc.one_line()}")
        signalled: list[ProcessRef] = []
        for attempt in ending:
            assert attempt.signal is not None
            self.ports.processes.signal(attempt.processes, attempt.signal)
            signalled += attempt.processes
            if attempt.signal == "SIGKILL":
                self.store.add_event("attempt.killing", f"its {len(attempt.processes)} "
                                     "process(es) outlived stopGrace after SIGTERM: SIGKILL",
                                     task_id=attempt.task_id, now=now,
                                     fields={"attempt_id": attempt.attempt_id,
                                             "signal": "SIGKILL"})
        for action in actions:
            if isinstance(action, KillStrays):
                self.ports.processes.signal(action.processes, "SIGKILL")
                signalled += action.processes
        if signalled:
            self.ports.processes.wait_gone(tuple(signalled), SETTLE_SECONDS)

    def _act(self, action: Change, now: float) -> str | None:
        """Carry out one action; return what it still waits for, if it is not done."""
        match action:
            case StartWorker(worker=worker):
                self._start(worker, restarted=False, counted=False, reason="",
                            reset_budget="a fresh start", now=now)
            case ReplaceWorker(worker=worker):
                waiting = self._end(worker, action.instance, action.attempts, action.reason,
                                    counted=action.counted, now=now)
                if waiting:
                    return waiting
                self._start(worker, restarted=True, counted=action.counted,
                            reason=action.reason, reset_budget=action.reset_budget, now=now)
            case DrainWorker(worker=worker, instance=instance):
                self.store.request_drain(worker, action.reason, now=now)
                if instance is not None:
                    self.ports.runtimes[instance.runtime].request_stop(instance)
            case StopWorker(worker=worker) | RemoveWorker(worker=worker):
                counted = action.counted if isinstance(action, StopWorker) else True
                waiting = self._end(worker, action.instance, action.attempts, action.reason,
                                    counted=counted, now=now)
                if waiting:
                    return waiting
                self.store.mark_worker_removed(worker, action.reason, now=now)
            case ReleaseWorker(worker=worker):
                return self._end(worker, action.instance, action.attempts, action.reason,
                                 counted=action.counted, now=now)
            case KillStrays(processes=processes):
                left = self.ports.processes.alive(processes)
                if left:
                    return f"{len(left)} process(es) still exiting"
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
            case StartPueueDaemon() | SetPueueGroup() | SubmitTask() | KillPueueTask() | \
                    RestartPueueTask() | RemovePueueTasks():
                self._pueue_act(action, now)
            case _:
                raise TypeError(f"no executor case for {action!r}")
        return None

    def _pueue_act(self, action: Change, now: float) -> None:
        """What a pueue action asks of pueue (and the store's record of it)."""
        pueue = self.ports.pueue
        if pueue is None:
            raise ReconcilerError("this pass has no pueue to act on (runtime is not pueue)")
        match action:
            case StartPueueDaemon():
                if self.store.meta_value(PUEUE_DOWN_KEY) == "":  # it ran before: an alert
                    self.store.set_meta_value(PUEUE_DOWN_KEY, str(now))
                    self.store.add_event("pueue.down", "the pueue daemon does not answer; "
                                         "starting it (pueued -d)", now=now)
                pueue.start_daemon()
                note_pueue_up(self.store, now)
            case SetPueueGroup(group=group):
                if action.create:
                    try:
                        pueue.add_group(group, action.parallel or 1)
                    except ReconcilerError:  # a daemon just started may have it already
                        if group not in pueue.status().groups:
                            raise
                        pueue.set_parallel(group, action.parallel or 1)
                elif action.parallel is not None:
                    pueue.set_parallel(group, action.parallel)
                if action.running is False:
                    pueue.pause_group(group)
                elif action.running:
                    pueue.start_group(group)
            case SubmitTask():
                pueue_id = pueue.add_attempt(
                    group=action.group, pool=self.spec.name, task_id=action.task_id,
                    attempt=action.attempt, priority=action.priority,
                    state_dir=self.paths.state_dir.absolute(), cwd=self.paths.root)
                self.store.add_event("pueue.queued", f"attempt {action.attempt} handed to "
                                     f"pueue as task {pueue_id}", task_id=action.task_id,
                                     now=now, fields={"pueue_id": pueue_id,
                                                      "attempt": action.attempt})
            case KillPueueTask(pueue_id=pueue_id, task_id=task_id):
                pueue.kill([pueue_id])  # first: a kill that failed is tried again
                if action.attempt_id is not None:
                    # it ends by our hand (it uses up a try, and its wrapper can no longer
                    # record a result); what it started gets SIGTERM now, SIGKILL after
                    # stopGrace, as a worker's attempt does
                    self.store.mark_attempts_signalled([action.attempt_id], now=now)
                    self.ports.processes.signal(
                        self.ports.processes.of_attempts((action.attempt_id,)), "SIGTERM")
                self.store.add_event("pueue.killed", f"pueue task {pueue_id}: "
                                     f"{action.reason}", task_id=task_id, now=now,
                                     fields={"pueue_id": pueue_id, "cause": action.cause})
            case RemovePueueTasks(pueue_ids=ids):
                pueue.remove(ids)
            case RestartPueueTask(pueue_id=pueue_id):
                pueue.restart_in_place([pueue_id])
                self.store.count_pueue_restart(pueue_id, action.created_at,
                                               f"pueue task {pueue_id}: {action.reason}",
                                               now=now)

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
        runtime = self.spec.runtime
        self.store.register_worker(
            worker_id, runtime=runtime, pid=None, pid_create_time=None,
            spec_id=self.generation, template_hash=self.spec.template_hash(),
            template_digests=self.spec.template_digests(), restarted=restarted,
            tmux_socket=self.spec.tmux_socket if runtime == "tmux" else None,
            counted=counted, reason=reason, reset_budget=reset_budget is not None,
            budget_reason=reset_budget, now=now)
        if runtime == "pueue":  # a slot of pueue's group: a record, no process of its own
            self.store.set_worker_state(worker_id, "idle")
            return
        started = self.ports.runtimes[runtime].start(
            worker_id, worker_argv(self.paths, worker_id, self.generation))
        self.store.set_worker_process(worker_id, started.pid, started.create_time)

    def _end(self, worker_id: str, instance: RuntimeInstance | None,
             attempts: tuple[AttemptRef, ...], reason: str, *, counted: bool,
             now: float) -> str | None:
        """Phase two for a worker being ended (phase one removed it and signalled its
        attempts' processes): once every one of them is confirmed gone, requeue their
        tasks (using up a try if ``counted``) and clean their worktrees.  Until then
        nothing is requeued, so a task never runs twice at once; return what it waits for.
        """
        if instance is not None and instance.handle is None:
            self.store.forget_worker_process(worker_id)  # no window to clear: only its pid
        left = [p for a in attempts for p in self.ports.processes.alive(a.processes)]
        if attempts and not left:
            left = list(self.ports.processes.of_attempts(tuple(a.attempt_id for a in attempts)))
        if left:
            tasks = ", ".join(str(a.task_id) for a in attempts)
            return (f"waiting for {len(left)} process(es) of task {tasks} to exit "
                    f"(SIGKILL once stopGrace, {self.spec.worker.stop_grace:g}s, is over)")
        self.store.requeue_attempts_of(worker_id, f"worker {worker_id}: {reason}",
                                       consume=counted, policy=self.spec.retry_policy, now=now,
                                       only=[a.attempt_id for a in attempts])
        for attempt in attempts:
            if attempt.worktree is not None:
                self.ports.worktrees.clean(Path(attempt.worktree))
        return None


SETTLE_SECONDS = 0.3  # the one wait of a pass for the processes it signalled


def note_pueue_up(store: StorePort, now: float) -> None:
    """Record that the pueue daemon answers: ``pueue.up`` if it had been down."""
    down_since = store.meta_value(PUEUE_DOWN_KEY)
    if down_since:
        store.add_event("pueue.up", "the pueue daemon answers again", now=now)
    if down_since != "":
        store.set_meta_value(PUEUE_DOWN_KEY, "")


def _ended_attempts(action: Change) -> tuple[AttemptRef, ...]:
    match action:
        case ReplaceWorker(attempts=attempts) | StopWorker(attempts=attempts) | \
                RemoveWorker(attempts=attempts) | ReleaseWorker(attempts=attempts):
            return attempts
    return ()


def _ended_instance(action: Change) -> RuntimeInstance | None:
    """The worker process or window an action takes away (a drain only asks)."""
    match action:
        case ReplaceWorker(instance=instance) | StopWorker(instance=instance) | \
                RemoveWorker(instance=instance) | ReleaseWorker(instance=instance):
            return instance
    return None


def action_worker(action: Change) -> str:
    match action:
        case ReplaceWorker(worker=worker) | StopWorker(worker=worker) | \
                RemoveWorker(worker=worker) | ReleaseWorker(worker=worker):
            return worker
    raise TypeError(f"not a worker-ending action: {action!r}")
