"""What ``reconcile prune`` removes of what ended attempts left, and what it keeps, and why.

Pure: it is handed what the store recorded (attempts, task statuses) and what git and
the disk hold (the pool's worktrees, which of them hold uncommitted work, its
branches, which are checked out where, its log files), and returns one decision per
worktree, branch and log, each with its reason.  ``reconciler.prune`` gathers the
inputs and carries the decisions out, so ``--dry-run`` and a real run decide alike.

The rules, most cautious first:

- Only what an attempt of the pool recorded is the pool's (the caller also passes
  only names that fit the pool's naming and paths under its roots).
- Nothing of a running attempt, nor of a task that is queued or running (it may
  run again, and a worker's own worktree is used by its next task).
- A worktree that holds uncommitted work stays unless ``dirty`` says otherwise;
  then the work is committed to its branch before the worktree goes, and that
  branch stays, whatever ``branches`` says.
- A worktree whose checked-out branch is not its attempt's is another pool's (two
  pools sharing ``worktrees.dir`` name worktrees alike): it stays.
- A worker's own worktree (``worktrees.reuse: perWorker``) is the worker's while the
  pool exists: ``apply`` removes it once the worker is gone; prune only after delete.
- Branches by task outcome: ``unsucceeded`` (the default) deletes those of failed or
  cancelled tasks, ``all`` those of succeeded tasks too, ``none`` no branch.  A branch
  checked out in a worktree that stays, stays.
- Logs of attempts that ended at least ``older_than`` seconds ago.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.durations import format_duration

if TYPE_CHECKING:  # the CLI reads BRANCH_POLICIES for its parser: every command pays imports
    from reconciler.model import AttemptRow

BRANCH_POLICIES = ("unsucceeded", "all", "none")
DEFAULT_BRANCH_POLICY = "unsucceeded"
DEFAULT_OLDER_THAN = "168h"  # a week: long enough to look into last week's failures
_DELETED_TASKS = {"unsucceeded": frozenset({"failed", "cancelled"}),
                  "all": frozenset({"failed", "cancelled", "succeeded"}), "none": frozenset()}
WORKER_WORKTREE_PREFIX = "worker-"


@dataclass(frozen=True)
class Leftover:
    """One worktree (its path), branch (its name) or log (its path), and why it goes or stays."""

    kind: str  # worktree, branch or log
    name: str
    reason: str
    task_id: int | None = None
    commit_first: bool = False  # a worktree with uncommitted work: commit it, then remove


@dataclass(frozen=True)
class PruneInputs:
    """Everything the decision needs, gathered by ``reconciler.prune``."""

    attempts: Sequence[AttemptRow]
    task_statuses: Mapping[int, str]
    worktrees: Collection[str]  # the pool's worktrees git knows (task-* and worker-*)
    uncommitted: Mapping[str, str | None]  # worktree -> None (clean), "dirty", or git's error
    branches: Collection[str]  # the pool's branches (its naming) that exist
    checked_out: Mapping[str, str]  # branch -> the worktree that has it checked out
    logs: Collection[str]  # the pool's attempt log files that exist
    pool_deleted: bool
    now: float


@dataclass(frozen=True)
class PruneOptions:
    branches: str = DEFAULT_BRANCH_POLICY
    older_than: float = 7 * 24 * 3600.0
    dirty: bool = False  # also worktrees with uncommitted work (committed first)


@dataclass
class PrunePlan:
    remove: list[Leftover] = field(default_factory=list)
    keep: list[Leftover] = field(default_factory=list)
    recent_logs: int = 0  # logs of attempts that ended less than older_than ago


def plan_prune(inputs: PruneInputs, options: PruneOptions) -> PrunePlan:
    """Decide, for each of the pool's leftovers, whether prune removes it, and why."""
    plan = PrunePlan()
    latest_at: dict[str, AttemptRow] = {}
    running_branches: set[str] = set()
    tasks_of_branch: dict[str, set[int]] = {}
    for attempt in inputs.attempts:  # oldest first: the latest attempt of a path wins
        if attempt.worktree:
            latest_at[attempt.worktree] = attempt
        if attempt.branch:
            tasks_of_branch.setdefault(attempt.branch, set()).add(attempt.task_id)
            if attempt.status == "running":
                running_branches.add(attempt.branch)
    running_worktrees = {a.worktree for a in inputs.attempts if a.status == "running"}
    removed_paths: set[str] = set()
    committed_paths: set[str] = set()  # removed once their uncommitted work is committed
    for path in sorted(inputs.worktrees):
        decision = _worktree(path, latest_at.get(path), path in running_worktrees,
                             inputs, options)
        (plan.remove if decision[0] else plan.keep).append(decision[1])
        if decision[0]:
            removed_paths.add(path)
            if decision[1].commit_first:
                committed_paths.add(path)
    if options.branches != "none":
        deleted = _DELETED_TASKS[options.branches]
        for branch in sorted(inputs.branches):
            if branch not in tasks_of_branch:
                continue  # no attempt of the pool made it: not the pool's
            go, leftover = _branch(branch, sorted(tasks_of_branch[branch]),
                                   branch in running_branches, deleted, removed_paths,
                                   committed_paths, inputs)
            (plan.remove if go else plan.keep).append(leftover)
    _logs(plan, inputs, options)
    return plan


