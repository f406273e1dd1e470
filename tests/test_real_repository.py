"""Real repositories (issue 8, items 1 and 2): an agent's work is never lost, setup output
never committed.  Real git repositories with real hooks, real workers, the real CLI.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import add_task, show_task, wait_tasks
from tests.helpers import git, reconcile, write_spec

pytestmark = pytest.mark.e2e

# What the agent does is named by the task's title: ``edit`` (change a file, commit
# nothing), ``commit_all`` (edit, then ``git add -A && git commit``), ``commit_part``
# (commit one file, leave another).
AGENT = textwrap.dedent("""
    import os, subprocess, sys
    title = os.environ["RECONCILER_TASK_TITLE"]
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True).returncode
    with open("work.txt", "w") as fh:
        fh.write("the agent's work\\n")
    if title == "commit_all":
        git("add", "-A")
        git("commit", "-q", "-m", "agent commit")  # a failing pre-commit hook refuses it
    elif title == "commit_part":
        with open("part.txt", "w") as fh:
            fh.write("committed by the agent\\n")
        git("add", "part.txt")
        git("commit", "-q", "-m", "agent: part")
    print("agent done", flush=True)
""")

IDENTITY = {"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@localhost",
            "GIT_COMMITTER_NAME": "agent", "GIT_COMMITTER_EMAIL": "agent@localhost"}


def _spec(host: Path, **worktrees: Any) -> Path:
    agent = host / "agent.py"
    agent.write_text(AGENT)
    return write_spec(host, replicas=1, command=[sys.executable, str(agent)],
                      extra={"worker": {"env": IDENTITY},
                             "worktrees": worktrees, "tasks": {"maxAttempts": 1}})


def _failing_pre_commit_hook(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'pre-commit: lint failed' >&2\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)


def _run(spec: Path, title: str) -> dict[str, Any]:
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, title=title)
    wait_tasks(spec, task, timeout="60s")
    shown = show_task(spec, task)
    reconcile("delete", "-f", str(spec), check=True)
    return shown


def _files_on(repo: Path, branch: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", branch).split())


def _subjects(repo: Path, branch: str) -> list[str]:
    return git(repo, "log", "--format=%s", f"main..{branch}").splitlines()


@pytest.mark.parametrize("title", ["edit", "commit_all"])
def test_work_a_failing_hook_or_no_commit_left_behind_is_rescued_to_the_branch(
        host: Path, git_repo: Path, title: str) -> None:
    """Item 1: 8 of 8 tasks succeeded with 0 commits; the worktrees were force-removed
    with the agent's edits in them."""
    _failing_pre_commit_hook(git_repo)
    shown = _run(_spec(host), title)
    assert shown["status"] == "succeeded"
    (attempt,) = shown["attempt_details"]
    assert attempt["rescued"] == "committed"
    assert "work.txt" in _files_on(git_repo, shown["branch"])
    assert len(_subjects(git_repo, shown["branch"])) == 1
    assert not Path(attempt["worktree"]).exists()  # removed only once the work was safe
    text = reconcile("task", "show", str(shown["id"]), "-f", str(host / "workers.yaml")).stdout
    assert "uncommitted work rescued: committed to the branch" in text


def test_an_agent_that_commits_part_of_its_work_keeps_both_parts(host: Path,
                                                                 git_repo: Path) -> None:
    shown = _run(_spec(host), "commit_part")
    assert {"work.txt", "part.txt"} <= _files_on(git_repo, shown["branch"])
    subjects = _subjects(git_repo, shown["branch"])
    assert subjects[1] == "agent: part" and "rescued" in subjects[0]


def test_on_dirty_keep_keeps_the_worktree_and_no_pass_removes_it(host: Path,
                                                                 git_repo: Path) -> None:
    spec = _spec(host, onDirty="keep")
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, title="edit")
    wait_tasks(spec, task, timeout="60s")
    reconcile("apply", "-f", str(spec), "--wait", check=True)  # a pass: nothing to clean
    (attempt,) = show_task(spec, task)["attempt_details"]
    assert attempt["rescued"] == "kept"
    worktree = Path(attempt["worktree"])
    assert (worktree / "work.txt").read_text() == "the agent's work\n"
    assert "kept in the worktree" in reconcile("task", "show", task, "-f", str(spec)).stdout
    assert "uncommitted work rescued: 0 attempt(s) committed to their branch, 1 worktree(s) " \
        "kept" in reconcile("status", "-f", str(spec)).stdout
    reconcile("delete", "-f", str(spec), check=True)
    assert worktree.exists(), "delete must not remove a worktree kept for its work"


def test_on_dirty_fail_fails_the_attempt_but_still_commits_the_work(host: Path,
                                                                   git_repo: Path) -> None:
    shown = _run(_spec(host, onDirty="fail"), "edit")
    assert shown["status"] == "failed"
    assert "onDirty: fail" in shown["last_error"]
    assert "work.txt" in _files_on(git_repo, shown["branch"])


def test_setup_output_stays_out_of_the_agents_and_the_rescue_commits(host: Path,
                                                                     git_repo: Path) -> None:
    """Item 2: setup made a .venv the repository does not ignore; every branch
    committed it, through the agent's ``git add -A`` and the rescue alike."""
    setup = host / "setup.py"
    setup.write_text("import os\nos.makedirs('.venv/lib', exist_ok=True)\n"
                     "open('.venv/lib/site.py', 'w').write('x')\n"
                     "open('setup.log', 'w').write('installed')\n")
    spec = _spec(host, setup=[[sys.executable, str(setup)]])
    shown = _run(spec, "commit_all")
    files = _files_on(git_repo, shown["branch"])
    assert "work.txt" in files
    assert not [f for f in files if f.startswith(".venv") or f == "setup.log"], files
    # the main checkout's own excludes are untouched: only that worktree's config changed
    assert subprocess.run(["git", "-C", str(git_repo), "config", "--get", "core.excludesFile"],
                          capture_output=True, check=False).returncode != 0
    (git_repo / "setup.log").write_text("mine")
    assert "setup.log" in git(git_repo, "status", "--porcelain")
    (git_repo / "setup.log").unlink()


