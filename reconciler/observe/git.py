"""Observe the task worktrees of a pool with one ``git worktree list --porcelain``."""

from __future__ import annotations

from pathlib import Path

from reconciler.worktrees import list_worktrees

TASK_WORKTREE_PREFIX = "task-"


def task_worktrees(repo: Path, root: Path) -> tuple[str, ...]:
    """Worktrees git knows under ``root`` that a worker created (``task-<id>-a<n>``)."""
    if not repo.is_dir():
        return ()
    root_text = str(root.resolve())
    found = []
    for path in list_worktrees(repo):
        candidate = Path(path)
        if str(candidate.parent) == root_text and candidate.name.startswith(TASK_WORKTREE_PREFIX):
            found.append(path)
    return tuple(sorted(found))
