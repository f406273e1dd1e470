"""Cleaning up (issue 12): ``reconcile prune`` removes what ended attempts left (worktrees,
branches of unsucceeded tasks, old logs) and ``reconcile delete`` says what it keeps and
where, or with ``--purge`` drops it.

The pool's history is built straight into a real store and a real repository (attempts
claimed, their worktrees made by the workers' own code, finished), so no pool has to
run; the CLI is the real one.  One compact test prunes after a real pool ran, to hold the
rest to what real workers record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import AttemptRow, RetryPolicy
from reconciler.pruneplan import Leftover, PruneInputs, PruneOptions, plan_prune
from reconciler.store.sqlite import Store
from reconciler.worktrees import add_worktree
from tests.e2e import (
    add_task,
    apply,
    delete,
    pool_dir,
    reconcile_json,
    show_task,
    state_dir,
    wait_tasks,
)
from tests.helpers import GIT_IDENTITY, git, one_error_line, reconcile, write_spec

DAY = 24 * 3600.0
POOL = "testpool"

# --------------------------------------------------------------------------- the decision


def _attempt(task_id: int, *, status: str = "failed", number: int = 1,
             worktree: str | None = None, branch: str | None = None,
             log: str | None = None, ended_ago: float = 10 * DAY,
             rescued: str | None = None, now: float = 1e9) -> AttemptRow:
    return AttemptRow(id=task_id * 10 + number, task_id=task_id, number=number,
                      worker_id="w-1", status=status, started_at=now - ended_ago - 1,
                      ended_at=None if status == "running" else now - ended_ago,
                      exit_code=None, branch=branch, worktree=worktree, log_path=log,
                      error=None, output_tail=None, lease_expires_at=0.0, rescued=rescued)


def _inputs(attempts: list[AttemptRow], statuses: dict[int, str], **over: Any) -> PruneInputs:
    fields: dict[str, Any] = {
        "attempts": attempts, "task_statuses": statuses,
        "worktrees": [a.worktree for a in attempts if a.worktree],
        "uncommitted": {}, "branches": [a.branch for a in attempts if a.branch],
        "checked_out": {}, "logs": [a.log_path for a in attempts if a.log_path],
        "pool_deleted": False, "now": 1e9}
    fields.update(over)
    return PruneInputs(**fields)


def _decided(plan_items: list[Leftover]) -> dict[str, str]:
    return {item.name: item.reason for item in plan_items}


class TestDecision:
    def test_only_what_may_not_be_needed_again_goes(self) -> None:
        attempts = [
            _attempt(1, worktree="/w/task-1-a1", branch="b/1", log="/l/task-1-a1.log"),
            _attempt(2, status="running", worktree="/w/task-2-a1", branch="b/2",
                     log="/l/task-2-a1.log"),
            _attempt(3, worktree="/w/task-3-a1", branch="b/3", log="/l/task-3-a1.log"),
            _attempt(4, status="succeeded", worktree="/w/task-4-a1", branch="b/4",
                     log="/l/task-4-a1.log", ended_ago=60.0),
            _attempt(5, worktree="/w/task-5-a1", branch="b/5", rescued="kept"),
            _attempt(6, status="cancelled", branch="b/6"),
        ]
        statuses = {1: "failed", 2: "running", 3: "queued", 4: "succeeded", 5: "failed",
                    6: "cancelled"}
        plan = plan_prune(_inputs(attempts, statuses, uncommitted={"/w/task-5-a1": "dirty"},
                                  checked_out={"b/5": "/w/task-5-a1"},
                                  worktrees=[*(a.worktree for a in attempts if a.worktree),
                                             "/w/task-9-a1"]),
                          PruneOptions())
        assert _decided(plan.remove) == {
            "/w/task-1-a1": "left by attempt 1 of task 1 (failed)",
            "/w/task-4-a1": "left by attempt 1 of task 4 (succeeded)",
            "b/1": "task 1 failed", "b/6": "task 6 cancelled",
            "/l/task-1-a1.log": "attempt 1 of task 1 ended 240h00m ago",
            "/l/task-3-a1.log": "attempt 1 of task 3 ended 240h00m ago"}
        assert _decided(plan.keep) == {
            "/w/task-2-a1": "its attempt is running",
            "/w/task-3-a1": "task 3 is queued: it may run again",
            "/w/task-5-a1": "holds uncommitted work (worktrees.onDirty: keep); "
                            "--dirty-worktrees commits it to its branch and removes the worktree",
            "/w/task-9-a1": "no attempt of this pool recorded it",
            "b/2": "its attempt is running", "b/3": "task 3 is queued: it may run again",
            "b/4": "task 4 succeeded: the branch holds its work (--branches all deletes it)",
            "b/5": "checked out in the worktree /w/task-5-a1"}
        assert plan.recent_logs == 2  # task 2's (running) and task 4's (a minute old)

    def test_checked_out_branches_hold_only_while_their_worktree_stays(self) -> None:
        attempts = [_attempt(1, worktree="/w/task-1-a1", branch="b/1"),
                    _attempt(2, worktree="/w/task-2-a1", branch="b/2")]
        inputs = _inputs(attempts, {1: "failed", 2: "failed"},
                         uncommitted={"/w/task-2-a1": "dirty"},
                         checked_out={"b/1": "/w/task-1-a1", "b/2": "/w/task-2-a1"})
        plan = plan_prune(inputs, PruneOptions())
        assert sorted(_decided(plan.remove)) == ["/w/task-1-a1", "b/1"]
        forced = plan_prune(inputs, PruneOptions(dirty=True))
        # the work --dirty-worktrees commits to b/2 keeps b/2, whatever --branches says
        assert sorted(_decided(forced.remove)) == ["/w/task-1-a1", "/w/task-2-a1", "b/1"]
        assert [i.name for i in forced.remove if i.commit_first] == ["/w/task-2-a1"]
        assert _decided(forced.keep)["b/2"] == ("it gets the uncommitted work of the worktree "
                                                "/w/task-2-a1 (--dirty-worktrees commits it "
                                                "there)")

    def test_a_worktree_on_another_branch_is_another_pools(self) -> None:
        """Two pools sharing worktrees.dir name their worktrees alike: pool A's old
        attempt recorded the path that pool B's running task now has."""
        attempts = [_attempt(1, status="succeeded", worktree="/w/task-1-a1", branch="a/1")]
        inputs = _inputs(attempts, {1: "succeeded"}, checked_out={"b/1": "/w/task-1-a1"})
        plan = plan_prune(inputs, PruneOptions(dirty=True))
        assert _decided(plan.remove) == {}
        assert _decided(plan.keep)["/w/task-1-a1"] == ("it has branch b/1 checked out, not "
                                                       "its attempt's a/1: not this pool's")

    @pytest.mark.parametrize(("policy", "deleted"), [
        pytest.param("unsucceeded", ["b/1", "b/3"], id="unsucceeded-by-default"),
        pytest.param("all", ["b/1", "b/2", "b/3"], id="all"),
        pytest.param("none", [], id="none"),
    ])
    def test_branch_policy(self, policy: str, deleted: list[str]) -> None:
        attempts = [_attempt(1, branch="b/1"), _attempt(2, status="succeeded", branch="b/2"),
                    _attempt(3, status="cancelled", branch="b/3")]
        plan = plan_prune(_inputs(attempts, {1: "failed", 2: "succeeded", 3: "cancelled"}),
                          PruneOptions(branches=policy))
        assert sorted(_decided(plan.remove)) == deleted

    def test_a_workers_own_worktree_goes_only_with_the_pool(self) -> None:
        attempts = [_attempt(1, status="succeeded", worktree="/w/worker-w-1")]
        inputs = _inputs(attempts, {1: "succeeded"})
        assert "apply removes it once the worker is gone" in \
            plan_prune(inputs, PruneOptions()).keep[0].reason
        gone = plan_prune(_inputs(attempts, {1: "succeeded"}, pool_deleted=True),
                          PruneOptions())
        assert [i.name for i in gone.remove] == ["/w/worker-w-1"]

    def test_logs_by_age(self) -> None:
        attempts = [_attempt(1, log="/l/a.log", ended_ago=3 * 3600.0),
                    _attempt(2, log="/l/b.log", ended_ago=1 * 3600.0),
                    _attempt(3, log="/l/gone.log")]
        plan = plan_prune(_inputs(attempts, {1: "failed", 2: "failed", 3: "failed"},
                                  logs=["/l/a.log", "/l/b.log"]),
                          PruneOptions(branches="none", older_than=2 * 3600.0))
        assert [i.name for i in plan.remove] == ["/l/a.log"] and plan.recent_logs == 1


