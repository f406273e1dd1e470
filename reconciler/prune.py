"""``reconcile prune``: remove the worktrees, branches and logs that ended attempts left.

``reconciler.pruneplan`` decides; this module gathers what it decides on (the
store's attempts, git's worktrees and branches, the log files) and carries the
decisions out.  Everything, the reading of the store included, happens under the
repository's worktree lock, which every worker takes to add a worktree or create a
branch, and which every attempt records its branch and worktree before it takes:
no attempt can start on something prune has decided to remove.

Only the pool's own things are touched: worktrees git knows under the pool's
worktree root (``task-*``, ``worker-*``; each path checked to resolve there, so a
symlink never leads out), branches that fit the pool's naming, and log files in
the pool's own ``logs/`` directory (regular files, never a symlink), each of them
recorded by an attempt of the pool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.branches import checked_out_in, delete_branches, pool_branch_tips
from reconciler.errors import ReconcilerError
from reconciler.naming import branch_directory
from reconciler.observe.git import all_pool_worktrees
from reconciler.paths import PoolPaths
from reconciler.pruneplan import Leftover, PruneInputs, PruneOptions, PrunePlan, plan_prune
from reconciler.specmodel import PoolSpec
from reconciler.store.port import StorePort
from reconciler.worktrees import (
    commit_wip,
    has_uncommitted,
    path_under,
    remove_worktree,
    repo_lock,
)

ATTEMPT_LOG = re.compile(r"task-[0-9]+-a[0-9]+\.log")


@dataclass
class PruneOutcome:
    plan: PrunePlan
    done: list[Leftover] = field(default_factory=list)  # removed (dry run: would be)
    failed: list[Leftover] = field(default_factory=list)  # each with why it is still there
    # each branch deleted (or that would be) -> the commit it pointed at, to get it back
    tips: dict[str, str] = field(default_factory=dict)


def prune_leftovers(paths: PoolPaths, spec: PoolSpec, store: StorePort,
                    options: PruneOptions, *, pool_deleted: bool, now: float,
                    dry_run: bool = False) -> PruneOutcome:
    """Decide and (unless ``dry_run``) remove what ended attempts of the pool left."""
    root = paths.worktree_root(spec.worktrees.dir)
    with repo_lock(paths.repo_locks, spec.repo):
        inputs = _gather(paths, spec, store, root, pool_deleted=pool_deleted, now=now)
        plan = plan_prune(inputs, options)
        outcome = PruneOutcome(plan)
        if dry_run:
            outcome.done = list(plan.remove)
            outcome.tips = _tips(spec, item_names(plan, "branch"))
            return outcome
        for item in plan.remove:
            if item.kind == "worktree":
                _remove_worktree(spec.repo, root, item, outcome)
        _delete_branches(spec, item_names(plan, "branch"), plan, outcome)
    for item in plan.remove:
        if item.kind == "log":
            _remove_log(item, outcome)
    return outcome


def item_names(plan: PrunePlan, kind: str) -> list[str]:
    return [item.name for item in plan.remove if item.kind == kind]


def _gather(paths: PoolPaths, spec: PoolSpec, store: StorePort, root: Path, *,
            pool_deleted: bool, now: float) -> PruneInputs:
    attempts = store.attempts()
    statuses = store.task_statuses(sorted({a.task_id for a in attempts}))
    worktrees = all_pool_worktrees(spec.repo, root)
    running = {a.worktree for a in attempts if a.status == "running"}
    uncommitted = {path: _uncommitted(Path(path)) for path in worktrees if path not in running}
    branches = list(pool_branch_tips(spec.repo, spec.worktrees.branch, spec.name))
    return PruneInputs(attempts=attempts, task_statuses=statuses, worktrees=worktrees,
                       uncommitted=uncommitted, branches=branches,
                       checked_out=checked_out_in(spec.repo),
                       logs=_own_logs(paths.logs, [a.log_path for a in attempts if a.log_path]),
                       pool_deleted=pool_deleted, now=now)


def _uncommitted(worktree: Path) -> str | None:
    """None when removing ``worktree`` loses nothing (nothing uncommitted, or the directory
    is gone already), ``dirty`` when it holds work not on its branch, else git's error."""
    if not worktree.is_dir():
        return None
    try:
        return "dirty" if has_uncommitted(worktree) else None
    except ReconcilerError as exc:
        return exc.one_line()


