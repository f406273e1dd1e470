"""Which pool a command means, what its spec is, and what the host looks like for it.

``diff`` never creates a file, a window or a process: a pool that was never
applied is observed without opening (or creating) its store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.checkedspecs import CheckedSpecs
from reconciler.errors import PoolError, PreflightError, ReconcilerError, RuntimeBackendError
from reconciler.model import Observation
from reconciler.observe import observe
from reconciler.paths import PoolPaths, known_pools, pool_paths
from reconciler.pueueview import due_limit
from reconciler.spec import PoolSpec, load_spec, spec_from_document
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store
from reconciler.tmuxcli import foreign_server, pool_socket, tmux_available
from reconciler.worktrees import check_repo, check_worktree_dir, git

ENDPOINT_KEY = "http_endpoint"  # in the store's meta: the URL the controller serves
ENDPOINT_PROBLEM_KEY = "http_endpoint_problem"  # and why it serves none where it should
PUEUE_DOWN_KEY = "pueue_down_since"  # runtime: pueue -- "" while the daemon answers
DETACHED_KEY = "controller_detached"  # "1" while the controller is the one apply started
DELETED_KEY = "deleted_at"  # when a delete finished ("" once applied again): run-task refuses


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


def resolve_pool(state_dir: Path, spec_file: str | None, pool: str | None, *,
                 checked: CheckedSpecs | None = None) -> Pool:
    """The pool named by ``-f`` or ``--pool``, or the only pool in the state directory.
    A spec file whose text an apply validated before is not validated again (see
    ``checkedspecs``; ``checked``: the caller's, to save once its apply went through)."""
    if spec_file:
        spec = load_spec(spec_file, checked if checked is not None else CheckedSpecs(state_dir))
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
    with Store(paths.store) as store:
        latest = store.latest_spec()
    return spec_from_document(latest[1]) if latest else None


def observe_pool(pool: Pool, store: StorePort | None = None) -> Observation:
    """Observe the pool; a pool with no store yet has no records (nothing is created)."""
    spec = pool.spec
    own: StorePort | None = store
    if own is None and pool.paths.exists():
        own = Store(pool.paths.store)
    try:
        return observe(
            pool.paths, [spec.tmux_socket if spec else None], own,
            repo=spec.repo if spec else None,
            worktree_root=pool.paths.worktree_root(spec.worktrees.dir) if spec else None,
            controller_lock=pool.paths.controller_lock,
            pueue=spec.pueue if spec else None,
            due_limit=due_limit(spec.replicas) if spec else 0)
    finally:
        if store is None and own is not None:
            own.close()


def status_of(pool: Pool, store: StorePort | None,
              now: float) -> tuple[Observation, dict[str, Any]]:
    """The pool's status document, as ``reconcile status`` and the dashboard show it,
    with the observation it was judged from; ``store`` None: a pool with no store yet.
    Only reads."""
    from reconciler.durations import day_start
    from reconciler.lock import is_locked
    from reconciler.report.status import status_document

    observation = observe_pool(pool, store)
    if store is None:
        return observation, status_document(observation, now, pool.spec)
    titles = store.task_titles([w.current_task for w in observation.workers
                                if w.current_task is not None])
    deleting = store.deleting()
    document = status_document(
        observation, now, pool.spec, store.controller(), store.paused_until(),
        deleting=deleting,
        delete_running=deleting is not None and is_locked(pool.paths.lock),
        titles=titles, rescued=store.rescued_counts(), paused_reason=store.paused_reason(),
        spend_today=store.spend_since(day_start(now)),
        endpoint=store.meta_value(ENDPOINT_KEY) or None,
        endpoint_problem=store.meta_value(ENDPOINT_PROBLEM_KEY) or None)
    deleted = store.meta_value(DELETED_KEY)
    document["deleted_at"] = float(deleted) if deleted else None
    if document["controller"]["running"]:  # apply's, or one an operator (systemd) runs
        document["controller"]["detached"] = store.meta_value(DETACHED_KEY) == "1"
    document["sync"] = None if deleted else sync_status(store)  # deleted: nothing follows
    shared = pueue_group_shared(pool)
    if shared:
        document["problems"].append(f"{shared}: give each pool its own pueue.group")
        document["ok"] = False
    return observation, document


def sync_status(store: StorePort) -> dict[str, Any] | None:
    """GitOps sync as ``status`` shows it: the ref followed, the commit last fetched, the
    commit the pool was found running and the last error (None: sync is off). Only reads
    the store: no git."""
    from dataclasses import asdict

    from reconciler.sync import SYNC_KEY, state_from_json

    state = state_from_json(store.meta_value(SYNC_KEY))
    if state is None:
        return None
    history = store.history()
    running = history[-1] if history else None
    return {**asdict(state), "running_generation": running.id if running else None,
            "running_commit": running.git_commit if running else None}


def preflight(spec: PoolSpec, paths: PoolPaths, *, force: bool = False) -> tuple[str, ...]:
    """Read-only checks that the spec can run on this host: repo, baseRef, tmux or
    pueue and the metrics token; and the mistakes a pool could run with, badly: an
    agent, setup step or hook that cannot be found, worktrees the repository would see
    as untracked, and a tmux socket someone else's server has.  Those raise one
    ``PreflightError`` naming them all, unless ``force``: then they are returned, for
    ``apply`` to say what it went ahead despite."""
    check_repo(spec.repo, spec.base_ref)
    if spec.runtime == "tmux" and not tmux_available():
        raise RuntimeBackendError("tmux is not installed but the spec says runtime: tmux",
                                  hint="install tmux, or set `runtime: process`")
    found = [*program_problems(spec)]
    checks: list[Callable[[], None]] = [lambda: check_worktree_dir(spec.repo, spec.worktrees.dir)]
    if spec.runtime == "tmux":
        checks.append(lambda: check_tmux_socket(spec, paths))
    for check in checks:
        try:
            check()
        except ReconcilerError as exc:
            found.append(exc)
    if found and not force:
        raise PreflightError(tuple(found))
    if spec.pueue is not None:
        for program in ("pueue", "pueued"):
            if shutil.which(program) is None:
                raise RuntimeBackendError(
                    f"{program} is not installed but the spec says runtime: pueue (looked "
                    f"on PATH: {os.environ.get('PATH', '')})",
                    hint="install pueue 4.0.x or 3.4.x (cargo install pueue --locked), or "
                         "set `runtime: tmux`")
    if spec.metrics is not None and spec.metrics.token_file is not None:
        read_token(spec.metrics.token_file)
    return tuple(problem.one_line() for problem in found)


def pool_summary(state_dir: Path, name: str, now: float) -> dict[str, Any]:
    """One line of ``reconcile pools``: what the pool's store says of it."""
    from reconciler.health import LIVE
    from reconciler.liveness import controller_alive

    paths = pool_paths(state_dir, name)
    try:
        with Store(paths.store) as store:
            latest, history = store.latest_spec(), store.history()
            workers = store.workers()
            controller = store.controller()
            queue = store.queue_counts()
            deleted = bool(store.meta_value(DELETED_KEY))
    except ReconcilerError as exc:
        return {"pool": name, "problem": exc.one_line()}
    spec = spec_from_document(latest[1]) if latest else None
    applied = history[-1] if history else None
    running = controller_alive(paths.controller_lock, controller, now)
    return {
        "pool": name,
        "spec_file": applied.source_path if applied else None,
        "generation": latest[0] if latest else None,
        "runtime": spec.runtime if spec else None,
        "workers_up": sum(1 for w in workers if w.health in LIVE and w.health != "stopping"),
        "workers_wanted": 0 if deleted or spec is None else spec.replicas,
        "controller": "running" if running else "deleted" if deleted else
        "disabled" if spec is not None and not spec.controller_enabled else "down",
        "queue": {"queued": queue.queued, "running": queue.running,
                  "succeeded": queue.succeeded, "failed": queue.failed,
                  "cancelled": queue.cancelled},
    }


def pueue_group_sharers(pool: Pool) -> list[str]:
    """The other pools of this state directory, applied and not deleted, whose pueue
    group is this pool's on the same daemon (its ``--config``): two controllers would
    set one group's size back and forth, and each take the other's tasks for its own."""
    spec = pool.spec
    if spec is None or spec.pueue is None:
        return []
    sharers = []
    for name in known_pools(pool.paths.state_dir):
        if name == pool.name:
            continue
        paths = pool_paths(pool.paths.state_dir, name)
        try:
            with Store(paths.store) as store:
                latest, deleted = store.latest_spec(), store.meta_value(DELETED_KEY)
        except ReconcilerError:  # a store we cannot read is not this pool's business
            continue
        other = spec_from_document(latest[1]).pueue if latest else None
        if other is not None and not deleted and other.group == spec.pueue.group \
                and other.config == spec.pueue.config:
            sharers.append(name)
    return sharers


def pueue_group_shared(pool: Pool) -> str | None:
    """``pueue group G is already the pool of P on the same pueue daemon``, when it is."""
    sharers = pueue_group_sharers(pool)
    if not sharers or pool.spec is None or pool.spec.pueue is None:
        return None
    return (f"pueue group {pool.spec.pueue.group} is already the pool of "
            f"{', '.join(sharers)} on the same pueue daemon")


def check_pueue_group(pool: Pool) -> None:
    """Refuse a pueue group another pool of this state directory already has."""
    shared = pueue_group_shared(pool)
    if shared:
        raise PoolError(shared, hint="give each pool its own pueue.group (or delete the "
                        "other pool)")


def program_problems(spec: PoolSpec) -> list[ReconcilerError]:
    """The first word of ``worker.command``, of each ``worktrees.setup`` step and of each
    hook must be a program the workers can start: a bare name found on the PATH they
    get, or an absolute path to an executable file.  A relative path (run inside the
    task's worktree) and a word with a placeholder are left to run time."""
    search = dict(spec.worker.env).get("PATH", os.environ.get("PATH", ""))
    steps = [("worker.command", spec.worker.command)]
    steps += [(f"worktrees.setup[{i}]", argv) for i, argv in enumerate(spec.worktrees.setup)]
    steps += [(f"hooks.onSuccess[{i}]", argv) for i, argv in enumerate(spec.hooks.on_success)]
    steps += [(f"hooks.onFailure[{i}]", argv) for i, argv in enumerate(spec.hooks.on_failure)]
    problems: list[ReconcilerError] = []
    for where, argv in steps:
        program = argv[0] if argv else ""
        if not program or "{" in program or ("/" in program and not program.startswith("/")):
            continue
        if "/" in program:
            if not (Path(program).is_file() and os.access(program, os.X_OK)):
                problems.append(ReconcilerError(
                    f"{where}: {program} is not an executable file",
                    hint="fix the path, or chmod +x it (apply --force skips this check)"))
        elif shutil.which(program, path=search) is None:
            problems.append(ReconcilerError(
                f"{where}: program {program!r} is not found on PATH ({search})",
                hint="install it, give its full path, or set PATH in worker.env "
                     "(apply --force skips this check)"))
    return problems


def check_tmux_socket(spec: PoolSpec, paths: PoolPaths) -> None:
    """Refuse a ``tmux.socket`` whose server no pool started (``tmux -L default`` is
    the operator's own server): the pool's windows would land among their sessions."""
    socket = pool_socket(paths.root, spec.tmux_socket, paths.tmux_conf)
    if foreign_server(socket):
        raise RuntimeBackendError(
            f"tmux.socket {spec.tmux_socket!r} ({socket}) is used by a tmux server that "
            "reconciler did not start",
            hint="give the pool a socket of its own, e.g. tmux.socket: "
                 f"reconciler-{spec.name} (apply --force uses that server anyway)")


def read_token(path: Path) -> str:
    """The bearer token: the first line of ``path``, which must not be empty."""
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReconcilerError(f"metrics.bearerTokenFile {path}: cannot read it "
                              f"({getattr(exc, 'strerror', None) or type(exc).__name__})",
                              hint="write the token into that file (one line)") from exc
    if not token or not token[0].strip():
        raise ReconcilerError(f"metrics.bearerTokenFile {path} is empty",
                              hint="write the token into that file (one line)")
    return token[0].strip()


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
