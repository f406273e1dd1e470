"""Task branches as git sees them: how many commits each got, and pruning the empty ones.

Cheap at the scale of a backlog: whatever the number of branches, counting takes
two git calls (``for-each-ref`` for the tips, one ``rev-list`` for every commit
beyond the base), and pruning one more (``git branch -D`` with every name).  Branch
names are checked against git's ref rules and the pool's naming before git sees
them, after ``--``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import GitError
from reconciler.naming import branch_directory, branch_pattern, check_branch_name
from reconciler.worktrees import GIT_TIMEOUT, git, last_line

DELETE_BATCH = 200  # names per `git branch -D`, well under any argv limit


def branch_tips(repo: Path, directory: str = "") -> dict[str, str]:
    """Every local branch under ``directory`` (``reconciler/pool/``; '' for all) and
    the commit it points at: one ``git for-each-ref``."""
    proc = git(repo, ["for-each-ref", "--format=%(objectname) %(refname)",
                      f"refs/heads/{directory}".rstrip("/")])
    tips = {}
    for line in proc.stdout.splitlines():
        oid, _, ref = line.partition(" ")
        tips[ref.removeprefix("refs/heads/")] = oid
    return tips


def pool_branch_tips(repo: Path, template: str, pool: str) -> dict[str, str]:
    """The branches of ``repo`` that the pool's ``worktrees.branch`` naming fits, and
    the commit each points at (whether an attempt of the pool made one is the
    caller's to check)."""
    naming = branch_pattern(template, pool=pool)
    return {branch: tip for branch, tip
            in branch_tips(repo, branch_directory(template, pool=pool)).items()
            if naming.fullmatch(branch)}


def commits_beyond(repo: Path, base_ref: str, tips: dict[str, str],
                   branches: Iterable[str]) -> dict[str, int | None]:
    """For each of ``branches``: how many commits it has that ``base_ref`` does not
    (``git rev-list --count base..branch``), None when the branch does not exist.

    One ``git rev-list --parents --stdin`` lists every commit beyond the base reachable
    from any tip; each branch's count is then a walk of that graph in memory.  A base
    git cannot resolve is a ``GitError``.
    """
    wanted = list(dict.fromkeys(branches))
    present = {b: tips[b] for b in wanted if b in tips}
    graph: dict[str, list[str]] = {}
    if present:
        stdin = "".join(f"{oid}\n" for oid in dict.fromkeys(present.values()))
        proc = git_input(repo, ["rev-list", "--parents", "--stdin"],
                         stdin + f"^{base_ref}\n")
        for line in proc.splitlines():
            commit, *parents = line.split()
            graph[commit] = parents
    counts: dict[str, int | None] = {}
    for branch in wanted:
        counts[branch] = None if branch not in present else _reachable(graph, present[branch])
    return counts


def _reachable(graph: dict[str, list[str]], tip: str) -> int:
    """How many commits of ``graph`` (those beyond the base) ``tip`` reaches."""
    seen, todo = set(), [tip]
    while todo:
        commit = todo.pop()
        if commit in graph and commit not in seen:
            seen.add(commit)
            todo.extend(graph[commit])
    return len(seen)


def git_input(repo: Path, args: list[str], stdin: str) -> str:
    """``git -C repo args`` fed ``stdin``; its output, or ``GitError`` with git's message."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], input=stdin, text=True,
                              capture_output=True, timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} in {repo} timed out after {GIT_TIMEOUT:.0f}s") from exc
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} in {repo} failed: {last_line(proc)}")
    return proc.stdout


def checked_out_branches(repo: Path) -> set[str]:
    """Branches checked out in any worktree of ``repo``, the main checkout included."""
    return set(checked_out_in(repo))


def checked_out_in(repo: Path) -> dict[str, str]:
    """Each branch checked out in a worktree of ``repo`` (the main checkout included) and
    the path of that worktree: one ``git worktree list --porcelain``."""
    proc = git(repo, ["worktree", "list", "--porcelain"])
    found, path = {}, ""
    for line in proc.stdout.splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line.startswith("branch refs/heads/"):
            found[line.removeprefix("branch refs/heads/")] = path
    return found


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)  # or, with dry_run, would be
    kept: dict[str, str] = field(default_factory=dict)  # empty branch -> why it stays
    with_commits: int = 0  # branches of the pool that have work: never touched
    failed: dict[str, str] = field(default_factory=dict)  # git refused: branch -> why


def prune_empty_branches(repo: Path, base_ref: str, *, naming: re.Pattern[str],
                         directory: str, recorded: dict[str, bool],
                         dry_run: bool = False) -> PruneResult:
    """Delete the pool's task branches that got no commit beyond ``base_ref``.

    A branch is the pool's when its name fits the pool's ``naming`` and an attempt of
    the pool recorded it (``recorded``: branch -> whether an attempt on it is still
    running).  It stays when its attempt runs or any worktree has it checked out.
    Call it holding the repository's worktree lock, so no worktree is added meanwhile.
    """
    result = PruneResult()
    tips = branch_tips(repo, directory)
    ours = sorted(b for b in tips if naming.fullmatch(b) and b in recorded)
    counts = commits_beyond(repo, base_ref, tips, ours)
    checked_out = checked_out_branches(repo)
    empty = []
    for branch in ours:
        if counts[branch]:
            result.with_commits += 1
        elif recorded[branch]:
            result.kept[branch] = "its attempt is running"
        elif branch in checked_out:
            result.kept[branch] = "checked out in a worktree"
        else:
            empty.append(check_branch_name(branch))
    if dry_run:
        result.deleted = empty
        return result
    result.deleted, result.failed = delete_branches(repo, empty, directory)
    return result


def delete_branches(repo: Path, branches: list[str],
                    directory: str) -> tuple[list[str], dict[str, str]]:
    """``git branch -D`` every one of ``branches`` (checked names, all under ``directory``),
    a batch of names per call; returns those deleted and, for each git refused, why.
    What is gone is read back from git, not from its exit code."""
    for start in range(0, len(branches), DELETE_BATCH):
        batch = [check_branch_name(b) for b in branches[start:start + DELETE_BATCH]]
        git(repo, ["branch", "-D", "--", *batch], check=False)  # refusals are found below
    left = branch_tips(repo, directory)
    failed = {b: "git refused to delete it (see `git branch -D`)" for b in branches
              if b in left}
    return [b for b in branches if b not in left], failed


def known_counts(repo: Path, base_ref: str, directory: str,
                 branches: Collection[str]) -> dict[str, int | None]:
    """``commits_beyond`` for ``task list``: every branch None when git cannot tell
    (no repository, no base), rather than failing the listing."""
    try:
        return commits_beyond(repo, base_ref, branch_tips(repo, directory), branches)
    except GitError:
        return dict.fromkeys(branches)