def _own_logs(logs: Path, recorded: list[str]) -> set[str]:
    """The recorded log paths that are regular files (not symlinks) named as an attempt's
    log, directly in the pool's ``logs`` directory (symlinks in the path resolved)."""
    try:
        present = {entry.name for entry in os.scandir(logs)
                   if entry.is_file(follow_symlinks=False) and ATTEMPT_LOG.fullmatch(entry.name)}
    except OSError:
        return set()
    home = logs.resolve()
    parents: dict[str, bool] = {}
    own = set()
    for text in recorded:
        path = Path(text)
        parent = str(path.parent)
        if parent not in parents:
            parents[parent] = path.parent.resolve() == home
        if parents[parent] and path.name in present:
            own.add(text)
    return own


def _remove_worktree(repo: Path, root: Path, item: Leftover, outcome: PruneOutcome) -> None:
    """Remove one worktree (the caller holds the repository lock), its uncommitted work
    committed to its branch first when ``--dirty-worktrees`` asked for it."""
    path = Path(item.name)
    try:
        if str(path_under(root, path.name)) != item.name:  # resolves symlinks: never out
            raise ReconcilerError(f"{path} is not under the worktree root {root}")
        if item.commit_first:
            commit_wip(path, f"reconciler: uncommitted work of task {item.task_id} left in "
                       f"{path.name}, committed by reconcile prune")
        remove_worktree(repo, path)
    except ReconcilerError as exc:
        outcome.failed.append(Leftover("worktree", item.name, exc.one_line(), item.task_id))
        return
    if path.exists():
        outcome.failed.append(Leftover("worktree", item.name, "git could not remove it "
                                       "(see `git worktree remove`)", item.task_id))
        return
    outcome.done.append(item)


def _delete_branches(spec: PoolSpec, names: list[str], plan: PrunePlan,
                     outcome: PruneOutcome) -> None:
    """Delete the branches decided on, except one still checked out (its worktree could
    not be removed): git would refuse it, and that worktree needs it."""
    if not names:
        return
    holders = checked_out_in(spec.repo)
    by_name = {item.name: item for item in plan.remove if item.kind == "branch"}
    free = []
    for name in names:
        if name in holders:
            outcome.failed.append(Leftover("branch", name, f"still checked out in the "
                                           f"worktree {holders[name]}", by_name[name].task_id))
        else:
            free.append(name)
    outcome.tips = _tips(spec, free)  # now: a rescue commit may have moved one
    deleted, refused = delete_branches(spec.repo, free,
                                       branch_directory(spec.worktrees.branch, pool=spec.name))
    outcome.done.extend(by_name[name] for name in deleted)
    outcome.failed.extend(Leftover("branch", name, why, by_name[name].task_id)
                          for name, why in refused.items())


def _tips(spec: PoolSpec, names: list[str]) -> dict[str, str]:
    """The commit each of ``names`` points at: printed with its deletion, so a branch
    pruned by mistake is one ``git branch NAME COMMIT`` away."""
    tips = pool_branch_tips(spec.repo, spec.worktrees.branch, spec.name)
    return {name: tips[name] for name in names if name in tips}


def _remove_log(item: Leftover, outcome: PruneOutcome) -> None:
    path = Path(item.name)
    try:
        path.unlink()
    except FileNotFoundError:
        pass  # gone meanwhile: nothing left to remove
    except OSError as exc:
        outcome.failed.append(Leftover("log", item.name, exc.strerror or str(exc),
                                       item.task_id))
        return
    outcome.done.append(item)
