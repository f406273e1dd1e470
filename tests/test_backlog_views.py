"""Readable at the scale of a real backlog (issue 8 item 5): slugs cut at a word
boundary, commits per task branch in ``task list``, ``prune --empty-branches``,
``events`` filters, and task titles in ``status``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.branches import known_counts
from reconciler.naming import slugify
from reconciler.store.sqlite import Store
from tests.e2e import add_task, apply, pool_dir, reconcile_json, workers
from tests.helpers import (
    FAKE_AGENT,
    GIT_IDENTITY,
    git,
    one_error_line,
    reconcile,
    wait_for,
    write_spec,
)


class TestSlugWordBoundary:
    @pytest.mark.parametrize(("title", "limit", "slug"), [
        pytest.param("Refactor the authentication middleware for sessions", 40,
                     "refactor-the-authentication-middleware", id="cut-before-a-word"),
        pytest.param("one two three", 9, "one-two", id="never-mid-word"),
        pytest.param("one two three", 7, "one-two", id="boundary-right-at-limit"),
        pytest.param("x" * 100, 40, "x" * 40, id="single-overlong-word-still-cut"),
        pytest.param("ab " + "y" * 60, 40, "ab", id="short-word-then-long-word"),
        pytest.param("Fix the login bug!", 40, "fix-the-login-bug", id="short-title-unchanged"),
    ])
    def test_cut(self, title: str, limit: int, slug: str) -> None:
        assert slugify(title, limit) == slug

    def test_never_longer_than_limit(self) -> None:
        for n in range(1, 60):
            title = " ".join(["word"] * 20)
            assert len(slugify(title, n)) <= n


# --------------------------------------------------------------------------- events filters


def _pool_with_events(host: Path) -> Path:
    """Pool ``p`` (never applied) with three queued tasks (task.queued events) and some
    worker events written straight into its store."""
    spec = write_spec(host, name="p")
    for title in ("one", "two", "three"):
        reconcile("task", "add", "-f", str(spec), "--title", title, check=True)
    store_path = pool_dir(host, "p") / "store.db"
    with Store(store_path) as store:
        store.add_event("worker.health", "w-1 healthy", worker_id="w-1")
        store.add_event("worker.health", "w-2 dead", worker_id="w-2")
        store.add_event("worker.restarted", "w-2 restarted", worker_id="w-2")
        store.add_event("attempt.started", "attempt 1 started", worker_id="w-2", task_id=2)
        store.add_event("attempt.succeeded", "attempt 1 succeeded", worker_id="w-2", task_id=2)
        store.add_event("attempts_x", "not an attempt.* event", worker_id="w-1")
    return store_path


def _kinds(*args: str) -> list[tuple[str, str | None, int | None]]:
    events = reconcile_json("events", "--pool", "p", *args)
    return [(e["kind"], e["worker_id"], e["task_id"]) for e in events]


class TestEventFilters:
    def test_filters_combine(self, host: Path) -> None:
        _pool_with_events(host)
        assert _kinds("--kind", "worker.health") == [("worker.health", "w-1", None),
                                                     ("worker.health", "w-2", None)]
        assert _kinds("--kind", "attempt.") == [("attempt.started", "w-2", 2),
                                                ("attempt.succeeded", "w-2", 2)]
        assert _kinds("--task", "2") == [("task.queued", None, 2), ("attempt.started", "w-2", 2),
                                         ("attempt.succeeded", "w-2", 2)]
        assert _kinds("--worker", "w-2", "--kind", "worker") == [
            ("worker.health", "w-2", None), ("worker.restarted", "w-2", None)]
        assert _kinds("--worker", "w-2", "--task", "2", "--kind", "attempt.s",
                      "--limit", "1") == [("attempt.succeeded", "w-2", 2)]
        assert _kinds("--worker", "w-9") == []
        text = reconcile("events", "--pool", "p", "--kind", "task", check=True).stdout
        assert text.count("task.queued") == 3 and "worker" not in text

    def test_the_store_filters_in_sql(self, host: Path) -> None:
        store_path = _pool_with_events(host)
        with Store(store_path) as store:
            for i in range(2000):
                store.add_event("worker.health", f"noise {i}", worker_id="w-1")
            statements: list[str] = []
            store._db.set_trace_callback(statements.append)
            found = store.find_events(worker_id="w-2", kind="attempt", last=50)
            store._db.set_trace_callback(None)
        assert [e.kind for e in found] == ["attempt.started", "attempt.succeeded"]
        assert len(statements) == 1 and "worker_id = 'w-2'" in statements[0]

    @pytest.mark.parametrize("args", [
        pytest.param(["--kind", "Worker Health"], id="kind-with-space"),
        pytest.param(["--kind", ""], id="empty-kind"),
        pytest.param(["--worker", "worker-1"], id="not-a-worker-id"),
        pytest.param(["--worker", "w-0"], id="worker-zero"),
        pytest.param(["--task", "abc"], id="task-not-a-number"),
        pytest.param(["--task", "0"], id="task-zero"),
    ])
    def test_bad_filters_are_one_line(self, host: Path, args: list[str]) -> None:
        _pool_with_events(host)
        line = one_error_line(reconcile("events", "--pool", "p", *args))
        assert args[0] in line


# --------------------------------------------------------------------------- titles in status

HOSTILE_TITLE = "Fix [bold red]login[/bold red] \x1b]0;pwned\x07 bug in the session middleware"


class TestStatusTitles:
    def test_status_names_the_current_task_by_title(self, host: Path, git_repo: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COLUMNS", "40")  # narrow: lines are still never wrapped or cut
        spec = write_spec(host, replicas=1, runtime="process", command=[
            str(FAKE_AGENT), "--prompt-file", "{task.prompt_file}", "--seconds", "30"])
        task_id = int(add_task(spec, title=HOSTILE_TITLE))
        apply(spec)
        working = wait_for(lambda: next((w for w in workers(spec).values()
                                         if w["current_task"] == task_id), None),
                           message="the worker to take the task")
        assert working["task_title"] == HOSTILE_TITLE
        text = reconcile("status", "-f", str(spec), "--output", "text").stdout
        assert "\x1b" not in text and "\x07" not in text
        # markup shown as written, ESC and BEL made visible, and, piped, the whole title
        # (on a terminal it is cut to 40 columns with "…": tests/test_term.py)
        assert (f"  {task_id} Fix [bold red]login[/bold red] \\x1b]0;pwned\\x07 bug in the "
                "session middleware  ") in text
        idle = [w for w in workers(spec).values() if w["current_task"] is None]
        assert all(w["task_title"] is None for w in idle)


# --------------------------------------------------------------------------- commits, prune

# commit*: one commit on the branch; empty*: nothing; sleep*: runs until the test ends
AGENT = ["sh", "-c", 'case "$1" in commit*) echo "$2" > "f-$2" && git add -A && '
         'git -c user.name=t -c user.email=t@localhost commit -q -m "$1";; '
         'sleep*) sleep 120;; esac', "agent", "{task.title}", "{task.id}"]


def _run_backlog(host: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A pool that ran 3 tasks that committed, 3 that did not, and one still running;
    returns the spec and ``task list -o json`` by title."""
    spec = write_spec(host, replicas=2, runtime="process", command=AGENT,
                      extra={"tasks": {"maxAttempts": 1}})
    titles = ["commit one", "empty one", "commit two", "empty two", "commit three",
              "empty three", "sleep forever"]
    for title in titles:
        add_task(spec, title=title)
    apply(spec)

    def settled() -> dict[str, dict[str, Any]] | None:
        tasks = {t["title"]: t for t in reconcile_json("task", "list", "-f", str(spec))}
        done = sum(t["status"] == "succeeded" for t in tasks.values())
        running = tasks["sleep forever"]["status"] == "running" and \
            tasks["sleep forever"]["branch"]
        return tasks if done == 6 and running else None
    return spec, wait_for(settled, message="six tasks done, one running")


