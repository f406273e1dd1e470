"""What a deleted pool keeps, where, and ``delete --purge``, which drops it.

``reconcile delete`` stops the pool but keeps its store (queue, attempts, history,
events), its logs and prompts, and the task branches and worktrees in the
repository, so ``apply`` brings it back as it was.  ``delete --purge`` also
removes the pool's state directory (``<state dir>/pools/<name>/``), after which
``reconcile pools`` no longer lists it and an ``apply`` of its spec starts fresh.

Task branches stay, purged or not: they are git's, in the operator's repository,
and hold the agents' work.  Worktrees are checked out files git knows about, some
perhaps holding uncommitted work: purge refuses while the pool has any, and names
them, rather than deleting them from under git (``reconcile prune`` first).
Purging runs only inside ``delete``, holding the pool lock and the controller's
lock once every worker has stopped, and only when no attempt is still running,
so nothing of the pool can write to what it removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.branches import pool_branch_tips
from reconciler.errors import PoolError, ReconcilerError
from reconciler.naming import branch_directory
from reconciler.observe.git import all_pool_worktrees
from reconciler.paths import PoolPaths
from reconciler.specmodel import PoolSpec
from reconciler.store.port import StorePort

STORE_FILES = ("store.db", "store.db-wal", "store.db-shm")
REMOVE_TRIES = 5


@dataclass(frozen=True)
class Remains:
    """What the pool keeps outside its store once deleted, and where."""

    repo: Path
    branch_directory: str  # e.g. reconciler/pool/ ('' when the naming has no directory)
    branches: int  # the pool's task branches still in the repository
    worktree_root: Path
    worktrees: tuple[str, ...]  # the pool's worktrees git still knows
    unknown: str | None = None  # why git could not tell (then purge refuses)


def remains(paths: PoolPaths, spec: PoolSpec, store: StorePort) -> Remains:
    """The pool's task branches (recorded by its attempts, fitting its naming) and worktrees
    still in its repository; none when the repository cannot be read."""
    root = paths.worktree_root(spec.worktrees.dir)
    directory = branch_directory(spec.worktrees.branch, pool=spec.name)
    try:
        recorded = store.attempt_branches()
        branches = sum(1 for b in pool_branch_tips(spec.repo, spec.worktrees.branch, spec.name)
                       if b in recorded)
        trees = all_pool_worktrees(spec.repo, root)
    except ReconcilerError as exc:
        # no repository any more: nothing of the pool is left in it; but when git cannot
        # answer, purge must not guess that none of its worktrees is left
        gone = not spec.repo.exists()
        return Remains(spec.repo, directory, 0, root, (), None if gone else exc.one_line())
    return Remains(spec.repo, directory, branches, root, tuple(trees))


@dataclass
class Purged:
    """What ``delete --purge`` removed: each path with what it held."""

    removed: list[tuple[str, str]] = field(default_factory=list)


def check_purgeable(paths: PoolPaths, store: StorePort, left: Remains) -> None:
    """Refuse (one line, nothing removed) while anything of the pool could still write to
    its state, or while git still has worktrees of the pool."""
    running = store.running_attempts()
    if running:
        first = running[0]
        raise PoolError(f"pool {paths.name} is deleted but not purged: attempt "
                        f"{first.number} of task {first.task_id} is still running",
                        hint=f"wait for it to end (`reconcile task show {first.task_id}`), "
                        "then `reconcile delete --purge` again")
    if left.unknown is not None:
        raise PoolError(f"pool {paths.name} is deleted but not purged: cannot tell which of "
                        f"its worktrees git still has in {left.repo} ({left.unknown})",
                        hint="make the repository readable again (or remove the pool's "
                        "worktrees by hand), then `reconcile delete --purge` again")
    if left.worktrees:
        raise PoolError(f"pool {paths.name} is deleted but not purged: {len(left.worktrees)} "
                        f"worktree(s) of it are left in {left.repo}, e.g. {left.worktrees[0]}",
                        hint="remove them first: `reconcile prune` (with --dirty-worktrees "
                        "for those holding uncommitted work; a queued task keeps its worktree "
                        "until `reconcile task cancel --queued`), or `git worktree remove "
                        "PATH`; then `reconcile delete --purge` again")
    inside = sorted(p.name for p in paths.default_worktrees.iterdir()) \
        if paths.default_worktrees.is_dir() else []
    if inside:  # worktrees of an earlier worktrees.dir, or of a repository since moved
        raise PoolError(f"pool {paths.name} is deleted but not purged: "
                        f"{paths.default_worktrees} still holds {len(inside)} worktree(s) "
                        f"(e.g. {inside[0]}) that purging would delete with their files",
                        hint="look at them, then `git worktree remove PATH` in their "
                        "repository (or remove them by hand); then `reconcile delete "
                        "--purge` again")


def purge_state(paths: PoolPaths) -> Purged:
    """Remove the pool's state directory: store, logs, prompts and the rest.

    The directory must be the pool's own (``<state dir>/pools/<name>``, a real
    directory, not a symbolic link); nothing outside it is touched (``rmtree``
    removes a symlink inside it, never what it points to).  The store goes first,
    so a purge cut short leaves no pool that looks whole.
    """
    root = paths.root
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return Purged()
    if not stat.S_ISDIR(info.st_mode) or \
            root.resolve() != (paths.state_dir / "pools").resolve() / paths.name:
        raise PoolError(f"{root} is not a directory of the state directory "
                        f"{paths.state_dir}; not purging it",
                        hint="remove it by hand if it is really the pool's")
    purged = Purged()
    try:
        for name in STORE_FILES:
            path = root / name
            if path.exists():
                path.unlink()
                if name == "store.db":
                    purged.removed.append((str(path),
                                           "the queue, attempts, history and events"))
        for directory, what in ((paths.logs, "log"), (paths.prompts, "prompt")):
            if directory.is_dir() and not directory.is_symlink():
                count = sum(1 for _ in directory.iterdir())
                _remove_tree(directory)
                purged.removed.append((str(directory), f"{count} {what} file(s)"))
        _remove_tree(root)
    except OSError as exc:
        raise PoolError(f"purging {root} stopped: {exc.strerror or exc} ({exc.filename})",
                        hint="fix that (permissions, a busy mount), then `reconcile delete "
                        "--purge` again: it goes on where it stopped") from exc
    purged.removed.append((str(root), "the pool's state directory (locks, tmux config, "
                           "results not yet recorded)"))
    return purged


def _remove_tree(directory: Path) -> None:
    """``rmtree``, tried again while the directory fills meanwhile: a stopped worker's
    reaper writes its exit record (``logs/w-N.exit``) a moment after the worker is gone."""
    for _ in range(REMOVE_TRIES - 1):
        try:
            shutil.rmtree(directory)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
    shutil.rmtree(directory)
