"""Reconcile passes, ``apply``, ``delete`` and the controller loop that keeps a pool converged.

A pass is observe → plan → execute under the pool lock; it never waits for
workers.  ``apply`` runs one pass (``--wait``: passes until converged), the
controller runs one on every change it notices in the store (``PRAGMA
data_version``) and at least every ``controller.interval``, and ``delete``
stops the controller, then runs passes of the delete plan until nothing is
left.  Every actor re-observes everything on every pass (level-triggered), so
several of them can take turns at the lock without stepping on each other.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from loguru import logger

from reconciler.errors import LockHeldError, PoolError, ReconcilerError
from reconciler.executor import ExecutionReport, Executor
from reconciler.lock import is_locked, pool_lock, take_lock
from reconciler.model import ActionKind, Observation, Plan
from reconciler.planner import plan, plan_delete, worker_ids
from reconciler.pool import Pool, applied_spec, observe_pool, preflight, spec_git_commit
from reconciler.proctree import create_time_of, kill_tree, process_matches
from reconciler.spec import PoolSpec
from reconciler.store.sqlite import Store

LOCK_TIMEOUT = 10.0
PASS_LOCK_TIMEOUT = 2.0
WAKE_CHECK_SECONDS = 0.1
MIN_PASS_GAP = 0.25
CONTROLLER_STOP_TIMEOUT = 10.0

PlanMaker = Callable[[Observation], Plan]


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    report: ExecutionReport
    spec_id: int
    recorded: bool
    remaining: Plan


def _record_spec(store: Store, spec: PoolSpec, summary: str) -> tuple[int, bool]:
    """The id of ``spec`` in the history, recording it if it is not the latest."""
    history = store.history()
    if history and history[-1].document_hash == spec.document_hash:
        return history[-1].id, False
    return store.record_applied_spec(
        source_path=str(spec.source_path) if spec.source_path else None,
        source_sha256=spec.source_sha256, git_commit=spec_git_commit(spec.source_path),
        document_hash=spec.document_hash, document=spec.document_json, summary=summary), True


@dataclass(frozen=True)
class PassResult:
    plan: Plan  # what the pass set out to do
    report: ExecutionReport  # what it did
    remaining: Plan  # what is still pending afterwards
    observation: Observation  # the world afterwards


def run_pass(pool: Pool, store: Store, spec_id: int, make_plan: PlanMaker, *,
             force: bool = False, progress: Callable[[str], None] = lambda _l: None,
             on_plan: Callable[[Plan], None] = lambda _p: None) -> PassResult:
    """One observe → plan → execute pass (the caller holds the pool lock).

    When it acted, the pass looks again: what is left is reported, and a
    cleaning-only step removes worktrees it orphaned (attempts it ended as
    lost).  When it did nothing, the world is as observed and is not looked at
    twice: that is the controller's steady state, once a second.
    """
    assert pool.spec is not None
    executor = Executor(pool.spec, spec_id, pool.paths, store, progress=progress, force=force)
    observation = observe_pool(pool, store)
    the_plan = make_plan(observation)
    on_plan(the_plan)
    report = executor.execute(the_plan, observation)
    if not report.done and not report.problems:
        return PassResult(the_plan, report, the_plan, observation)
    after = observe_pool(pool, store)
    remaining = make_plan(after)
    cleaning = Plan(remaining.pool, tuple(a for a in remaining.actions
                                          if a.kind is ActionKind.CLEAN))
    if not cleaning.empty:
        done = executor.execute(cleaning, after)
        report.done += done.done
        report.problems += done.problems
        after = observe_pool(pool, store)
        remaining = make_plan(after)
    return PassResult(the_plan, report, remaining, after)


def desired_plan(pool: Pool) -> PlanMaker:
    spec = pool.spec
    assert spec is not None
    return lambda observation: plan(spec, observation, time.time())


def apply(pool: Pool, *, progress: Callable[[str], None] = lambda _l: None,
          on_plan: Callable[[Plan], None] = lambda _p: None,
          lock_timeout: float = LOCK_TIMEOUT) -> ApplyResult:
    """Record ``pool.spec`` as desired and run one pass toward it, under the pool lock."""
    spec = pool.spec
    if spec is None:
        raise PoolError("apply needs the desired spec", hint="pass -f workers.yaml")
    preflight(spec)
    pool.paths.create()
    with pool_lock(pool.paths.lock, what="apply", timeout=lock_timeout):
        store = Store(pool.paths.store)
        try:
            store.clear_controller_stop()  # the pool is wanted (again)
            first = desired_plan(pool)(observe_pool(pool, store))
            spec_id, recorded = _record_spec(store, spec, first.summary())
            result = run_pass(pool, store, spec_id, desired_plan(pool), progress=progress,
                              on_plan=on_plan)
        finally:
            store.close()
    return ApplyResult(result.plan, result.report, spec_id, recorded, result.remaining)


def converged(pool: Pool, remaining: Plan, observation: Observation) -> bool:
    """Nothing left to do and every desired worker heartbeating since its start."""
    if not remaining.empty or pool.spec is None:
        return remaining.empty
    for worker_id in worker_ids(pool.spec.replicas):
        row = observation.worker(worker_id)
        if row is None or row.heartbeat_at is None or row.started_at is None \
                or row.heartbeat_at < row.started_at:
            return False
    return True


def converge(pool: Pool, *, timeout: float, make_plan: PlanMaker | None = None,
             force: bool = False, check: Callable[[Pool, Plan, Observation], bool] = converged,
             progress: Callable[[str], None] = lambda _l: None,
             on_tick: Callable[[Plan], None] = lambda _p: None) -> bool:
    """Run passes (each under the pool lock, shared fairly with the controller) until
    ``check`` holds; False if ``timeout`` runs out first."""
    make_plan = make_plan or desired_plan(pool)
    deadline = time.monotonic() + timeout
    store = Store(pool.paths.store)
    try:
        spec_id = store.latest_spec_id(pool.spec.document_hash) if pool.spec else None
        while True:
            try:
                with pool_lock(pool.paths.lock, what="apply --wait", timeout=PASS_LOCK_TIMEOUT):
                    result = run_pass(pool, store, spec_id or 0, make_plan, force=force,
                                      progress=progress)
                remaining, observation = result.remaining, result.observation
            except LockHeldError:  # another actor's pass: just look
                observation = observe_pool(pool, store)
                remaining = make_plan(observation)
            on_tick(remaining)
            if check(pool, remaining, observation):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(MIN_PASS_GAP)
    finally:
        store.close()


def delete(pool: Pool, *, force: bool = False, progress: Callable[[str], None] = lambda _l: None,
           lock_timeout: float = LOCK_TIMEOUT) -> ExecutionReport:
    """Stop the controller, then every worker (after its current task unless ``force``);
    the queue, logs and history stay."""
    spec = pool.spec
    if spec is None or not pool.paths.exists():
        raise PoolError(f"pool {pool.name!r} was never applied; nothing to delete")
    report = ExecutionReport()
    with pool_lock(pool.paths.lock, what="delete", timeout=lock_timeout):
        store = Store(pool.paths.store)
        try:
            # held until the end: no controller (not even one starting now) can run
            controller_fd = stop_controller(pool, store, progress)
        finally:
            store.close()
    try:
        done = converge(pool, timeout=spec.worker.stop_grace + 30, force=force,
                        make_plan=lambda o: plan_delete(spec, o, time.time()),
                        check=lambda _p, remaining, _o: remaining.empty, progress=progress)
        store = Store(pool.paths.store)
        try:
            store.add_event("pool.deleted", "every worker stopped" if done
                            else "some workers did not stop in time")
        finally:
            store.close()
    finally:
        os.close(controller_fd)
    if not done:
        report.problems.append("some workers did not stop in time; run delete --force")
    return report


# --------------------------------------------------------------------------- the controller


def stop_controller(pool: Pool, store: Store, progress: Callable[[str], None]) -> int:
    """Stop the pool's controller and return its lock, now held by the caller.

    The stop request is recorded first (a controller that starts meanwhile
    exits at once), the recorded process gets SIGTERM, then SIGKILL if it has
    not let go of the lock after ``CONTROLLER_STOP_TIMEOUT``.
    """
    lock = pool.paths.controller_lock
    running = is_locked(lock)
    store.request_controller_stop()
    info = store.controller()
    pid = info.pid if info and process_matches(info.pid, info.pid_create_time) else None
    if pid:
        os.kill(pid, signal.SIGTERM)
    fd = take_lock(lock, CONTROLLER_STOP_TIMEOUT)
    if fd is None and pid:
        kill_tree(pid, 1.0)
        fd = take_lock(lock, 5.0)
    if fd is None:
        raise PoolError("the controller of this pool does not stop",
                        hint=f"kill it by hand (pid {pid or '?'}), then retry")
    if running:
        progress("controller stopped")
    return fd


class Controller:
    """The loop behind ``reconcile controller``: one per pool (its lock says so)."""

    def __init__(self, pool: Pool, *, apply_first: bool = False) -> None:
        self.pool = pool
        self.apply_first = apply_first
        self.stop = threading.Event()

    def run(self) -> int:
        paths = self.pool.paths
        paths.create()
        fd = take_lock(paths.controller_lock, 2.0)
        if fd is None:
            logger.info("a controller already runs for pool {}; nothing to do", paths.name)
            return 0
        store = Store(paths.store)
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

    def _loop(self, store: Store) -> None:
        last_pass = 0.0
        seen_version = -1
        skipped = 0
        while not self.stop.is_set():
            try:
                version = store.data_version()
                due = time.monotonic() - last_pass >= self._interval()
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
            except ReconcilerError as exc:  # the store locked or unreadable: retry, never die
                logger.error("pass failed: {}; retrying", exc.one_line())
                last_pass = time.monotonic()
            self.stop.wait(WAKE_CHECK_SECONDS)

    def _interval(self) -> float:
        return self.pool.spec.controller_interval if self.pool.spec else 1.0

    def _pass(self, store: Store) -> bool:
        """One pass; False when another command held the pool lock (retried next time)."""
        spec = applied_spec(self.pool.paths)
        if spec is None:
            return True
        self.pool = Pool(self.pool.paths, spec)
        spec_id = store.latest_spec_id(spec.document_hash) or 0
        try:
            with pool_lock(self.pool.paths.lock, what="controller", timeout=PASS_LOCK_TIMEOUT):
                result = run_pass(self.pool, store, spec_id, desired_plan(self.pool))
        except LockHeldError:
            return False
        for step in result.plan.steps:
            logger.info("{}", step.describe())
        for line in result.report.done:
            logger.info("{}", line)
        for problem in result.report.problems:
            logger.warning("{}", problem)
        return True


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