# ----------------------------------------------------------------- warm worktrees (item 3)

WARM_AGENT = textwrap.dedent("""
    import json, os, sys
    title, report = os.environ["RECONCILER_TASK_TITLE"], sys.argv[1]
    if title == "dirty":
        open("leak.txt", "w").write("left by task A")
        os.makedirs(".cache", exist_ok=True)
        open(".cache/x", "w").write("ignored, left by task A")
        open("README.md", "a").write("changed by task A\\n")
        open(".venv/from_a", "w").write("an agent's change inside the setup output")
    seen = {"leak": os.path.exists("leak.txt"), "cache": os.path.exists(".cache/x"),
            "readme": open("README.md").read(), "venv": os.path.exists(".venv/marker"),
            "venv_from_a": os.path.exists(".venv/from_a"),
            "cwd": os.getcwd(), "title": title}
    with open(report, "a") as fh:
        fh.write(json.dumps(seen) + "\\n")
""")


def _warm_spec(host: Path, git_repo: Path, **worktrees: Any) -> tuple[Path, Path, Path]:
    (git_repo / ".gitignore").write_text(".cache/\n")
    (git_repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    git(git_repo, "add", ".gitignore", "pyproject.toml")
    git(git_repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m",
        "ignore .cache")
    agent, report, runs = host / "warm_agent.py", host / "report.jsonl", host / "setup-runs"
    agent.write_text(WARM_AGENT)
    setup = host / "setup.py"
    setup.write_text("import os, sys\nos.makedirs('.venv', exist_ok=True)\n"
                     "open('.venv/marker', 'w').write('x')\n"
                     f"open({str(runs)!r}, 'a').write('run\\n')\n")
    spec = write_spec(host, replicas=1, command=[sys.executable, str(agent), str(report)],
                      extra={"worker": {"env": IDENTITY}, "tasks": {"maxAttempts": 1},
                             "worktrees": {"reuse": "perWorker",
                                           "setup": [[sys.executable, str(setup)]],
                                           "setupWhen": ["pyproject.toml"], **worktrees}})
    return spec, report, runs


def _reports(path: Path) -> list[dict[str, Any]]:
    import json
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_reused_worktree_shows_the_next_task_nothing_of_the_last_and_setup_runs_once(
        host: Path, git_repo: Path) -> None:
    spec, report, runs = _warm_spec(host, git_repo)
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    first = add_task(spec, title="dirty")
    wait_tasks(spec, first)
    second = add_task(spec, title="check")
    wait_tasks(spec, second)
    a, b = _reports(report)
    assert a["cwd"] == b["cwd"] and a["cwd"].endswith("worker-w-1")  # one worktree, reused
    assert (b["leak"], b["cache"], b["venv"]) == (False, False, True)
    assert b["readme"] == "# test repo\n"
    assert runs.read_text().count("run") == 1  # setup ran once for both tasks
    # each attempt records its phases; the warm one's setup took no time
    (warm,) = show_task(spec, second)["attempt_details"]
    assert set(warm["phases"]) == {"worktree", "setup", "agent", "hooks", "finish"}
    assert warm["phases"]["setup"] < 0.05
    log = Path(warm["log_path"]).read_text()
    assert "=== reconciler: setup skipped" in log and "=== reconciler: agent ===" in log
    assert "phases:   worktree" in reconcile("task", "show", second, "-f", str(spec)).stdout
    # task A's work was rescued to A's branch; B's branch starts from main
    a_branch, b_branch = show_task(spec, first)["branch"], show_task(spec, second)["branch"]
    assert "leak.txt" in _files_on(git_repo, a_branch)
    assert ".cache/x" not in _files_on(git_repo, a_branch)  # ignored stays ignored
    assert _subjects(git_repo, b_branch) == []
    # a changed input reruns setup
    (git_repo / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    git(git_repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "bump")
    third = add_task(spec, title="check")
    wait_tasks(spec, third)
    assert runs.read_text().count("run") == 2
    # the rerun started from a cleared setup output: nothing stale survives it
    third_seen = _reports(report)[2]
    assert (b["venv_from_a"], third_seen["venv_from_a"], third_seen["venv"]) == (True, False,
                                                                                  True)
    reconcile("delete", "-f", str(spec), check=True)
    assert git(git_repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_reused_worktree_kept_for_its_work_moves_aside(host: Path, git_repo: Path) -> None:
    spec, report, _ = _warm_spec(host, git_repo, onDirty="keep")
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    first = add_task(spec, title="dirty")
    wait_tasks(spec, first)
    second = add_task(spec, title="check")
    wait_tasks(spec, second)
    (kept,) = show_task(spec, first)["attempt_details"]
    assert kept["rescued"] == "kept" and kept["worktree"].endswith(f"task-{first}-a1")
    assert (Path(kept["worktree"]) / "leak.txt").exists()
    b = _reports(report)[1]
    assert (b["leak"], b["readme"]) == (False, "# test repo\n")
    reconcile("delete", "-f", str(spec), check=True)
