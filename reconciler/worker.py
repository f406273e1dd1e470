"""The worker process: heartbeat, claim, prepare a worktree, run, finish, clean up.

A worker runs the spec it was started with (``--spec-id``), so what ``diff``
showed is what runs; a changed spec replaces workers instead of mutating them.
SIGTERM (or a drain request in the store) means "finish the current task, then
exit": a graceful stop never abandons work.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from types import FrameType

from reconciler import pending
from reconciler.attempt import AttemptRunner
from reconciler.controllerwatch import ControllerWatch
from reconciler.crashlog import enable_crash_log
from reconciler.errors import ReconcilerError
from reconciler.log import log_to, logger
from reconciler.model import Claim
from reconciler.paths import PoolPaths
from reconciler.specmodel import PoolSpec, spec_from_document
from reconciler.store.sqlite import Store
from reconciler.wakeup import Bell, ring_controller, worker_bell

# An idle worker sleeps until its bell rings (tasks added or requeued), a queued task's
# backoff ends, or this long has passed: a lost ring costs latency, never a task.
IDLE_RECHECK_SECONDS = 5.0
class Worker:
    def __init__(self, paths: PoolPaths, worker_id: str, spec: PoolSpec, store: Store) -> None:
        self.paths = paths
        self.worker_id = worker_id
        self.spec = spec
        self.store = store
        self.stop = threading.Event()  # claim no new task
        self.cancel = threading.Event()  # abandon the current task
        self._exited = threading.Event()  # the main loop has ended
        self._claim: Claim | None = None
        self._runner: AttemptRunner | None = None  # the current attempt's
        self._claim_lock = threading.Lock()
        self._bell: Bell | None = None  # rung when tasks are added, or to stop waiting

    def request_stop(self) -> None:
        """Claim no new task (finish the current one); safe from a signal handler."""
        self.stop.set()
        if self._bell is not None:
            self._bell.ring()

    @property
    def lease_seconds(self) -> float:
        return self.spec.health.dead_after

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        self.store.set_worker_state(self.worker_id, "idle", pid=os.getpid())
        logger.info("{} started (pid {}), pool {}", self.worker_id, os.getpid(), self.spec.name)
        bell = self._bell = Bell(worker_bell(self.paths.root, self.worker_id))
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop.is_set():
                if pending.flush(self.paths.root, self.store, self.spec.retry_policy):
                    self.stop.wait(1.0)  # a kept result first: no new task before it is in
                    continue
                try:
                    claim = self.store.claim_task(self.worker_id, self.lease_seconds)
                except ReconcilerError as exc:  # e.g. the store locked by a stuck process
                    logger.warning("cannot claim: {}; retrying", exc.one_line())
                    self.stop.wait(1.0)
                    continue
                if claim is None:
                    self._wait_for_work(bell)
                    continue
                ring_controller(self.paths.root)  # its health changes: working
                runner = AttemptRunner(self.paths, self.spec, self.store, self.worker_id,
                                       claim, self.cancel)
                with self._claim_lock:
                    self._claim, self._runner = claim, runner
                    self.cancel.clear()
                try:
                    runner.run()
                finally:
                    with self._claim_lock:
                        self._claim = self._runner = None
                ring_controller(self.paths.root)  # idle again
        finally:
            self._exited.set()
            bell.close(unlink=True)
        logger.info("{} stopping: no new tasks will be claimed", self.worker_id)
        try:
            pending.flush(self.paths.root, self.store, self.spec.retry_policy)
            self.store.mark_worker_exited(self.worker_id, 0)
        except ReconcilerError as exc:  # the controller will see the exit from outside
            logger.error("{} could not record its exit: {}", self.worker_id, exc.one_line())
        return 0

    def _wait_for_work(self, bell: Bell) -> None:
        """Sleep until a ring (tasks added or requeued, or a stop), the moment a queued
        task becomes claimable, or ``IDLE_RECHECK_SECONDS``: no polling of the queue."""
        now = time.time()
        timeout = IDLE_RECHECK_SECONDS
        try:
            due = self.store.next_claim_at(now)
        except ReconcilerError:
            due = None
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        if not self.stop.is_set():
            select.select([bell], [], [], timeout)
        bell.clear()

    def _heartbeat_loop(self) -> None:
        """Heartbeat every interval until the worker exits (a drain does not stop it:
        the lease of the task being finished must stay alive)."""
        store = Store(self.paths.store)  # its own connection: never shares a cursor
        announced = False
        watch = ControllerWatch(self.paths, self.spec)
        try:
            while True:
                with self._claim_lock:
                    claim, runner = self._claim, self._runner
                try:
                    drain, cancel = store.heartbeat(
                        self.worker_id, claim, self.lease_seconds,
                        last_output_at=runner.last_output if runner is not None else None)
                    if not announced:  # the first beat: the controller records it is up
                        announced = True
                        ring_controller(self.paths.root)
                except ReconcilerError as exc:  # keep beating: a missed beat is not fatal
                    logger.warning("heartbeat failed: {}; retrying", exc.one_line())
                    drain = cancel = False
                if drain:
                    self.request_stop()
                try:
                    watch.check(store)
                except Exception as exc:  # never the heartbeat: the next beat looks again
                    logger.warning("cannot check the controller: {}: {}",
                                   type(exc).__name__, exc)
                with self._claim_lock:
                    # the answer is about the claim it was asked for: a late "lease lost"
                    # for a finished attempt must not cancel the next one
                    if cancel and claim is not None and self._claim is claim:
                        self.cancel.set()
                if self._exited.wait(self.spec.health.heartbeat_interval):
                    return
        finally:
            watch.close(store)
            store.close()


def main(paths: PoolPaths, worker_id: str, spec_id: int) -> int:
    """Entry point of ``reconcile worker`` (started by the executor, not by hand)."""
    store = Store(paths.store)
    spec = spec_from_document(store.spec_document(spec_id))
    log_to(sys.stderr, "{time} " + worker_id + " {level} {message}", level="INFO",
           replace=True)
    # a fatal signal (SIGBUS on a store's mapped -shm) or an uncaught error leaves its
    # report in the worker's log, not only on a terminal nobody watches
    log = enable_crash_log(paths.logs / f"{worker_id}.log", who=worker_id)
    log_to(log, "{time} {level} {message}", time="timestamp")
    worker = Worker(paths, worker_id, spec, store)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("{} received {}: finishing the current task, then exiting",
                    worker_id, signal.Signals(signum).name)
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return worker.run()