class TestCommitsAndPrune:
    def test_task_list_counts_commits_and_prune_deletes_only_empty_branches(
            self, host: Path, git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COLUMNS", "40")  # narrow: lines are still never wrapped or cut
        spec, tasks = _run_backlog(host)
        assert {title: t["commits"] for title, t in tasks.items()} == {
            "commit one": 1, "commit two": 1, "commit three": 1, "empty one": 0,
            "empty two": 0, "empty three": 0, "sleep forever": 0}
        text = reconcile("task", "list", "-f", str(spec), check=True).stdout
        header = _cells(text.splitlines()[0])
        assert header[4] == "COMMITS"
        row = next(line for line in text.splitlines() if "commit two" in line)
        assert _cells(row)[4] == "1"
        # an operator works in an empty task branch; another branch fits the naming only
        held = tasks["empty two"]["branch"]
        git(git_repo, "worktree", "add", "-q", str(host / "operator-wt"), held)
        git(git_repo, "branch", "reconciler/testpool/99-not-an-attempt", "main")
        before = set(git(git_repo, "for-each-ref", "--format=%(refname:short)",
                         "refs/heads/").split())

        dry = reconcile_json("prune", "--empty-branches", "--dry-run", "-f", str(spec))
        empty = sorted([tasks["empty one"]["branch"], tasks["empty three"]["branch"]])
        assert dry["dry_run"] and sorted(dry["deleted"]) == empty
        assert {k["branch"]: k["reason"] for k in dry["kept"]} == {
            held: "checked out in a worktree",
            tasks["sleep forever"]["branch"]: "its attempt is running"}
        assert dry["with_commits"] == 3 and dry["failed"] == []
        assert set(git(git_repo, "for-each-ref", "--format=%(refname:short)",
                       "refs/heads/").split()) == before  # a dry run deletes nothing

        done = reconcile("prune", "--empty-branches", "-f", str(spec), check=True).stdout
        for branch in empty:
            assert f"deleted refs/heads/{branch}\n" in done
        assert "deleted 2 empty branch(es); kept 2 empty, 3 with commits untouched" in done
        after = set(git(git_repo, "for-each-ref", "--format=%(refname:short)",
                        "refs/heads/").split())
        assert after == before - set(empty)
        listed = {t["title"]: t["commits"] for t in
                  reconcile_json("task", "list", "-f", str(spec))}
        assert listed["empty one"] is None and listed["commit one"] == 1
        text = reconcile("task", "list", "-f", str(spec), "--status", "succeeded").stdout
        row = next(line for line in text.splitlines() if "empty one" in line)
        assert _cells(row)[4] == "-"  # the commits column of a pruned branch

    def test_prune_of_an_unknown_pool_is_one_line(self, host: Path, git_repo: Path) -> None:
        line = one_error_line(reconcile("prune", "--empty-branches", "--pool", "nope"))
        assert "nope" in line
        assert "nope" in one_error_line(reconcile("prune", "--pool", "nope"))

    def test_prune_without_a_spec_or_repo_is_one_line(self, host: Path,
                                                      git_repo: Path) -> None:
        spec = write_spec(host, repo="missing")
        add_task(spec, title="t")
        line = one_error_line(reconcile("prune", "--empty-branches", "-f", str(spec)))
        assert "missing" in line
        assert reconcile_json("task", "list", "-f", str(spec))[0]["commits"] is None


def test_counting_commits_takes_two_git_calls_for_200_branches(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = git(git_repo, "rev-parse", "main").strip()
    tree = git(git_repo, "rev-parse", "main^{tree}").strip()
    commands = []
    for i in range(200):
        tip = base
        for n in range(i % 3):  # 0, 1 or 2 commits beyond main
            tip = _commit(git_repo, tip, tree, f"{i}.{n}")
        commands.append(f"create refs/heads/reconciler/p/{i}-task {tip}\n")
    subprocess.run(["git", "-C", str(git_repo), "update-ref", "--stdin"], check=True,
                   input="".join(commands), text=True)
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(argv)
        return real_run(argv, *args, **kwargs)
    monkeypatch.setattr(subprocess, "run", counting_run)
    names = [f"reconciler/p/{i}-task" for i in range(200)] + ["reconciler/p/gone"]
    counts = known_counts(git_repo, "main", "reconciler/p/", names)
    assert len(calls) == 2
    assert counts == {**{f"reconciler/p/{i}-task": i % 3 for i in range(200)},
                      "reconciler/p/gone": None}


def _commit(repo: Path, parent: str, tree: str, message: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *GIT_IDENTITY, "commit-tree", "-p", parent,
                           "-m", message, tree], check=True, capture_output=True,
                          text=True).stdout.strip()


def _cells(line: str) -> list[str]:
    """A line of a text table: columns are two or more spaces apart."""
    return re.split(r" {2,}", line.strip())
