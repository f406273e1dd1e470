"""End to end: what happens to work when workers die, are forced out or move.

Each test breaks something on a real host (SIGKILL, a foreign tmux window, a
changed socket, an orphaned worktree) and asserts the state of the world
afterwards: no task lost, no agent left running, nothing foreign touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from reconciler.runtimes.tmux import TmuxRuntime
from tests.e2e import (
    add_task,
    apply,
    delete,
    diff,
    kill_worker,
    pool_dir,
    running_attempt,
    set_spec,
    show_task,
    status,
    tmux_windows,
    wait_tasks,
    worker_pid,
    worktree_paths,
)
from tests.helpers import git, gone, reconcile_background, wait_for, write_spec

pytestmark = pytest.mark.e2e


def test_agent_of_a_killed_worker_is_killed_and_its_task_requeued(host: Path,
                                                                  git_repo: Path) -> None:
    spec = write_spec(host, replicas=1, extra={"tasks": {"maxAttempts": 3}})
    apply(spec)
    task_id = add_task(spec, "[hang]")
    agent = running_attempt(spec, task_id)["pid"]
    kill_worker(spec, "w-1")
    # PR_SET_PDEATHSIG: the kernel sends the agent SIGTERM as its worker dies
    wait_for(lambda: gone(agent), timeout=10, message="the agent to die with its worker")
    apply(spec)
    second = running_attempt(spec, task_id)
    attempts = show_task(spec, task_id)["attempt_details"]
    assert [a["status"] for a in attempts] == ["lost", "running"]
    assert second["number"] == 2 and show_task(spec, task_id)["attempts"] == 2
    delete(spec, "--force")
    wait_for(lambda: gone(second["pid"]), timeout=30, message="the second agent to be killed")


def test_forced_delete_requeues_without_using_up_attempts(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1, extra={"tasks": {"maxAttempts": 1}})
    apply(spec)
    task_id = add_task(spec, "[hang]")
    agent = running_attempt(spec, task_id)["pid"]
    delete(spec, "--force")
    wait_for(lambda: gone(agent), timeout=30, message="the agent to be killed")
    task = show_task(spec, task_id)
    assert (task["status"], task["attempts"]) == ("queued", 0)
    assert [a["status"] for a in task["attempt_details"]] == ["lost"]
    assert worktree_paths(git_repo) == [str(git_repo)]  # the lost attempt's worktree is cleaned


def test_stop_grace_bounds_a_drain_and_requeues_the_long_task(host: Path,
                                                              git_repo: Path) -> None:
    spec = write_spec(host, replicas=2, extra={"worker": {"stopGrace": "1s"},
                                               "tasks": {"maxAttempts": 1}})
    apply(spec)
    task_id = add_task(spec, "[hang]")
    attempt = running_attempt(spec, task_id)
    holder = attempt["worker_id"]
    set_spec(spec, replicas=0)
    apply(spec)
    task = show_task(spec, task_id)
    assert (task["status"], task["attempts"]) == ("queued", 0), holder
    assert gone(attempt["pid"])
    assert status(spec)["workers"] == []


def test_a_draining_worker_does_not_spin(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    apply(spec)
    task_id = add_task(spec, "work [seconds=6]")
    running_attempt(spec, task_id)
    pid = worker_pid(spec, "w-1")
    set_spec(spec, replicas=0)
    applying = reconcile_background("apply", "-f", str(spec))
    try:
        wait_for(lambda: status(spec)["workers"][0]["health"] == "stopping",
                 message="w-1 to drain")
        before = psutil.Process(pid).cpu_times()
        time.sleep(1.5)
        after = psutil.Process(pid).cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 0.5, f"draining worker used {busy:.2f}s of CPU in 1.5s"
    finally:
        assert applying.wait(timeout=60) == 0
    wait_for(lambda: show_task(spec, task_id)["status"] == "succeeded",
             message="the task to finish")


def test_windows_the_operator_opens_in_the_session_are_left_alone(host: Path,
                                                                  git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    apply(spec)
    subprocess.run(["tmux", "-L", "rt-testpool", "new-window", "-d", "-t", "=testpool:", "-n",
                    "scratch", "--", "sleep", "300"], check=True)
    subprocess.run(["tmux", "-L", "rt-testpool", "new-window", "-d", "-t", "=testpool:", "-n",
                    "w-7", "--", "sleep", "300"], check=True)  # named like a worker, not ours
    assert diff(spec).returncode == 0
    assert [w["id"] for w in status(spec)["workers"]] == ["w-1"]
    delete(spec)
    assert tmux_windows("rt-testpool") == ["scratch", "w-7"]


def test_changing_the_socket_moves_the_pool(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=2)
    apply(spec)
    set_spec(spec, tmux={"socket": "rt-moved"})
    assert "~ restart w-1: tmux.socket (rt-testpool → rt-moved) changed" in diff(spec).stdout
    apply(spec)
    assert tmux_windows("rt-testpool") == []
    assert tmux_windows("rt-moved") == ["w-1", "w-2"]
    assert diff(spec).returncode == 0
    delete(spec)
    assert tmux_windows("rt-moved") == []


def test_orphaned_worktrees_are_listed_by_diff_and_removed_by_apply(host: Path,
                                                                    git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    apply(spec)
    orphan = pool_dir(host) / "worktrees" / "task-99-a1"
    git(git_repo, "worktree", "add", "-q", "-b", "leftover", "--", str(orphan), "main")
    (orphan / "half-done.txt").write_text("work the agent never committed\n")
    pending = diff(spec)
    assert pending.returncode == 2
    assert f"- clean worktree {orphan}: no attempt owns it" in pending.stdout
    apply(spec)
    assert worktree_paths(git_repo) == [str(git_repo)]
    assert "leftover" in git(git_repo, "branch", "--list", "leftover")
    # the uncommitted work was saved on the branch before the worktree went
    assert git(git_repo, "show", "leftover:half-done.txt") == "work the agent never committed\n"
    assert git(git_repo, "log", "-1", "--format=%s", "leftover").startswith("WIP:")
    assert diff(spec).returncode == 0


def test_a_stale_ref_lock_left_by_a_killed_git_does_not_block_tasks(host: Path,
                                                                   git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    lock = git_repo / ".git" / "refs" / "heads" / "reconciler" / "testpool" / "1-t.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    (git_repo / ".git" / "index.lock").write_text("")  # the operator's checkout: untouched
    apply(spec)
    task_id = add_task(spec, "do it")
    wait_tasks(spec, task_id)
    assert show_task(spec, task_id)["status"] == "succeeded"
    assert not lock.exists()
    assert (git_repo / ".git" / "index.lock").exists()


def test_tmux_runtime_passes_argv_verbatim_even_with_trailing_semicolons(
        host: Path) -> None:
    out = host / "argv.json"
    argv = [sys.executable, "-c",
            "import json, sys, time; json.dump(sys.argv[1:], open(sys.argv[1], 'w')); "
            "time.sleep(30)", str(out), "a;", "b\\;", ";", "#{session_name}", "$(id)"]
    runtime = TmuxRuntime("rt-argv", "argv", host / "tmux.conf", tag="t")
    runtime.start("w-1", argv)
    wait_for(out.exists, message="the window's command to run")
    assert json.loads(out.read_text()) == argv[3:]