# --------------------------------------------------------------------------- a real history


@dataclass
class Left:
    """What one attempt left: its task, worktree, branch and log."""

    task_id: int
    worktree: Path
    branch: str
    log: Path


def _history(host: Path, repo: Path, attempts: list[dict[str, Any]]) -> dict[str, Left]:
    """Record one attempt per entry in the pool's real store, each made as a worker makes
    it (branch and worktree recorded, then created; a log), then ended as ``status`` said
    ``ended_ago`` seconds ago (``running``: not ended).  ``commit``: the agent committed;
    ``dirty``: it left an untracked file; ``kept``: worktrees.onDirty kept it."""
    root = (pool_dir(host) / "worktrees").resolve()
    logs = pool_dir(host) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    made: dict[str, Left] = {}
    with Store(pool_dir(host) / "store.db") as store:
        for entry in attempts:
            title = entry["title"]
            (task_id,) = store.add_tasks([(title, "do it", 0)])
            claim = store.claim_task("w-1", 600)
            assert claim is not None and claim.task.id == task_id
            branch, name = f"reconciler/{POOL}/{task_id}-{title}", f"task-{task_id}-a1"
            log = logs / f"{name}.log"
            assert store.update_attempt(claim, branch=branch, worktree=str(root / name),
                                        log_path=str(log))
            tree = add_worktree(repo, root, name, branch, "main").path
            log.write_text(f"the log of {title}\n")
            if entry.get("commit"):
                (tree / f"{title}.txt").write_text("work\n")
                git(tree, "add", "-A")
                git(tree, *GIT_IDENTITY, "commit", "-q", "-m", title)
            if entry.get("dirty"):
                (tree / "unfinished.txt").write_text("not committed\n")
            if entry.get("kept"):
                store.set_attempt_rescued(claim, "kept")
            if entry["status"] != "running":
                store.finish_attempt(claim, entry["status"], exit_code=0,
                                     policy=RetryPolicy(max_attempts=entry.get("tries", 1)),
                                     now=time.time() - entry.get("ended_ago", 10 * DAY))
            made[title] = Left(task_id, tree, branch, log)
    return made


