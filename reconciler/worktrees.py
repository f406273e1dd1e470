"""Git worktree lifecycle for task attempts, and safe branch and path names.

Branch names come from a template filled with task data, so they are checked
against git's ref-name rules here (``git check-ref-format``) before git ever
sees them; worktree paths are built from integers and must resolve under the
worktree root.  Every git call is an argv list with ``--`` before refs and
paths, and nothing here ever resets or cleans the operator's own checkout.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from reconciler.errors import GitError
from reconciler.naming import branch_for, check_branch_name, slugify

GIT_TIMEOUT = 120.0

__all__ = ["branch_for", "check_branch_name", "slugify"]  # re-exported: naming is pure

def path_under(root: Path, name: str) -> Path:
    """``root / name``, refusing anything that would resolve outside ``root``."""
    root_resolved = root.resolve()
    candidate = (root_resolved / name).resolve()
    if candidate.parent != root_resolved:
        raise GitError(f"worktree path {name!r} escapes {root_resolved}")
    return candidate


def git(repo: Path, args: Sequence[str], *, check: bool = True,
        timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``git -C repo args...``; raise ``GitError`` with git's own message on failure."""
    argv = ["git", "-C", str(repo), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} in {repo} timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} in {repo} failed: {last_line(proc)}")
    return proc


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """git's last line of complaint (its most specific one), or the exit code."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def check_repo(repo: Path, base_ref: str) -> str:
    """Make sure ``repo`` is a git repository with ``base_ref``; return its commit."""
    if not repo.is_dir():
        raise GitError(f"repo {repo} does not exist", hint="set spec.repo to a git repository")
    inside = git(repo, ["rev-parse", "--is-inside-work-tree"], check=False)
    if inside.returncode != 0:
        raise GitError(f"repo {repo} is not a git repository",
                       hint="run `git init` there or point spec.repo at a repository")
    commit = git(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{base_ref}^{{commit}}"], check=False)
    if commit.returncode != 0:
        raise GitError(f"baseRef {base_ref!r} is not a commit in {repo}",
                       hint="set spec.baseRef to an existing branch, tag or commit")
    return commit.stdout.strip()


def branch_exists(repo: Path, branch: str) -> bool:
    proc = git(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"refs/heads/{branch}"], check=False)
    return proc.returncode == 0


def unique_branch(repo: Path, branch: str, attempt: int) -> str:
    """``branch`` if free, else ``branch-a<attempt>`` (then ``-2``, ``-3``...): never --force."""
    if not branch_exists(repo, branch):
        return branch
    candidate = check_branch_name(f"{branch}-a{attempt}")
    n = 2
    while branch_exists(repo, candidate):
        candidate = check_branch_name(f"{branch}-a{attempt}-{n}")
        n += 1
    return candidate


@dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str


def add_worktree(repo: Path, root: Path, name: str, branch: str, base_ref: str) -> Worktree:
    """Create a worktree at ``root/name`` on the new ``branch`` from ``base_ref``.

    Concurrent workers share the repository's ref and config locks, so a
    failure that names a ``.lock`` file is retried briefly; a lock left behind
    by a git process that died (old, and no git process running) is removed.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_worktree_root(root)
    path = path_under(root, name)
    registered = _registered(repo, path)
    if path.exists() and not registered:
        raise GitError(f"{path} already exists and is not a worktree of {repo}; reconciler "
                       "never deletes what it did not create",
                       hint="move it away, or set worktrees.dir to a directory of its own")
    if registered:  # a worktree of an attempt that died half-way: ours to clear
        remove_worktree(repo, path)
    for attempt in range(5):
        proc = git(repo, ["worktree", "add", "--quiet", "-b", branch, "--", str(path),
                          base_ref], check=False)
        if proc.returncode == 0:
            return Worktree(path, branch)
        if ".lock" not in proc.stderr or attempt == 4:
            raise GitError(f"git worktree add for {branch!r} failed: {last_line(proc)}")
        if not remove_stale_lock(proc.stderr):
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


