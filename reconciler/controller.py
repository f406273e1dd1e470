"""Pool operations: choose a pool, observe it, and reconcile it under its lock.

``diff`` and ``apply`` share ``observe`` and ``plan``; only ``apply`` goes on
to the executor.  ``diff`` never creates a file, a window or a process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import PoolError, RuntimeBackendError
from reconciler.executor import ExecutionReport, Executor
from reconciler.lock import pool_lock
from reconciler.model import ActionKind, Observation, Plan
from reconciler.observe import observe
from reconciler.paths import PoolPaths, known_pools, pool_paths
from reconciler.planner import plan, plan_delete
from reconciler.spec import PoolSpec, load_spec, spec_from_document
from reconciler.store.sqlite import Store
from reconciler.tmuxcli import tmux_available
from reconciler.worktrees import check_repo, git

LOCK_TIMEOUT = 10.0


@dataclass
class Pool:
    """One pool as named on the command line: its paths and, when known, its spec."""

    paths: PoolPaths
    spec: PoolSpec | None  # from -f, else the latest applied spec, else None

    @property
    def name(self) -> str:
        return self.paths.name

    def open_store(self) -> Store:
        if not self.paths.exists():
            raise PoolError(f"pool {self.name!r} has no state in {self.paths.state_dir}",
                            hint="apply its spec first: reconcile apply -f workers.yaml")
        return Store(self.paths.store)

    @property
    def tmux_socket(self) -> str | None:
        return self.spec.tmux_socket if self.spec else None


def resolve_pool(state_dir: Path, spec_file: str | None, pool: str | None) -> Pool:
    """The pool named by ``-f`` or ``--pool``, or the only pool in the state directory."""
    if spec_file:
        spec = load_spec(spec_file)
        if pool and pool != spec.name:
            raise PoolError(f"--pool {pool} does not match {spec_file} (pool {spec.name})")
        return Pool(pool_paths(state_dir, spec.name), spec)
    if not pool:
        pools = known_pools(state_dir)
        if not pools:
            raise PoolError(f"no pool found in {state_dir}",
                            hint="pass -f workers.yaml, or apply a spec first")
        if len(pools) > 1:
            raise PoolError(f"{len(pools)} pools in {state_dir}: {', '.join(pools)}",
                            hint="choose one with --pool NAME or -f workers.yaml")
        pool = pools[0]
    paths = pool_paths(state_dir, pool)
    if not paths.exists():
        raise PoolError(f"no pool named {pool!r} in {state_dir}",
                        hint=f"known pools: {', '.join(known_pools(state_dir)) or 'none'}")
    return Pool(paths, applied_spec(paths))


def applied_spec(paths: PoolPaths) -> PoolSpec | None:
    """The spec most recently applied to the pool, as the store recorded it."""
    if not paths.exists():
        return None
    store = Store(paths.store)
    try:
        history = store.history()
        return spec_from_document(store.spec_document(history[-1].id)) if history else None
    finally:
        store.close()


def observe_pool(pool: Pool, store: Store | None = None) -> Observation:
    """Observe the pool; a pool with no store yet has no records (nothing is created)."""
    spec = pool.spec
    own = store
    if own is None and pool.paths.exists():
        own = Store(pool.paths.store)
    try:
        return observe(
            pool.paths, [spec.tmux_socket if spec else None], own,
            repo=spec.repo if spec else None,
            worktree_root=(spec.worktrees.dir or pool.paths.default_worktrees) if spec else None)
    finally:
        if store is None and own is not None:
            own.close()


def diff(pool: Pool) -> tuple[Plan, Observation]:
    """The plan ``apply`` would execute now; changes nothing."""
    if pool.spec is None:
        raise PoolError("diff needs the desired spec", hint="pass -f workers.yaml")
    preflight(pool.spec)  # what apply would refuse, diff refuses too
    observation = observe_pool(pool)
    return plan(pool.spec, observation, observation.observed_at), observation


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    report: ExecutionReport
    spec_id: int
    recorded: bool
    remaining: Plan


def preflight(spec: PoolSpec) -> None:
    """Read-only checks that the spec can run on this host: repo, baseRef, tmux."""
    check_repo(spec.repo, spec.base_ref)
    if spec.runtime == "tmux" and not tmux_available():
        raise RuntimeBackendError("tmux is not installed but the spec says runtime: tmux",
                                  hint="install tmux, or set `runtime: process`")


def spec_git_commit(path: Path | None) -> str | None:
    """The last commit of the spec file, with ``+dirty`` if it changed since; None outside git."""
    if path is None:
        return None
    log = git(path.parent, ["log", "-1", "--format=%H", "--", path.name], check=False)
    commit = log.stdout.strip()
    if log.returncode != 0 or not commit:
        return None
    dirty = git(path.parent, ["diff", "--quiet", "HEAD", "--", path.name], check=False)
    return commit + ("+dirty" if dirty.returncode == 1 else "")


def apply(pool: Pool, *, progress: Callable[[str], None] = lambda _l: None,
          on_plan: Callable[[Plan], None] = lambda _p: None,
          lock_timeout: float = LOCK_TIMEOUT) -> ApplyResult:
    """Converge the pool to ``pool.spec`` once, under the pool lock."""
    spec = pool.spec
    if spec is None:
        raise PoolError("apply needs the desired spec", hint="pass -f workers.yaml")
    preflight(spec)
    pool.paths.create()
    with pool_lock(pool.paths.lock, what="apply", timeout=lock_timeout):
        store = Store(pool.paths.store)
        try:
            observation = observe_pool(pool, store)
            the_plan = plan(spec, observation, observation.observed_at)
            on_plan(the_plan)
            spec_id = store.latest_spec_id(spec.document_hash)
            history = store.history()
            recorded = not history or history[-1].document_hash != spec.document_hash
            if recorded or spec_id is None:
                spec_id = store.record_applied_spec(
                    source_path=str(spec.source_path) if spec.source_path else None,
                    source_sha256=spec.source_sha256, git_commit=spec_git_commit(spec.source_path),
                    document_hash=spec.document_hash, document=spec.document_json,
                    summary=the_plan.summary())
                recorded = True
            executor = Executor(spec, spec_id, pool.paths, store, progress=progress)
            report = executor.execute(the_plan, observation)
            remaining = _clean_what_the_pass_left(pool, store, executor, report,
                                                  lambda o: plan(spec, o, o.observed_at))
        finally:
            store.close()
    return ApplyResult(the_plan, report, spec_id, recorded, remaining)


def delete(pool: Pool, *, force: bool = False, progress: Callable[[str], None] = lambda _l: None,
           lock_timeout: float = LOCK_TIMEOUT) -> tuple[Plan, ExecutionReport]:
    """Stop every worker (after its current task unless ``force``); keep queue and history."""
    spec = pool.spec
    if spec is None or not pool.paths.exists():
        raise PoolError(f"pool {pool.name!r} was never applied; nothing to delete")
    with pool_lock(pool.paths.lock, what="delete", timeout=lock_timeout):
        store = Store(pool.paths.store)
        try:
            observation = observe_pool(pool, store)
            the_plan = plan_delete(spec, observation)
            spec_id = store.latest_spec_id(spec.document_hash) or 0
            executor = Executor(spec, spec_id, pool.paths, store, progress=progress, force=force)
            report = executor.execute(the_plan, observation)
            _clean_what_the_pass_left(pool, store, executor, report,
                                      lambda o: plan_delete(spec, o))
            store.add_event("pool.deleted", f"{len(the_plan.actions)} worker(s) stopped")
        finally:
            store.close()
    return the_plan, report


def _clean_what_the_pass_left(pool: Pool, store: Store, executor: Executor,
                              report: ExecutionReport,
                              make_plan: Callable[[Observation], Plan]) -> Plan:
    """Re-observe after a pass and remove the worktrees it orphaned (attempts it ended
    as lost); anything else still pending is returned, never retried in the same run."""
    after = observe_pool(pool, store)
    remaining = make_plan(after)
    cleaning = Plan(remaining.pool, tuple(a for a in remaining.actions
                                          if a.kind is ActionKind.CLEAN))
    if cleaning.empty:
        return remaining
    done = executor.execute(cleaning, after)
    report.done += done.done
    report.problems += done.problems
    after = observe_pool(pool, store)
    return make_plan(after)
