"""Observe the task worktrees of a pool with one ``git worktree list --porcelain``."""

from __future__ import annotations

from pathlib import Path

from reconciler.worktrees import list_worktrees

TASK_WORKTREE_PREFIX = "task-"
WORKER_WORKTREE_PREFIX = "worker-"  # worktrees.reuse: perWorker


def task_worktrees(repo: Path, root: Path) -> tuple[str, ...]:
    """Worktrees git knows under ``root`` that a worker created (``task-<id>-a<n>``)."""
    return pool_worktrees(repo, root)[0]


def all_pool_worktrees(repo: Path, root: Path) -> list[str]:
    """Every worktree of the pool under ``root``, task and per-worker alike (none when
    ``root`` does not exist yet)."""
    if not root.is_dir():
        return []
    tasks, workers = pool_worktrees(repo, root)
    return [*tasks, *workers]


def pool_worktrees(repo: Path, root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The task worktrees (``task-<id>-a<n>``) and the per-worker ones (``worker-<id>``)
    git knows under ``root``, from one ``git worktree list``."""
    if not repo.is_dir():
        return (), ()
    root_text = str(root.resolve())
    tasks, workers = [], []
    for path in list_worktrees(repo):
        candidate = Path(path)
        if str(candidate.parent) != root_text:
            continue
        if candidate.name.startswith(TASK_WORKTREE_PREFIX):
            tasks.append(path)
        elif candidate.name.startswith(WORKER_WORKTREE_PREFIX):
            workers.append(path)
    return tuple(sorted(tasks)), tuple(sorted(workers))
