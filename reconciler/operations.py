"""The pool's use cases, each one function returning a typed result.

``diff``, ``apply``, ``converge``, ``delete``, ``restart`` and ``scale`` are
what the CLI calls; the controller loops over ``controller_pass``.  Each is
observe → plan (pure) → execute, under the pool lock, and nothing here
decides what to change: the planner does.  The CLI only parses and renders.

Ordering works like a Kubernetes generation: every applied spec gets the next
id in the store's history, and a pass works toward the newest one, read under
the lock.  A pass that finds a newer generation than the one it was started
for stops instead of undoing it.  ``delete`` holds the lock for its whole
duration and marks the pool as deleting, so a concurrent ``apply`` waits for
its lock timeout and fails with a clear line instead of being silently undone;
an interrupted delete leaves the mark for ``status`` to name, and a second
``delete`` finishes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import pending
from reconciler.actions import DrainWorker, Plan, SpecChange
from reconciler.checkedspecs import CheckedSpecs
from reconciler.effects import host_ports
from reconciler.errors import LockHeldError, PoolError
from reconciler.executor import ExecutionReport, Executor, Ports, note_pueue_up
from reconciler.lock import is_locked, pool_lock, take_lock
from reconciler.model import Observation, ProcessRef
from reconciler.planner import plan, plan_delete, plan_restart, plan_stop_controller, worker_ids
from reconciler.pool import (
    DELETED_KEY,
    Pool,
    check_pueue_group,
    observe_pool,
    preflight,
    resolve_pool,
    spec_git_commit,
)
from reconciler.purge import Purged, Remains, check_purgeable, purge_state, remains
from reconciler.scale import rewrite_replicas
from reconciler.specdiff import spec_changes
from reconciler.specmodel import PoolSpec, document_hash, spec_from_document
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store
from reconciler.wakeup import ring_controller, ring_workers

LOCK_TIMEOUT = 10.0
PASS_LOCK_TIMEOUT = 2.0
MIN_PASS_GAP = 0.25
CONTROLLER_STOP_TIMEOUT = 10.0
DELETE_EXTRA_SECONDS = 30.0  # on top of stopGrace: how long delete waits for workers

PlanMaker = Callable[[Observation, float], Plan]
Say = Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


# --------------------------------------------------------------------------- one pass


@dataclass(frozen=True)
class PassResult:
    plan: Plan  # what the pass set out to do
    report: ExecutionReport  # what it did
    remaining: Plan  # what is still to do afterwards (waits included)
    observation: Observation  # the world afterwards
    spec: PoolSpec  # the spec the pass worked toward


def run_pass(pool: Pool, store: StorePort, generation: int, make_plan: PlanMaker, *,
             ports: Ports | None = None, progress: Say = _quiet,
             on_plan: Callable[[Plan], None] = lambda _p: None) -> PassResult:
    """One observe → plan → execute pass (the caller holds the pool lock).

    When it acted, the pass looks again, only to report what remains; when it
    did nothing, the world is as observed and is not looked at twice (the
    controller's steady state).
    """
    spec = _spec_of(pool)
    executor = Executor(spec, generation, pool.paths,
                        ports or host_ports(spec, pool.paths, store), progress=progress)
    # results a worker kept while the store refused writes go in before anything is
    # judged lost: the attempt they finish is then no longer running
    pending.flush(pool.paths.root, store, spec.retry_policy)
    observation = observe_pool(pool, store)
    if observation.pueue is not None and observation.pueue.daemon_up:
        note_pueue_up(store, observation.observed_at)
    the_plan = make_plan(observation, observation.observed_at)
    on_plan(the_plan)
    report = executor.execute(the_plan)
    if report.done:  # tasks may have been requeued: idle workers look again
        ring_workers(pool.paths.root)
    if not report.done and not report.problems:
        return PassResult(the_plan, report, the_plan, observation, spec)
    after = observe_pool(pool, store)
    return PassResult(the_plan, report, make_plan(after, after.observed_at), after, spec)


def desired(spec: PoolSpec, generation: int) -> PlanMaker:
    return lambda observation, now: plan(spec, observation, now, generation=generation)


def _spec_of(pool: Pool) -> PoolSpec:
    if pool.spec is None:
        raise PoolError(f"pool {pool.name!r} has no spec", hint="pass -f workers.yaml")
    return pool.spec


def latest_generation(store: StorePort) -> tuple[int, PoolSpec] | None:
    """The newest applied spec and its generation (its id in the history)."""
    latest = store.latest_spec()
    if latest is None:
        return None
    generation, document = latest
    return generation, spec_from_document(document)


# --------------------------------------------------------------------------- diff, apply


def diff(pool: Pool) -> Plan:
    """The plan ``apply`` would execute now; changes nothing on the host."""
    spec = _spec_of(pool)
    preflight(spec, pool.paths)  # what apply would refuse, diff refuses too
    check_pueue_group(pool)
    observation = observe_pool(pool)
    generation: int = 0
    changes: tuple[SpecChange, ...] = ()
    if pool.paths.exists():
        with Store(pool.paths.store) as store:
            generation = _newest_generation_if_same(store, spec) or 0
            changes = _changes_since_applied(store, spec)
    return replace(plan(spec, observation, observation.observed_at, generation=generation),
                   spec_changes=changes)


def _changes_since_applied(store: StorePort, spec: PoolSpec) -> tuple[SpecChange, ...]:
    """The settings ``spec`` changes since the newest applied generation (none before
    the first: everything is new then, and the plan says so)."""
    latest = store.latest_spec()
    return spec_changes(latest[1] if latest else None, spec.document)


def _newest_generation_if_same(store: StorePort, spec: PoolSpec) -> int | None:
    """The newest generation's id when its document is ``spec``'s, else None."""
    latest = store.latest_spec()
    if latest is not None and document_hash(latest[1]) == spec.document_hash:
        return latest[0]
    return None


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    report: ExecutionReport
    generation: int
    recorded: bool  # a new generation was recorded (else the spec was the latest already)
    remaining: Plan
    forced: tuple[str, ...] = ()  # what preflight found that --force went ahead despite


def apply(pool: Pool, *, progress: Say = _quiet, on_plan: Callable[[Plan], None] = lambda _p: None,
          lock_timeout: float = LOCK_TIMEOUT, force: bool = False,
          git_commit: str | None = None) -> ApplyResult:
    """Record ``pool.spec`` as the newest generation and run one pass toward it
    (``force``: even if its programs cannot be found on this host; ``git_commit``: the
    commit the spec was read at, as GitOps sync does, instead of the file's last one)."""
    spec = _spec_of(pool)
    forced = preflight(spec, pool.paths, force=force)
    check_pueue_group(pool)
    pool.paths.create()
    with pool_lock(pool.paths.lock, what="apply", timeout=lock_timeout), \
            Store(pool.paths.store) as store:
        store.clear_controller_stop()  # the pool is wanted (again)
        store.set_deleting(None)  # ... even after an interrupted delete
        store.set_meta_value(DELETED_KEY, "")
        observation = observe_pool(pool, store)
        changes = _changes_since_applied(store, spec)
        first = replace(plan(spec, observation, observation.observed_at), spec_changes=changes)
        generation, recorded = _record_spec(store, spec, first.summary(), git_commit)
        result = run_pass(pool, store, generation, desired(spec, generation),
                          progress=progress,
                          on_plan=lambda p: on_plan(replace(p, spec_changes=changes)))
    ring_controller(pool.paths.root)  # a new generation: the controller takes it up now
    return ApplyResult(replace(result.plan, spec_changes=changes), result.report, generation,
                       recorded, result.remaining, forced)


def _record_spec(store: StorePort, spec: PoolSpec, summary: str,
                 git_commit: str | None = None) -> tuple[int, bool]:
    """The generation of ``spec``: the latest one if it is the same document, else a new one."""
    same = _newest_generation_if_same(store, spec)
    if same is not None:
        return same, False
    return store.record_applied_spec(
        source_path=str(spec.source_path) if spec.source_path else None,
        source_sha256=spec.source_sha256,
        git_commit=git_commit or spec_git_commit(spec.source_path),
        document_hash=spec.document_hash, document=spec.document_json, summary=summary), True


# --------------------------------------------------------------------------- converge


@dataclass(frozen=True)
class ConvergeResult:
    ready: bool
    remaining: Plan
    superseded_by: int | None = None  # a newer generation was applied meanwhile


def converged(spec: PoolSpec, remaining: Plan, observation: Observation) -> bool:
    """Nothing left to do and every desired worker heartbeating since its start."""
    if not remaining.empty:
        return False
    for worker_id in worker_ids(spec.replicas):
        row = observation.worker(worker_id)
        if spec.runtime == "pueue" and row is not None:
            continue  # a slot of pueue's group: no process of its own to come up
        if row is None or row.heartbeat_at is None or row.started_at is None \
                or row.heartbeat_at < row.started_at:
            return False
    return True


def converge(pool: Pool, generation: int, *, timeout: float, progress: Say = _quiet,
             on_tick: Callable[[Plan], None] = lambda _p: None) -> ConvergeResult:
    """Run passes toward ``generation`` (each under the pool lock, shared fairly with the
    controller) until the pool has converged; stop early if a newer one was applied."""
    spec = _spec_of(pool)
    deadline = time.monotonic() + timeout
    with Store(pool.paths.store) as store:
        while True:
            try:
                with pool_lock(pool.paths.lock, what="apply --wait", timeout=PASS_LOCK_TIMEOUT):
                    latest = store.latest_spec()
                    if latest is not None and latest[0] != generation:
                        return ConvergeResult(False, Plan(pool.name), latest[0])
                    result = run_pass(pool, store, generation, desired(spec, generation),
                                      progress=progress)
                remaining, observation = result.remaining, result.observation
            except LockHeldError:  # another actor's pass: just look
                observation = observe_pool(pool, store)
                remaining = plan(spec, observation, observation.observed_at)
            on_tick(remaining)
            if converged(spec, remaining, observation):
                return ConvergeResult(True, remaining)
            if time.monotonic() >= deadline:
                return ConvergeResult(False, remaining)
            time.sleep(MIN_PASS_GAP)


# --------------------------------------------------------------------------- delete


@dataclass(frozen=True)
class DeleteResult:
    done: bool  # every worker stopped
    report: ExecutionReport = field(default_factory=ExecutionReport)
    remains: Remains | None = None  # what the pool keeps in its repository (once done)
    purged: Purged | None = None  # with purge: what was removed


def delete(pool: Pool, *, force: bool = False, purge: bool = False, progress: Say = _quiet,
           lock_timeout: float = LOCK_TIMEOUT) -> DeleteResult:
    """Stop the controller, then every worker (after its current task unless ``force``),
    holding the pool lock throughout; the queue, logs and history stay, unless ``purge``:
    then, once every worker has stopped and still holding both locks, the pool's state
    directory goes too (``reconciler.purge``; refused while anything could write)."""
    spec = pool.spec
    if spec is None or not pool.paths.exists():
        raise PoolError(f"pool {pool.name!r} was never applied; nothing to delete")
    report = ExecutionReport()
    with pool_lock(pool.paths.lock, what="delete", timeout=lock_timeout), \
            Store(pool.paths.store) as store:
        store.set_deleting("reconcile delete" + (" --force" if force else ""))
        ports = host_ports(spec, pool.paths, store)
        controller_fd = stop_controller(pool, store, ports, progress)
        try:  # held until the end: no controller (not even one starting now) can run
            deadline = time.monotonic() + spec.worker.stop_grace + DELETE_EXTRA_SECONDS
            since = store.deleting()
            emptied = bool(store.meta_value(DELETED_KEY))  # deleted before: pueue too
            while True:
                result = run_pass(pool, store, 0,
                                  lambda o, now: plan_delete(spec, o, now, force=force,
                                                             since=since, emptied=emptied),
                                  ports=ports, progress=progress)
                report.done += result.report.done
                report.problems += result.report.problems
                if result.remaining.empty or time.monotonic() >= deadline:
                    break
                time.sleep(MIN_PASS_GAP)
            done = result.remaining.empty
            store.add_event("pool.deleted", "every worker stopped" if done
                            else "some workers did not stop in time")
            if not done:
                return DeleteResult(done, report)
            store.set_deleting(None)
            store.set_meta_value(DELETED_KEY, str(time.time()))
            left = remains(pool.paths, spec, store)
            if not purge:
                return DeleteResult(done, report, left)
            check_purgeable(pool.paths, store, left)
            store.close()  # before its files go
            return DeleteResult(done, report, left, purge_state(pool.paths))
        finally:
            os.close(controller_fd)


def stop_controller(pool: Pool, store: StorePort, ports: Ports, progress: Say) -> int:
    """Stop the pool's controller and return its lock, now held by the caller.

    The stop request is recorded first (a controller that starts meanwhile
    exits at once), the recorded process gets SIGTERM, then is killed if it has
    not let go of the lock after ``CONTROLLER_STOP_TIMEOUT``.
    """
    lock = pool.paths.controller_lock
    running = is_locked(lock)
    record = store.controller()
    process = ProcessRef(record.pid, record.pid_create_time) if record and record.pid else None
    spec = _spec_of(pool)
    Executor(spec, 0, pool.paths, ports).execute(
        plan_stop_controller(spec, process, "pool deleted", time.time()))
    fd = take_lock(lock, CONTROLLER_STOP_TIMEOUT)
    if fd is None and process is not None:
        ports.processes.kill(process, 1.0)
        fd = take_lock(lock, 5.0)
    if fd is None:
        raise PoolError("the controller of this pool does not stop",
                        hint=f"kill it by hand (pid {process.pid if process else '?'}), "
                             "then retry")
    if running:
        progress("controller stopped")
    return fd


# --------------------------------------------------------------------------- restart, scale


@dataclass(frozen=True)
class RestartResult:
    worker: str
    plan: Plan
    report: ExecutionReport

    @property
    def after_current_task(self) -> bool:
        return any(isinstance(a, DrainWorker) for a in self.plan.actions)


def restart(pool: Pool, worker_id: str, *, lock_timeout: float = LOCK_TIMEOUT,
            progress: Say = _quiet) -> RestartResult:
    """Give ``worker_id`` a fresh restart budget and replace it without charging it: a live
    worker after its current task, a dead or failed one at once."""
    if not pool.paths.exists():
        raise PoolError(f"pool {pool.name!r} has no state in {pool.paths.state_dir}",
                        hint="apply its spec first: reconcile apply -f workers.yaml")
    with pool_lock(pool.paths.lock, what="restart", timeout=lock_timeout), \
            Store(pool.paths.store) as store:
        latest = latest_generation(store)
        if latest is None:
            raise PoolError(f"pool {pool.name!r} was never applied",
                            hint="apply its spec first: reconcile apply -f workers.yaml")
        generation, spec = latest
        current = Pool(pool.paths, spec)
        result = run_pass(current, store, generation,
                          lambda o, now: plan_restart(spec, o, worker_id, now),
                          progress=progress)
    ring_controller(pool.paths.root)
    return RestartResult(worker_id, result.plan, result.report)


@dataclass(frozen=True)
class ScaleResult:
    before: int
    after: int
    apply: ApplyResult
    converge: ConvergeResult | None  # with --wait


def scale(path: Path, replicas: int, *, state_dir: Path, wait: bool, timeout: float,
          progress: Say = _quiet) -> ScaleResult:
    """Rewrite ``replicas`` in the spec file (keeping its layout), then apply it."""
    before = rewrite_replicas(path, replicas)
    checked = CheckedSpecs(state_dir)
    pool = resolve_pool(state_dir, str(path), None, checked=checked)
    applied = apply(pool, progress=progress)
    checked.save()
    waited = converge(pool, applied.generation, timeout=timeout, progress=progress) \
        if wait else None
    return ScaleResult(before, replicas, applied, waited)


# --------------------------------------------------------------------------- the controller


def controller_pass(pool: Pool, store: StorePort, *,
                    on_plan: Callable[[Plan], None] = lambda _p: None) -> PassResult | None:
    """One controller pass toward the newest generation, read under the pool lock, so a
    pass can never act on an older spec than one applied while it waited for the lock.
    Raises ``LockHeldError`` if another command holds the lock; None before any apply."""
    with pool_lock(pool.paths.lock, what="controller", timeout=PASS_LOCK_TIMEOUT):
        latest = latest_generation(store)
        if latest is None:
            return None
        generation, spec = latest
        return run_pass(Pool(pool.paths, spec), store, generation, desired(spec, generation),
                        on_plan=on_plan)
