"""The controller: a loop over ``operations.controller_pass`` that keeps a pool converged.

It runs a pass on every change it notices in the store (``PRAGMA
data_version``) and at least every ``controller.interval``.  Every pass
re-observes everything (level-triggered) and works toward the newest applied
generation, read under the pool lock, so ``apply``, ``delete`` and the
controller can take turns at the lock without undoing each other.

A fault of the store or the disk (busy, full, read-only, I/O errors) never
ends the controller: the pass fails with one log line, the next one waits
with a growing backoff (up to ``FAULT_BACKOFF_MAX``), and the controller keeps
its lock and resumes as soon as the store works again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from types import FrameType

from loguru import logger

from reconciler.actions import Plan, target, verb
from reconciler.errors import LockHeldError, ReconcilerError
from reconciler.lock import take_lock
from reconciler.operations import MIN_PASS_GAP, apply, controller_pass
from reconciler.pool import Pool
from reconciler.proctree import create_time_of
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store

WAKE_CHECK_SECONDS = 0.1
FAULT_BACKOFF_FIRST = 0.5
FAULT_BACKOFF_MAX = 10.0


class Controller:
    """The loop behind ``reconcile controller``: one per pool (its lock says so)."""

    def __init__(self, pool: Pool, *, apply_first: bool = False) -> None:
        self.pool = pool
        self.apply_first = apply_first
        self.stop = threading.Event()
        self.interval = pool.spec.controller_interval if pool.spec else 1.0

    def run(self) -> int:
        paths = self.pool.paths
        paths.create()
        fd = take_lock(paths.controller_lock, 2.0)
        if fd is None:
            logger.info("a controller already runs for pool {}; nothing to do", paths.name)
            return 0
        opened = self._open_store()
        if opened is None:  # stopped while the store could not be opened
            os.close(fd)
            return 0
        store: StorePort = opened
        if self.apply_first:  # registered and holding the lock: apply starts no other
            store.register_controller(os.getpid(), create_time_of(os.getpid()))
            apply(self.pool)
        info = store.controller()
        if info is not None and info.stop_requested:
            logger.info("pool {} was deleted; `reconcile apply` it first", paths.name)
            store.close()
            os.close(fd)
            return 0
        if not self.apply_first:  # already registered before applying
            store.register_controller(os.getpid(), create_time_of(os.getpid()))
        logger.info("controller of pool {} started (pid {})", paths.name, os.getpid())
        try:
            self._loop(store)
        finally:
            store.close()
            os.close(fd)
        logger.info("controller of pool {} stopped", paths.name)
        return 0

    def _open_store(self) -> Store | None:
        """The pool's store, waiting out faults (a full or read-only disk) until it opens;
        None if the controller is stopped meanwhile."""
        backoff = FAULT_BACKOFF_FIRST
        while True:
            try:
                return Store(self.pool.paths.store)
            except (ReconcilerError, sqlite3.Error, OSError) as exc:
                logger.error("cannot open the store: {}; retrying in {:.1f}s",
                             _one_line(exc), backoff)
            if self.stop.wait(backoff):
                return None
            backoff = min(backoff * 2, FAULT_BACKOFF_MAX)

    def _loop(self, store: StorePort) -> None:
        last_pass = 0.0
        seen_version = -1
        skipped = 0
        failures = 0
        while not self.stop.is_set():
            wait = WAKE_CHECK_SECONDS
            try:
                version = store.data_version()
                due = time.monotonic() - last_pass >= self.interval
                woken = version != seen_version and time.monotonic() - last_pass >= MIN_PASS_GAP
                if due or woken:
                    if store.controller_heartbeat():
                        return  # delete asked us to stop
                    skipped = 0 if self._pass(store) else skipped + 1
                    if skipped and skipped % 20 == 0:
                        logger.warning("{} passes skipped: the pool lock is held by another "
                                       "command ({})", skipped, self.pool.paths.lock)
                    last_pass = time.monotonic()
                    seen_version = store.data_version()
                    if failures:
                        logger.info("store works again after {} failed pass(es); resuming",
                                    failures)
                        failures = 0
            except (ReconcilerError, sqlite3.Error, OSError) as exc:
                # The store busy, full, read-only or failing: log, back off, never die.
                failures += 1
                wait = min(FAULT_BACKOFF_FIRST * 2 ** (failures - 1), FAULT_BACKOFF_MAX)
                logger.error("pass failed: {}; retrying in {:.1f}s", _one_line(exc), wait)
                last_pass = time.monotonic()
            self.stop.wait(wait)

    def _pass(self, store: StorePort) -> bool:
        """One pass; False when another command held the pool lock (retried next time)."""
        busy = False

        def announce(plan: Plan) -> None:
            nonlocal busy
            if plan.changes:
                busy = True
                store.set_controller_busy("; ".join(f"{verb(a)} {target(a)}"
                                                    for a in plan.changes))

        try:
            result = controller_pass(self.pool, store, on_plan=announce)
        except LockHeldError:
            return False
        finally:
            if busy:
                store.set_controller_busy(None)
        if result is None:
            return True
        self.interval = result.spec.controller_interval  # the newest generation's
        for step in result.plan.steps:
            logger.info("{}", step.describe())
        for line in result.report.done:
            logger.info("{}", line)
        for line in result.report.skipped:
            logger.info("{}", line)
        for problem in result.report.problems:
            logger.warning("{}", problem)
        return True


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ReconcilerError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def run_controller(pool: Pool, *, apply_first: bool = False) -> int:
    """Entry point of ``reconcile controller``: run until SIGTERM/SIGINT or ``delete``."""
    controller = Controller(pool, apply_first=apply_first)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("received {}: stopping after this pass", signal.Signals(signum).name)
        controller.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return controller.run()
