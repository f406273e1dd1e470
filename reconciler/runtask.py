"""``reconcile run-task --pool P --task ID --attempt N``: one attempt of one task, in
the foreground, with the same attempt runner a worker uses.

This is the command the pueue runtime hands to pueue for each task, so that the
worktree, setup, the agent, hooks, the rescue of uncommitted work, the agent's
report and the recorded result are the tmux worker's, line for line.  It takes the
attempt's lease only if attempt ``N`` is the task's next one and the task is queued
and due (pueue may start a task twice, after ``restart``: the second start finds the
attempt taken and changes nothing), keeps the lease alive with heartbeats while the
attempt runs, and exits 0 when it succeeded, 1 when it did not, 2 when it could not
take the attempt.  SIGTERM or SIGINT abandon the attempt as ``task cancel`` does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from reconciler.attempt import AttemptRunner
from reconciler.errors import ReconcilerError
from reconciler.log import logger
from reconciler.model import Claim
from reconciler.paths import PoolPaths
from reconciler.pool import DELETED_KEY
from reconciler.specmodel import spec_from_document
from reconciler.store.sqlite import Store
from reconciler.wakeup import ring_controller

NOT_TAKEN = 2  # the exit status when the attempt was not ours to run


def runner_id() -> str:
    """Whose attempt it is: pueue's worker slot (``PUEUE_WORKER_ID``, from 0) as ``w-N``,
    or ``run-task`` when started by hand."""
    slot = os.environ.get("PUEUE_WORKER_ID", "")
    return f"w-{int(slot) + 1}" if slot.isdigit() else "run-task"


def run_task(paths: PoolPaths, task_id: int, attempt: int) -> int:
    """Run attempt ``attempt`` of task ``task_id`` under the newest applied spec."""
    with Store(paths.store) as store:
        latest = store.latest_spec()
        if latest is None:
            raise ReconcilerError(f"pool {paths.name} was never applied",
                                  hint="reconcile apply -f workers.yaml first")
        spec = spec_from_document(latest[1])
        who = runner_id()
        deleted = store.deleting() is not None or bool(store.meta_value(DELETED_KEY))
        claim: Claim | str = "the pool was deleted (apply it again to run its tasks)" \
            if deleted else store.claim_task_attempt(task_id, attempt, who,
                                                     spec.health.dead_after)
        if isinstance(claim, str):
            print(f"error: not running attempt {attempt} of task {task_id}: {claim}",
                  file=sys.stderr)
            return NOT_TAKEN
        ring_controller(paths.root)  # its slot is working now
        runner = AttemptRunner(paths, spec, store, who, claim)
        keeper = LeaseKeeper(paths, who, claim, runner, spec.health.dead_after,
                             spec.health.heartbeat_interval)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            del frame
            logger.info("received {}: abandoning task {}", signal.Signals(signum).name,
                        task_id)
            runner.cancel.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        keeper.start()
        try:
            outcome = runner.run()
        finally:
            keeper.stop()
            ring_controller(paths.root)  # a slot is free: the next task can be handed on
    return 0 if outcome == "succeeded" else 1


class LeaseKeeper:
    """Heartbeats for one attempt, on a thread with its own store connection: the lease
    stays alive while the agent runs, and a cancel (``task cancel``, a lease taken
    away) reaches the runner."""

    def __init__(self, paths: PoolPaths, who: str, claim: Claim, runner: AttemptRunner,
                 lease_seconds: float, every: float) -> None:
        self.paths, self.who, self.claim, self.runner = paths, who, claim, runner
        self.lease_seconds, self.every = lease_seconds, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(10.0)

    def _beat(self) -> None:
        with Store(self.paths.store) as store:
            while not self._done.wait(self.every):
                try:
                    _, cancel = store.heartbeat(self.who, self.claim, self.lease_seconds,
                                                last_output_at=self.runner.last_output)
                except ReconcilerError as exc:  # a missed beat is not fatal: beat again
                    logger.warning("heartbeat failed: {}; retrying", exc.one_line())
                    continue
                if cancel:
                    self.runner.cancel.set()
