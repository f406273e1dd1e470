"""The controller: a loop over ``operations.controller_pass`` that keeps a pool converged.

It sleeps in one ``select`` and runs a pass when something calls for one:

- a worker process exits: each live worker is watched through a pidfd
  (``os.pidfd_open`` works on any process, not only children), so a crash
  is seen the moment it happens, not at the next poll;
- its bell rings (``reconciler.wakeup``): ``apply``, ``delete``, ``restart``
  and workers starting or ending a task ring it (rings are taken up at most
  every ``BELL_PASS_GAP``, so a busy pool does not cost a pass per task).
  Heartbeats do not ring: a heartbeat alone never changes what a pass would
  do before the moment computed below;
- the earliest moment at which time alone could change a decision
  (``planner.next_wakeup``): a restart backoff or stop grace ending, a
  heartbeat, task or output growing old enough to change a worker's health;
- changes a pass could not finish (a requeue that waits for the processes it
  just signalled to exit): again 0.2s later, doubling while they stay undone;
- at least every ``controller.interval``, a full pass (level-triggered: it
  re-observes everything, so drift nobody announced is still found).

Every pass works toward the newest applied generation, read under the pool
lock, so ``apply``, ``delete`` and the controller can take turns at the lock
without undoing each other.

With GitOps sync on (``spec.sync`` or ``--sync``), a thread of its own
(``reconciler.syncer``) fetches the followed ref and applies the spec committed
there; it takes the pool lock like any ``apply``, so the loop above never waits
on a remote.

A fault of the store or the disk (busy, full, read-only, I/O errors) never
ends the controller: the pass fails with one log line, the next one waits
with a growing backoff (up to ``FAULT_BACKOFF_MAX``), and the controller keeps
its lock and resumes as soon as the store works again.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sqlite3
import threading
import time
from types import FrameType

from reconciler.actions import Plan, target, verb
from reconciler.alerts import Alerts, webhooks_of
from reconciler.diskwatch import check_disks
from reconciler.errors import LockHeldError, PoolError, ReconcilerError
from reconciler.lock import take_lock
from reconciler.log import logger
from reconciler.model import ControllerRow, Observation
from reconciler.operations import PassResult, apply, controller_pass
from reconciler.planner import next_wakeup
from reconciler.pool import DETACHED_KEY, ENDPOINT_KEY, ENDPOINT_PROBLEM_KEY, Pool
from reconciler.proctree import create_time_of, process_matches
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store
from reconciler.sync import SyncFlags
from reconciler.syncer import Syncer
from reconciler.wakeup import Bell, controller_bell, ring_controller
from reconciler.web.serving import ServedEndpoint

FAULT_BACKOFF_FIRST = 0.5
FAULT_BACKOFF_MAX = 10.0
HEARTBEAT_EVERY = 20.0  # the controller's own heartbeat: status calls it down after 60s
LOCK_RETRY_SECONDS = 0.25  # a pass skipped because apply/delete held the pool lock
EXIT_RECHECK_SECONDS = 0.05  # a watched exit the observers do not show yet (tmux lags)
EXIT_RECHECKS = 20
UNFINISHED_RETRY_FIRST = 0.2  # changes a pass left undone: again this soon, doubling
BELL_PASS_GAP = 0.2  # passes for rings (tasks starting and ending) at most this often
TAKEOVER_SECONDS = 60.0  # a detached controller ends its pass and exits within this


class Controller:
    """The loop behind ``reconcile controller``: one per pool (its lock says so)."""

    def __init__(self, pool: Pool, *, apply_first: bool = False, detached: bool = False,
                 sync: SyncFlags | None = None) -> None:
        self.pool = pool
        self.apply_first = apply_first
        self.detached = detached  # started by apply in the background (else by an operator)
        self._syncer = Syncer(pool.paths, sync or SyncFlags())
        self.stop = threading.Event()
        self.interval = pool.spec.controller_interval if pool.spec else 1.0
        self._bell: Bell | None = None
        self._alerts: Alerts | None = None
        self._endpoint = ServedEndpoint(pool)

    def request_stop(self) -> None:
        """Stop after this pass; safe from a signal handler (it only sets and writes)."""
        self.stop.set()
        if self._bell is not None:
            self._bell.ring()

    def run(self) -> int:
        paths = self.pool.paths
        paths.create()
        # an operator's controller looks at once for a detached one to take over from
        fd = take_lock(paths.controller_lock, 2.0 if self.detached else 0.0)
        if fd is None and not self.detached:
            fd = self._take_over()
            if fd is None:  # e.g. a controller just starting, or a delete finishing
                fd = take_lock(paths.controller_lock, 2.0)
        if fd is None:
            if self.detached:  # apply's: the running one keeps the pool converged
                logger.info("a controller already runs for pool {}; nothing to do", paths.name)
                return 0
            holder, _detached = self._holder()
            raise PoolError(f"another foreground controller runs for pool {paths.name}"
                            + (f" (pid {holder.pid})" if holder and holder.pid else ""),
                            hint="one controller per pool: stop that one first (SIGTERM), "
                            "or leave the pool to it")
        opened = self._open_store()
        if opened is None:  # stopped while the store could not be opened
            os.close(fd)
            return 0
        store: StorePort = opened
        # what kind of controller holds the lock, said before anything else (an apply
        # with -f first): a stale "1" of the detached one must not make another operator's
        # controller take this one for apply's
        store.set_meta_value(DETACHED_KEY, "1" if self.detached else "")
        if self.apply_first:  # registered and holding the lock: apply starts no other
            store.register_controller(os.getpid(), create_time_of(os.getpid()))
            apply(self.pool)
        info = store.controller()
        if info is not None and info.stop_requested and not self.detached:
            store.close()
            os.close(fd)
            raise PoolError(f"pool {paths.name} was deleted, so there is nothing to keep "
                            "converged", hint="`reconcile controller -f workers.yaml` applies "
                            "the spec again and runs (or `reconcile apply` it first)")
        if info is not None and info.stop_requested:
            logger.info("pool {} was deleted; `reconcile apply` it first", paths.name)
            store.close()
            os.close(fd)
            return 0
        if not self.apply_first:  # already registered before applying
            store.register_controller(os.getpid(), create_time_of(os.getpid()))
        store.controller_back(os.getpid())
        logger.info("controller of pool {} started (pid {})", paths.name, os.getpid())
        self._bell = Bell(controller_bell(paths.root))
        self._alerts = Alerts(paths.name, paths.root, wake=lambda: ring_controller(paths.root))
        try:
            with contextlib.suppress(ReconcilerError, sqlite3.Error, OSError):
                for key in (ENDPOINT_KEY, ENDPOINT_PROBLEM_KEY):  # a killed one's: not ours
                    store.set_meta_value(key, "")
            self._loop(store, self._bell)
        finally:
            self._syncer.close()  # before the lock goes: no sync apply after we stopped
            self._endpoint.close(store)
            self._alerts.close()
            self._bell.close()
            store.close()
            os.close(fd)
        logger.info("controller of pool {} stopped", paths.name)
        return 0

    def _holder(self) -> tuple[ControllerRow | None, bool]:
        """The controller the store names (the lock's holder, as far as the store knows),
        and whether it is the one apply started."""
        try:
            with Store(self.pool.paths.store) as store:
                return store.controller(), store.meta_value(DETACHED_KEY) == "1"
        except (ReconcilerError, sqlite3.Error, OSError):
            return None, False

    def _take_over(self) -> int | None:
        """The lock, taken from the controller ``apply`` started in the background: a
        foreground controller (a systemd unit's) is the one the operator wants, so the
        detached one is asked to stop (SIGTERM: it ends its pass and exits) and its lock
        waited for.  None when the holder is another foreground controller, which is
        left alone (two would take the pool from each other as systemd restarts them)."""
        paths = self.pool.paths
        holder, detached = self._holder()
        if holder is None or not holder.pid or not detached \
                or not process_matches(holder.pid, holder.pid_create_time):
            return None
        logger.info("taking over pool {} from the controller apply started (pid {}): "
                    "asking it to stop", paths.name, holder.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(holder.pid, signal.SIGTERM)
        fd = take_lock(paths.controller_lock, TAKEOVER_SECONDS)
        if fd is None:
            logger.error("the detached controller (pid {}) did not stop within {:.0f}s",
                         holder.pid, TAKEOVER_SECONDS)
        return fd

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

    def _loop(self, store: StorePort, bell: Bell) -> None:
        selector = selectors.DefaultSelector()
        selector.register(bell, selectors.EVENT_READ, None)
        watch = ExitWatch(selector)
        next_pass = 0.0  # monotonic: at once
        next_beat = 0.0
        skipped = failures = rechecks = unfinished = 0
        try:
            last_pass = -BELL_PASS_GAP
            while not self.stop.is_set():
                woken = False
                for key, _ in selector.select(max(0.0, min(next_pass, next_beat)
                                                  - time.monotonic())):
                    if key.data is None:
                        bell.clear()
                        # rings come with every task's start and end: at most one pass
                        # per gap for them, whatever the throughput (an exit: at once)
                        next_pass = min(next_pass, last_pass + BELL_PASS_GAP)
                    else:
                        watch.exited(key.data)
                        woken = True
                if self.stop.is_set():
                    return
                clock = time.monotonic()
                if not woken and clock < next_pass:
                    if clock >= next_beat:  # nothing to decide: only say we are alive
                        next_beat = clock + HEARTBEAT_EVERY
                        if self._beat(store):
                            return
                    continue
                try:
                    if store.controller_heartbeat():
                        return  # delete asked us to stop
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                    last_pass = time.monotonic()
                    done, result = self._pass(store)
                except (ReconcilerError, sqlite3.Error, OSError) as exc:
                    # the store busy, full, read-only or failing: log, back off, never die
                    failures += 1
                    wait = min(FAULT_BACKOFF_FIRST * 2 ** (failures - 1), FAULT_BACKOFF_MAX)
                    logger.error("pass failed: {}; retrying in {:.1f}s", _one_line(exc), wait)
                    self._endpoint.failed(f"pass failed: {_one_line(exc)}")
                    next_pass = time.monotonic() + wait
                    continue
                if failures:
                    logger.info("store works again after {} failed pass(es); resuming",
                                failures)
                    failures = 0
                if not done:  # another command held the pool lock
                    self._endpoint.waited()
                    skipped += 1
                    if skipped % 20 == 0:
                        logger.warning("{} passes skipped: the pool lock is held by another "
                                       "command ({})", skipped, self.pool.paths.lock)
                    next_pass = time.monotonic() + LOCK_RETRY_SECONDS
                    continue
                skipped = 0
                next_pass = time.monotonic() + self.interval
                if result is not None:
                    watch.update(result.observation)
                    wake_at = next_wakeup(result.spec, result.observation, result.remaining,
                                          time.time())
                    if wake_at is not None:
                        next_pass = min(next_pass, time.monotonic() + wake_at - time.time())
                    lagging = watch.seen_alive_after_exit(result.observation)
                    rechecks = rechecks + 1 if lagging else 0
                    if lagging and rechecks <= EXIT_RECHECKS:
                        next_pass = min(next_pass, time.monotonic() + EXIT_RECHECK_SECONDS)
                    # changes still due after acting (a requeue waiting for processes that
                    # were just signalled to exit): look again soon, backing off while
                    # they stay undone
                    unfinished = unfinished + 1 if result.remaining.changes else 0
                    if unfinished:
                        retry = UNFINISHED_RETRY_FIRST * 2 ** min(unfinished - 1, 8)
                        next_pass = min(next_pass, time.monotonic() + retry)
        finally:
            watch.close()
            selector.close()

    def _beat(self, store: StorePort) -> bool:
        """The controller's own heartbeat; True when ``delete`` asked it to stop."""
        try:
            return store.controller_heartbeat()
        except (ReconcilerError, sqlite3.Error, OSError) as exc:
            logger.error("heartbeat failed: {}", _one_line(exc))
            return False

    def _pass(self, store: StorePort) -> tuple[bool, PassResult | None]:
        """One pass: (False, None) when another command held the pool lock (retried soon);
        the result is None before the pool's first apply."""
        busy = False

        def announce(plan: Plan) -> None:
            nonlocal busy
            if plan.changes:
                busy = True
                store.set_controller_busy("; ".join(f"{verb(a)} {target(a)}"
                                                    for a in plan.changes))

        began = time.monotonic()
        try:
            result = controller_pass(self.pool, store, on_plan=announce)
        except LockHeldError:
            return False, None
        finally:
            if busy:
                store.set_controller_busy(None)
        if result is None:
            return True, None
        self.interval = result.spec.controller_interval  # the newest generation's
        self._syncer.retarget(result.spec)  # ... and its spec.sync (or --sync)
        current = Pool(self.pool.paths, result.spec)  # the newest generation's
        self._endpoint.passed(current, time.monotonic() - began)
        try:
            self._endpoint.follow(store)
        except (ReconcilerError, sqlite3.Error, OSError) as exc:  # the pass still counts
            logger.error("metrics endpoint not changed this pass: {}", _one_line(exc))
        try:
            check_disks(current, store)
        except (ReconcilerError, sqlite3.Error, OSError, ValueError) as exc:
            logger.error("disks not checked this pass: {}", _one_line(exc))
        if self._alerts is not None:  # after acting: this pass's own alerts go out now
            try:
                self._alerts.dispatch(store, webhooks_of(result.spec.document))
            except (ReconcilerError, sqlite3.Error, OSError) as exc:  # the pass still counts
                logger.error("alerts not sent this pass: {}", _one_line(exc))
        for step in result.plan.steps:
            logger.info("{}", step.describe())
        for line in result.report.done:
            logger.info("{}", line)
        for line in result.report.skipped:
            logger.info("{}", line)
        for problem in result.report.problems:
            logger.warning("{}", problem)
        return True, result


class ExitWatch:
    """Live worker processes watched through pidfds, which read as ready the moment the
    process exits: a crash wakes the controller at once.

    A pid is watched only once it is confirmed to be the worker recorded (same start
    time), so a recycled pid is never mistaken for it.  Where pidfds are not available
    (before Linux 5.3), nothing is watched and exits are seen at the next pass.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.fds: dict[tuple[str, int], int] = {}
        self.exited_pids: set[tuple[str, int]] = set()  # exits seen, until the pid changes

    def update(self, observation: Observation) -> None:
        """Watch every live worker of ``observation``; forget the ones no longer there."""
        live = {}
        for row in observation.workers:
            instance = observation.instance(row.id)
            if row.pid and instance is not None and instance.alive:
                live[(row.id, row.pid)] = row.pid_create_time
        for key in [k for k in self.fds if k not in live]:
            self._forget(key)
        self.exited_pids &= set(live)
        for key, created in live.items():
            if key not in self.fds and key not in self.exited_pids:
                self._watch(key, created)

    def _watch(self, key: tuple[str, int], created: float | None) -> None:
        try:
            fd = os.pidfd_open(key[1])
        except (OSError, AttributeError):  # gone already, or no pidfds here
            return
        if not process_matches(key[1], created):  # recycled between the pass and now
            os.close(fd)
            return
        self.fds[key] = fd
        self.selector.register(fd, selectors.EVENT_READ, key)

    def exited(self, key: tuple[str, int]) -> None:
        self.exited_pids.add(key)
        self._forget(key)

    def seen_alive_after_exit(self, observation: Observation) -> bool:
        """Whether a pass still saw as alive a worker whose exit was watched (tmux
        notices its pane died a moment later): the caller looks again soon."""
        return any(row.pid and (row.id, row.pid) in self.exited_pids
                   and (instance := observation.instance(row.id)) is not None
                   and instance.alive and instance.pid == row.pid
                   for row in observation.workers)

    def _forget(self, key: tuple[str, int]) -> None:
        fd = self.fds.pop(key, None)
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
            os.close(fd)

    def close(self) -> None:
        for key in list(self.fds):
            self._forget(key)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ReconcilerError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def run_controller(pool: Pool, *, apply_first: bool = False, detached: bool = False,
                   sync: SyncFlags | None = None) -> int:
    """Entry point of ``reconcile controller``: run until SIGTERM/SIGINT or ``delete``
    (``sync``: follow a git ref even if the spec has no ``sync`` section)."""
    controller = Controller(pool, apply_first=apply_first, detached=detached, sync=sync)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("received {}: stopping after this pass", signal.Signals(signum).name)
        controller.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return controller.run()
