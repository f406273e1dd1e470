"""Carry out a ``Plan`` through the runtime ports and the store.

The executor decides nothing: the planner said what and why.  It does the
immediate actions first (clear exited windows, replace dead workers, start
missing ones), then the graceful ones: every worker to stop or roll is asked
to drain at once (store flag + SIGTERM), and each is replaced or removed as
soon as its own current task has finished.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.model import Action, ActionKind, Observation, Plan, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.process import ProcessRuntime
from reconciler.runtimes.tmux import TmuxRuntime
from reconciler.spec import PoolSpec
from reconciler.store.sqlite import Store

DRAIN_POLL_SECONDS = 0.2


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)


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
            instance = observation.instance(action.worker_id)
            if action.kind in (ActionKind.REMOVE, ActionKind.STOP):
                self._retire(action, instance)
            elif action.kind is ActionKind.RESTART:
                self._clear(action, instance)
                self._start(action.worker_id, restarted=True)
            else:
                self._start(action.worker_id, restarted=False)
            report.done.append(action.describe())
        if graceful:
            self._drain_then_finish(graceful, observation, report)
        return report

    # ------------------------------------------------------------------ steps

    def _start(self, worker_id: str, *, restarted: bool) -> None:
        runtime = self.runtimes[self.spec.runtime]
        started = runtime.start(worker_id, worker_argv(self.paths, worker_id, self.spec_id))
        self.store.register_worker(
            worker_id, runtime=runtime.name, pid=started.pid,
            pid_create_time=started.create_time, spec_id=self.spec_id,
            template_hash=self.spec.template_hash(),
            template_digests=self.spec.template_digests(), restarted=restarted)

    def _clear(self, action: Action, instance: RuntimeInstance | None) -> None:
        """Remove what is left of a worker and requeue whatever it was running."""
        if instance is not None:
            self.runtimes[instance.runtime].remove(action.worker_id, instance,
                                                   self.spec.worker.stop_grace)
        self.store.requeue_attempts_of(action.worker_id,
                                       f"worker {action.worker_id} replaced: {action.reason}")

    def _retire(self, action: Action, instance: RuntimeInstance | None) -> None:
        self._clear(action, instance)
        self.store.mark_worker_removed(action.worker_id, action.reason)

    def _drain_then_finish(self, actions: list[Action], observation: Observation,
                           report: ExecutionReport) -> None:
        waiting: dict[str, tuple[Action, RuntimeInstance | None]] = {}
        for action in actions:
            instance = observation.instance(action.worker_id)
            self.store.request_drain(action.worker_id, action.reason)
            if instance is not None:
                self.runtimes[instance.runtime].request_stop(instance)
            waiting[action.worker_id] = (action, instance)
            self.progress(f"waiting for {action.worker_id} to finish its current task")
        while waiting:
            for worker_id, (action, instance) in list(waiting.items()):
                if instance is not None and self.runtimes[instance.runtime].is_running(instance):
                    continue
                del waiting[worker_id]
                if instance is not None:  # it has exited: never signal that pid again
                    instance = dataclasses.replace(instance, alive=False)
                if action.kind is ActionKind.RESTART:
                    self._clear(action, instance)
                    self._start(worker_id, restarted=True)
                else:
                    self._retire(action, instance)
                report.done.append(action.describe())
                verb = "replaced" if action.kind is ActionKind.RESTART else "stopped"
                self.progress(f"{worker_id} {verb}")
            if waiting:
                time.sleep(DRAIN_POLL_SECONDS)