STALE_LOCK_SECONDS = 30.0
_LOCK_IN_MESSAGE = re.compile(r"'([^']+\.lock)'")


def remove_stale_lock(stderr: str, now: float | None = None) -> bool:
    """Remove the ``*.lock`` file git complained about if nobody can be holding it.

    Only when it is older than ``STALE_LOCK_SECONDS`` and no git process runs
    on the machine: git holds such locks for milliseconds, so an old one with
    no git alive was left by a git that was killed.
    """
    match = _LOCK_IN_MESSAGE.search(stderr)
    if match is None:
        return False
    lock = Path(match.group(1))
    now = time.time() if now is None else now
    try:
        if now - lock.stat().st_mtime < STALE_LOCK_SECONDS or _git_running_in(lock):
            return False
        lock.unlink()
    except OSError:
        return False
    return True


def _git_running_in(lock: Path) -> bool:
    """Whether a git process works in the repository that holds ``lock``."""
    git_dir = next((p for p in lock.parents if p.name == ".git"), lock.parent)
    repo = git_dir.parent
    for proc in psutil.process_iter(["name", "cwd"]):
        cwd = proc.info.get("cwd") or ""
        if proc.info.get("name") == "git" and (cwd == str(repo) or
                                               cwd.startswith(str(repo) + "/")):
            return True
    return False


def commit_wip(worktree: Path, message: str) -> bool:
    """Commit whatever the agent left uncommitted in ``worktree`` to its branch.

    Used before a failed or lost attempt's worktree is removed, so partial
    work survives on the branch.  Returns whether a commit was made.
    """
    status = git(worktree, ["status", "--porcelain"], check=False)
    if status.returncode != 0 or not status.stdout.strip():
        return False
    git(worktree, ["add", "-A", "--", "."])
    git(worktree, ["-c", "user.name=reconciler", "-c", "user.email=reconciler@localhost",
                   "commit", "--quiet", "--no-verify", "-m", message])
    return True


def _registered(repo: Path, path: Path) -> bool:
    return str(path) in list_worktrees(repo)


def list_worktrees(repo: Path) -> list[str]:
    """Paths of every worktree git knows for ``repo`` (one ``git worktree list`` call)."""
    proc = git(repo, ["worktree", "list", "--porcelain"], check=False)
    return [line.removeprefix("worktree ") for line in proc.stdout.splitlines()
            if line.startswith("worktree ")]


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove a task's worktree (never the main checkout); its branch stays.

    ``git worktree prune`` runs only when ``remove`` failed: pruning while
    another worker is half-way through ``worktree add`` deletes that worker's
    administrative directory (call this under ``repo_lock``).
    """
    if path.resolve() == repo.resolve():
        raise GitError(f"refusing to remove the repository's own checkout {repo}")
    proc = git(repo, ["worktree", "remove", "--force", "--", str(path)], check=False)
    if proc.returncode != 0:
        if (path / ".git").is_file():  # a worktree git could not remove: ours, delete it
            shutil.rmtree(path, ignore_errors=True)
        git(repo, ["worktree", "prune"], check=False)


def check_worktree_root(root: Path) -> None:
    """Refuse a worktree root that another user owns or that others may write to: they
    could plant a directory or a symlink where an agent's worktree is about to be."""
    info = root.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise GitError(f"worktree root {root} is owned by uid {info.st_uid} with mode "
                       f"{info.st_mode & 0o7777:o}: others could write there",
                       hint="use a directory of your own that only you can write to "
                            "(worktrees.dir), e.g. chmod 700 it")


@contextmanager
def repo_lock(lock_dir: Path, repo: Path) -> Iterator[None]:
    """Serialise worktree add/remove/prune on one repository across workers and pools.

    git locks refs and the index itself, but not the sequence "create the
    worktree's admin dir, then check out", which a concurrent prune can break.
    """
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]
    fd = os.open(lock_dir / f"repo-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