def _worktree(path: str, attempt: AttemptRow | None, running: bool, inputs: PruneInputs,
              options: PruneOptions) -> tuple[bool, Leftover]:
    def keep(reason: str) -> tuple[bool, Leftover]:
        return False, Leftover("worktree", path, reason, task_id)

    task_id = attempt.task_id if attempt else None
    if attempt is None:
        return keep("no attempt of this pool recorded it")
    if running:
        return keep("its attempt is running")
    task_status = inputs.task_statuses.get(attempt.task_id, "gone")
    if task_status in ("queued", "running"):
        return keep(f"task {attempt.task_id} is {task_status}: it may run again")
    own = path.rsplit("/", 1)[-1].startswith(WORKER_WORKTREE_PREFIX)
    on = next((b for b, p in inputs.checked_out.items() if p == path), None)
    if not own and attempt.branch and on is not None and on != attempt.branch:
        # another pool's attempt at the same path (two pools sharing worktrees.dir)
        return keep(f"it has branch {on} checked out, not its attempt's {attempt.branch}: "
                    "not this pool's")
    if own and not inputs.pool_deleted:
        worker = path.rsplit("/", 1)[-1].removeprefix(WORKER_WORKTREE_PREFIX)
        return keep(f"worker {worker}'s own worktree (worktrees.reuse: perWorker): apply "
                    "removes it once the worker is gone, delete with the pool")
    state = inputs.uncommitted.get(path)
    if state not in (None, "dirty"):
        return keep(f"git cannot tell whether it holds uncommitted work: {state}")
    why = f"left by attempt {attempt.number} of task {attempt.task_id} ({task_status})"
    if state == "dirty":
        kept_by = " (worktrees.onDirty: keep)" if attempt.rescued == "kept" else ""
        if not options.dirty:
            return keep(f"holds uncommitted work{kept_by}; --dirty-worktrees commits it to "
                        "its branch and removes the worktree")
        return True, Leftover("worktree", path, f"{why}; its uncommitted work{kept_by} is "
                              "committed to its branch first", task_id, commit_first=True)
    return True, Leftover("worktree", path, why, task_id)


def _branch(branch: str, task_ids: list[int], running: bool, deleted: frozenset[str],
            removed_paths: set[str], committed_paths: set[str],
            inputs: PruneInputs) -> tuple[bool, Leftover]:
    first = task_ids[0]
    statuses = {t: inputs.task_statuses.get(t, "gone") for t in task_ids}
    if running:
        return False, Leftover("branch", branch, "its attempt is running", first)
    for task_id, status in statuses.items():
        if status in ("queued", "running"):
            return False, Leftover("branch", branch, f"task {task_id} is {status}: it may "
                                   "run again", task_id)
    holder = inputs.checked_out.get(branch)
    if holder is not None and holder in committed_paths:
        return False, Leftover("branch", branch, "it gets the uncommitted work of the "
                               f"worktree {holder} (--dirty-worktrees commits it there)",
                               first)
    if holder is not None and holder not in removed_paths:
        return False, Leftover("branch", branch, f"checked out in the worktree {holder}",
                               first)
    for task_id, status in statuses.items():
        if status in deleted:
            continue
        reason = f"task {task_id} succeeded: the branch holds its work (--branches all " \
            "deletes it)" if status == "succeeded" else f"task {task_id} is {status}"
        return False, Leftover("branch", branch, reason, task_id)
    outcome = ", ".join(f"task {t} {s}" for t, s in statuses.items())
    return True, Leftover("branch", branch, outcome, first)


def _logs(plan: PrunePlan, inputs: PruneInputs, options: PruneOptions) -> None:
    """The logs of attempts that ended at least ``older_than`` ago; a log that any attempt
    still writes, or that one ended more recently, stays (and is only counted)."""
    newest_end: dict[str, float | None] = {}
    attempt_of: dict[str, AttemptRow] = {}
    for attempt in inputs.attempts:
        if not attempt.log_path or attempt.log_path not in inputs.logs:
            continue
        ended = None if attempt.status == "running" else attempt.ended_at
        before = newest_end.get(attempt.log_path, 0.0)
        newest_end[attempt.log_path] = None if ended is None or before is None \
            else max(before, ended)
        attempt_of[attempt.log_path] = attempt
    for path in sorted(newest_end):
        ended = newest_end[path]
        if ended is None or inputs.now - ended < options.older_than:
            plan.recent_logs += 1
            continue
        attempt = attempt_of[path]
        plan.remove.append(Leftover(
            "log", path, f"attempt {attempt.number} of task {attempt.task_id} ended "
            f"{format_duration(inputs.now - ended)} ago", attempt.task_id))