def _branches(repo: Path) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split())


def _worktrees(repo: Path) -> set[str]:
    return {line.removeprefix("worktree ") for line in
            git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")}


def _by_name(items: list[dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item["reason"] for item in items}


BACKLOG: list[dict[str, Any]] = [
    {"title": "failed", "status": "failed", "commit": True},
    {"title": "succeeded", "status": "succeeded", "commit": True, "ended_ago": 60.0},
    {"title": "dirty", "status": "failed", "dirty": True, "kept": True},
    {"title": "running", "status": "running"},
    {"title": "retried", "status": "failed", "tries": 2},  # queued again: may run again
]


class TestPrune:
    def test_prune_removes_what_ended_attempts_left_and_names_every_path_and_ref(
            self, host: Path, git_repo: Path) -> None:
        spec = write_spec(host, replicas=0, runtime="process")
        reconcile("task", "add", "-f", str(spec), "--title", "creates the store", check=True)
        reconcile("task", "cancel", "1", "-f", str(spec), check=True)
        left = _history(host, git_repo, BACKLOG)
        failed, succeeded, dirty = left["failed"], left["succeeded"], left["dirty"]
        running, retried = left["running"], left["retried"]
        before_branches, before_trees = _branches(git_repo), _worktrees(git_repo)

        dry = reconcile_json("prune", "--dry-run", "-f", str(spec))
        assert dry["dry_run"] and dry["branches"] == "unsucceeded" and dry["failed"] == []
        assert _by_name(dry["removed"]) == {
            str(failed.worktree): f"left by attempt 1 of task {failed.task_id} (failed)",
            str(succeeded.worktree): f"left by attempt 1 of task {succeeded.task_id} "
                                     "(succeeded)",
            failed.branch: f"task {failed.task_id} failed",
            str(failed.log): f"attempt 1 of task {failed.task_id} ended 240h00m ago",
            str(dirty.log): f"attempt 1 of task {dirty.task_id} ended 240h00m ago",
            str(retried.log): f"attempt 1 of task {retried.task_id} ended 240h00m ago"}
        kept = _by_name(dry["kept"])
        assert kept[str(dirty.worktree)].startswith("holds uncommitted work "
                                                    "(worktrees.onDirty: keep)")
        assert kept[dirty.branch] == f"checked out in the worktree {dirty.worktree}"
        assert kept[str(running.worktree)] == kept[running.branch] == "its attempt is running"
        assert kept[retried.branch] == f"task {retried.task_id} is queued: it may run again"
        assert kept[succeeded.branch].startswith(f"task {succeeded.task_id} succeeded")
        assert dry["recent_logs"] == 2  # the running attempt's and the minute-old one
        assert _branches(git_repo) == before_branches
        assert _worktrees(git_repo) == before_trees and failed.log.exists()

        tip = git(git_repo, "rev-parse", f"refs/heads/{failed.branch}").strip()
        assert [r["commit"] for r in dry["removed"] if r["kind"] == "branch"] == [tip]
        done = reconcile("prune", "-f", str(spec), check=True).stdout
        assert f"removed worktree {failed.worktree}: left by attempt 1" in done
        # with the commit it pointed at: a branch pruned by mistake is one command away
        assert (f"deleted branch refs/heads/{failed.branch} (was {tip[:12]}): task "
                f"{failed.task_id} failed") in done
        assert "a deleted branch comes back with: git branch NAME COMMIT" in done
        assert f"removed log {failed.log}: attempt 1 of task {failed.task_id} ended" in done
        assert f"kept worktree {dirty.worktree}: holds uncommitted work" in done
        assert "removed 2 worktree(s), 3 log(s), deleted 1 branch(es)" in done
        assert _branches(git_repo) == before_branches - {failed.branch}
        assert _worktrees(git_repo) == before_trees - {str(failed.worktree),
                                                       str(succeeded.worktree)}
        assert not failed.worktree.exists() and not failed.log.exists()
        assert succeeded.log.exists() and running.log.exists()

        # explicitly: the dirty worktree goes, its work committed to its branch first
        again = reconcile_json("prune", "--dirty-worktrees", "--branches", "none",
                               "--older-than", "0s", "-f", str(spec))
        assert {str(dirty.worktree), str(succeeded.log)} == set(_by_name(again["removed"]))
        assert not dirty.worktree.exists()
        assert "unfinished.txt" in git(git_repo, "show", "--stat", dirty.branch)
        assert "committed by reconcile prune" in git(git_repo, "log", "-1", dirty.branch)

        every = reconcile_json("prune", "--branches", "all", "-f", str(spec))
        assert set(_by_name(every["removed"])) == {succeeded.branch, dirty.branch}
        assert _branches(git_repo) == {"main", running.branch, retried.branch}

    def test_a_branch_git_refuses_to_delete_is_named_and_exits_1(
            self, host: Path, git_repo: Path) -> None:
        spec = write_spec(host, replicas=0, runtime="process")
        reconcile("task", "add", "-f", str(spec), "--title", "first", check=True)
        reconcile("task", "cancel", "1", "-f", str(spec), check=True)
        left = _history(host, git_repo, [{"title": "failed", "status": "failed"},
                                         {"title": "other", "status": "failed"}])
        held = left["failed"].branch
        lock = git_repo / ".git" / "refs" / "heads" / f"{held}.lock"
        lock.write_text("")  # another git holds the ref: git refuses to delete it
        proc = reconcile("prune", "-f", str(spec))
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 1 and proc.stderr.startswith("error: 1 item(s) could not")
        assert f"not removed branch refs/heads/{held}: git refused" in proc.stdout
        assert f"deleted branch refs/heads/{left['other'].branch}" in proc.stdout
        assert held in _branches(git_repo)
        lock.unlink()

    def test_a_log_that_is_a_symlink_is_never_followed_out(self, host: Path,
                                                           git_repo: Path) -> None:
        spec = write_spec(host, replicas=0, runtime="process")
        reconcile("task", "add", "-f", str(spec), "--title", "first", check=True)
        reconcile("task", "cancel", "1", "-f", str(spec), check=True)
        left = _history(host, git_repo, [{"title": "failed", "status": "failed"}])
        outside = host / "precious.txt"
        outside.write_text("not the pool's\n")
        log = left["failed"].log
        log.unlink()
        log.symlink_to(outside)  # planted where the attempt's log was
        done = reconcile_json("prune", "--older-than", "0s", "-f", str(spec))
        assert [i["kind"] for i in done["removed"]] == ["worktree", "branch"]
        assert outside.read_text() == "not the pool's\n" and log.is_symlink()

    def test_empty_branches_stays_apart_and_options_are_checked(self, host: Path,
                                                                git_repo: Path) -> None:
        spec = write_spec(host, replicas=0, runtime="process")
        reconcile("task", "add", "-f", str(spec), "--title", "t", check=True)
        line = one_error_line(reconcile("prune", "--empty-branches", "--branches", "all",
                                        "-f", str(spec)))
        assert "--branches" in line and "--empty-branches" in line
        assert "--older-than" in one_error_line(reconcile("prune", "--older-than", "7d",
                                                          "-f", str(spec)))
        assert "--branches" in one_error_line(reconcile("prune", "--branches", "some",
                                                        "-f", str(spec)))


def test_prune_after_a_real_pool_ran(host: Path, git_repo: Path) -> None:
    """End to end, with what real workers recorded: a failed attempt's worktree (kept by
    cleanup: onSuccess) and its branch go, a succeeded task's branch and every recent
    log stay; then the logs go with --older-than 0s."""
    spec = write_spec(host, replicas=1, runtime="process",
                      extra={"worktrees": {"cleanup": "onSuccess"},
                             "tasks": {"maxAttempts": 1}})
    bad = add_task(spec, "[fail]", title="breaks")
    good = add_task(spec, "fine", title="works")
    apply(spec)
    wait_tasks(spec, bad, good)
    shown = {t["title"]: t for t in reconcile_json("task", "list", "-f", str(spec))}
    assert shown["breaks"]["status"] == "failed" and shown["works"]["status"] == "succeeded"
    attempt = show_task(spec, bad)["attempt_details"][0]
    first = reconcile_json("prune", "-f", str(spec))
    assert {(i["kind"], i["name"]) for i in first["removed"]} == {
        ("worktree", attempt["worktree"]), ("branch", shown["breaks"]["branch"])}
    assert first["recent_logs"] == 2 and not Path(attempt["worktree"]).exists()
    assert shown["works"]["branch"] in _branches(git_repo)
    logs = reconcile_json("prune", "--older-than", "0s", "-f", str(spec))
    assert sorted(i["kind"] for i in logs["removed"]) == ["log", "log"]
    assert not Path(attempt["log_path"]).exists()
    delete(spec)


# --------------------------------------------------------------------------- delete, purge


class TestDeleteAndPurge:
    def test_delete_says_what_it_keeps_and_where_and_purge_drops_it(
            self, host: Path, git_repo: Path) -> None:
        # worktrees.cleanup: never, else delete's own pass would remove the worktrees
        spec = write_spec(host, replicas=0, runtime="process",
                          extra={"worktrees": {"cleanup": "never"}})
        apply(spec)
        left = _history(host, git_repo, [{"title": "failed", "status": "failed",
                                          "commit": True},
                                         {"title": "succeeded", "status": "succeeded"}])
        store, logs = pool_dir(host) / "store.db", pool_dir(host) / "logs"

        kept = reconcile("delete", "-f", str(spec), check=True).stdout
        assert f"the queue, attempts, history and events: {store}" in kept
        assert f"logs: {logs}" in kept
        assert f"worktrees: 2 under {(pool_dir(host) / 'worktrees').resolve()}" in kept
        assert f"task branches: 2 in {git_repo.resolve()} (reconciler/{POOL}/*)" in kept
        assert "`reconcile delete --purge` then removes the store and logs" in kept

        refused = reconcile("delete", "--purge", "-f", str(spec))
        line = one_error_line(refused)
        assert "2 worktree(s)" in line and "reconcile prune" in line
        assert store.exists() and left["failed"].log.exists()  # nothing half-done

        reconcile("prune", "--pool", POOL, check=True)  # a deleted pool: its store knows it
        purged = reconcile("delete", "--purge", "-f", str(spec), check=True).stdout
        assert f"Pool {POOL} deleted and purged; removed:" in purged
        assert f"  {store} (the queue, attempts, history and events)" in purged
        assert f"  {logs} (" in purged
        assert f"task branches: 1 in {git_repo.resolve()}" in purged
        assert f"git -C {git_repo.resolve()} branch -D NAME" in purged
        assert not pool_dir(host).exists()
        assert _branches(git_repo) == {"main", left["succeeded"].branch}
        assert reconcile_json("pools") == []

        apply(spec)  # starts fresh: no tasks, one generation
        assert reconcile_json("task", "list", "-f", str(spec)) == []
        assert len(reconcile_json("history", "-f", str(spec))) == 1
        reconcile("delete", "--purge", "-f", str(spec), check=True)
        assert not (state_dir(host) / "pools" / POOL).exists()

    def test_purge_is_refused_while_an_attempt_still_runs(self, host: Path,
                                                          git_repo: Path) -> None:
        """An attempt run by hand (``reconcile run-task``, no worker of the pool) may still
        write to the store and its log: purge waits for it, and removes nothing."""
        spec = write_spec(host, replicas=0, runtime="process")
        apply(spec)
        left = _history(host, git_repo, [{"title": "by-hand", "status": "running"}])
        line = one_error_line(reconcile("delete", "--purge", "-f", str(spec)))
        assert f"attempt 1 of task {left['by-hand'].task_id} is still running" in line
        assert (pool_dir(host) / "store.db").exists() and left["by-hand"].log.exists()
        assert [p["pool"] for p in reconcile_json("pools")] == [POOL]

    def test_purge_is_refused_while_worktrees_of_an_earlier_directory_are_left(
            self, host: Path, git_repo: Path) -> None:
        """A pool that ran with the default worktree directory, then moved worktrees.dir:
        git's list for the new directory is empty, but purging the state directory would
        delete the old worktrees with whatever they hold."""
        spec = write_spec(host, replicas=0, runtime="process",
                          extra={"worktrees": {"cleanup": "never"}})
        apply(spec)
        left = _history(host, git_repo, [{"title": "kept", "status": "failed"}])
        (left["kept"].worktree / "notes.txt").write_text("uncommitted\n")
        moved = write_spec(host, replicas=0, runtime="process",
                           extra={"worktrees": {"cleanup": "never", "dir": str(host / "wt")}})
        apply(moved)
        line = one_error_line(reconcile("delete", "--purge", "-f", str(moved)))
        assert f"{pool_dir(host) / 'worktrees'} still holds 1 worktree(s)" in line
        assert (left["kept"].worktree / "notes.txt").exists()
