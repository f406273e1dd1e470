"""End to end: real tmux (own socket), real git, real SQLite, real worker processes.

Every assertion is about the state of the world: task rows, branches and their
commits, worktrees on disk, tmux windows, live processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.lock import pool_lock
from tests.helpers import (
    FAKE_AGENT,
    GIT_IDENTITY,
    git,
    processes_mentioning,
    reconcile,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.e2e
RUNTIMES = [pytest.param("tmux", id="tmux"), pytest.param("process", id="process")]


def status(spec: Path) -> dict[str, Any]:
    """``status -o json`` (exit 3 just means "unhealthy": the document is still there)."""
    proc = reconcile("status", "-f", str(spec), "-o", "json")
    assert proc.returncode in (0, 3), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def live_workers(spec: Path) -> list[str]:
    return [w["id"] for w in status(spec)["workers"] if w["pid"]]


def tasks(spec: Path) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(
        reconcile("task", "list", "-f", str(spec), "-o", "json", check=True).stdout)
    return result


def set_spec(spec: Path, **changes: Any) -> None:
    """Edit the spec file in place (``replicas=5``, ``command=[...]``...)."""
    document = yaml.safe_load(spec.read_text())
    for key, value in changes.items():
        if key == "command":
            document["spec"]["worker"]["command"] = value
        else:
            document["spec"][key] = value
    spec.write_text(yaml.safe_dump(document, sort_keys=False))


def tmux_windows(socket: str) -> list[str]:
    proc = subprocess.run(["tmux", "-L", socket, "list-windows", "-a", "-F", "#{window_name}"],
                          capture_output=True, text=True, check=False)
    return sorted(proc.stdout.split()) if proc.returncode == 0 else []


def state_dir(host: Path) -> Path:
    return host / "state"


def worktree_paths(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in
            git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def apply(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return reconcile("apply", "-f", str(spec), "--wait", "--timeout", "60s", *extra, check=True)


def enqueue(spec: Path, tmp: Path, count: int, prompt: str = "do it") -> None:
    tasks_file = tmp / "tasks.yaml"
    tasks_file.write_text(yaml.safe_dump([{"title": f"task {i}", "prompt": f"{prompt} {i}"}
                                          for i in range(1, count + 1)]))
    reconcile("task", "import", str(tasks_file), "-f", str(spec), check=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_drains_queue_into_branches_and_scales(host: Path, git_repo: Path,
                                                    runtime: str) -> None:
    spec = write_spec(host, replicas=3, runtime=runtime)
    apply(spec)
    assert live_workers(spec) == ["w-1", "w-2", "w-3"]
    enqueue(spec, host, 10)
    reconcile("task", "wait", "-f", str(spec), "--timeout", "120s", check=True)

    rows = tasks(spec)
    assert [t["status"] for t in rows] == ["succeeded"] * 10
    branches = {t["branch"] for t in rows}
    assert len(branches) == 10
    for task in rows:
        log = git(git_repo, "log", "-1", "--format=%an%x09%s", task["branch"], "--")
        assert log.strip() == f"fake-agent\tfake-agent: {task['title']}"
        assert git(git_repo, "show", f"{task['branch']}:PROMPT.txt") == f"do it {task['id']}"
    assert worktree_paths(git_repo) == [str(git_repo)]
    assert reconcile("diff", "-f", str(spec)).returncode == 0

    for replicas in (1, 5, 3):
        set_spec(spec, replicas=replicas)
        assert reconcile("diff", "-f", str(spec)).returncode == 2
        apply(spec)
        assert live_workers(spec) == [f"w-{i}" for i in range(1, replicas + 1)]
        assert reconcile("diff", "-f", str(spec)).returncode == 0
        if runtime == "tmux":
            assert tmux_windows("rt-testpool") == sorted(f"w-{i}" for i in range(1, replicas + 1))

    reconcile("delete", "-f", str(spec), check=True)
    assert status(spec)["workers"] == []
    assert tmux_windows("rt-testpool") == []
    wait_for(lambda: not processes_mentioning(str(state_dir(host))), timeout=15,
             message="no worker process left")
    assert worktree_paths(git_repo) == [str(git_repo)]
    assert status(spec)["queue"]["succeeded"] == 10  # delete keeps the queue


def _host_snapshot(host: Path, repo: Path, socket: str) -> dict[str, Any]:
    store = state_dir(host) / "pools" / "testpool" / "store.db"
    dump = None
    if store.exists():  # everything but the heartbeat columns live workers keep moving
        db = sqlite3.connect(store)
        dump = [db.execute(sql).fetchall() for sql in (
            "SELECT * FROM tasks", "SELECT * FROM applied_specs", "SELECT * FROM events",
            "SELECT id, runtime, pid, spec_id, template_hash, restarts, drain_requested,"
            " exited_at, exit_code, removed FROM workers")]
        db.close()
    panes = subprocess.run(["tmux", "-L", socket, "list-panes", "-a", "-F",
                            "#{window_name} #{pane_pid} #{pane_dead}"],
                           capture_output=True, text=True, check=False).stdout
    return {"store": dump, "panes": panes, "branches": git(repo, "branch", "-a"),
            "worktrees": worktree_paths(repo),
            "procs": sorted(p.pid for p in processes_mentioning(str(state_dir(host)))),
            "state_files": sorted(str(p) for p in host.joinpath("state").rglob("*")
                                  if not p.name.endswith(("-wal", "-shm")))}


def test_diff_changes_nothing_on_the_host(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=2)
    proc = reconcile("diff", "-f", str(spec))
    assert proc.returncode == 2
    assert "+ start w-1: not running (want 2)" in proc.stdout
    assert "Plan: 2 to start, 0 to restart, 0 to stop." in proc.stdout
    assert not state_dir(host).exists(), "diff created the state directory"
    assert tmux_windows("rt-testpool") == []

    apply(spec)
    pid = next(w["pid"] for w in status(spec)["workers"] if w["id"] == "w-2")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "w-2" not in live_workers(spec), message="w-2 to die")
    set_spec(spec, replicas=3)
    before = _host_snapshot(host, git_repo, "rt-testpool")
    proc = reconcile("diff", "-f", str(spec), "-o", "json")
    assert proc.returncode == 2
    plan = json.loads(proc.stdout)
    assert [(a["action"], a["target"]) for a in plan["actions"]] == [
        ("restart", "w-2"), ("start", "w-3")]
    assert _host_snapshot(host, git_repo, "rt-testpool") == before


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_dead_worker_is_restarted_by_apply(host: Path, git_repo: Path, runtime: str) -> None:
    spec = write_spec(host, replicas=2, runtime=runtime)
    apply(spec)
    pid = next(w["pid"] for w in status(spec)["workers"] if w["id"] == "w-2")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "w-2" not in live_workers(spec), message="w-2 to die")
    diff = reconcile("diff", "-f", str(spec))
    assert diff.returncode == 2
    # tmux usually reports "killed by signal 9 (exit 137)", but 3.3a sometimes records
    # no status at all for a killed pane (seen in about one kill in three)
    assert "~ restart w-2: process gone (" in diff.stdout, diff.stdout
    apply(spec)
    workers = {w["id"]: w for w in status(spec)["workers"]}
    assert workers["w-2"]["pid"] not in (None, pid)
    assert workers["w-2"]["restarts"] == 1
    assert reconcile("diff", "-f", str(spec)).returncode == 0


def test_command_change_rolls_workers_after_their_current_task(host: Path,
                                                               git_repo: Path) -> None:
    command = [str(FAKE_AGENT), "--prompt-file", "{task.prompt_file}", "--title",
               "{task.title}"]
    spec = write_spec(host, replicas=1, command=command)
    apply(spec)
    reconcile("task", "add", "-f", str(spec), "--title", "long one",
              "--prompt", "work for a while [seconds=3]", check=True)
    wait_for(lambda: tasks(spec)[0]["status"] == "running", message="task to start")
    set_spec(spec, command=[*command, "--steps", "2"])
    diff = reconcile("diff", "-f", str(spec))
    assert "~ restart w-1: worker.command changed (after its current task)" in diff.stdout
    apply(spec)
    (task,) = tasks(spec)
    assert (task["status"], task["attempts"]) == ("succeeded", 1)
    assert status(spec)["workers"][0]["restarts"] == 1
    assert reconcile("diff", "-f", str(spec)).returncode == 0
    again = reconcile("apply", "-f", str(spec), check=True)
    assert "Nothing to do" in again.stdout


INJECTION = '$(touch CANARY); echo "`touch CANARY`"\n C-c #{session_name}'


@pytest.mark.parametrize("via", [pytest.param("prompt-file", id="prompt-file-argv"),
                                 pytest.param("prompt", id="prompt-as-argv-element")])
def test_task_text_reaches_the_agent_byte_for_byte(host: Path, git_repo: Path,
                                                   via: str) -> None:
    command = [str(FAKE_AGENT), f"--{via}",
               "{task.prompt_file}" if via == "prompt-file" else "{task.prompt}",
               "--title", "{task.title}", "--seconds", "0.1"]
    spec = write_spec(host, replicas=1, command=command)
    prompt_file = host / "prompt.txt"
    prompt_file.write_text(INJECTION)
    apply(spec)
    task_id = reconcile("task", "add", "-f", str(spec), "--title", "C-c `id` $(x)",
                        "--prompt-file", str(prompt_file), check=True).stdout.strip()
    reconcile("task", "wait", task_id, "-f", str(spec), "--timeout", "60s", check=True)
    (task,) = tasks(spec)
    assert task["status"] == "succeeded"
    shown = subprocess.run(["git", "-C", str(git_repo), "show", f"{task['branch']}:PROMPT.txt"],
                           capture_output=True, check=True).stdout
    assert shown == INJECTION.encode()
    assert not list(host.rglob("CANARY")) and not list(Path.cwd().glob("CANARY"))


def test_failures_timeouts_and_cancellation_are_recorded(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=2, extra={"tasks": {"timeout": "2s", "maxAttempts": 1}})
    apply(spec)
    add = ["task", "add", "-f", str(spec)]
    failing = reconcile(*add, "--title", "fails", "--prompt", "[fail]", check=True).stdout
    hanging = reconcile(*add, "--title", "hangs", "--prompt", "[hang]", check=True).stdout
    reconcile("task", "wait", failing.strip(), hanging.strip(), "-f", str(spec),
              "--timeout", "60s", check=True)
    shown = json.loads(reconcile("task", "show", failing.strip(), "-f", str(spec), "-o", "json",
                                 check=True).stdout)
    assert shown["status"] == "failed"
    (attempt,) = shown["attempt_details"]
    assert (attempt["status"], attempt["exit_code"]) == ("failed", 1)
    assert Path(attempt["log_path"]).exists()
    assert "fake-agent" in attempt["output_tail"]
    timed = json.loads(reconcile("task", "show", hanging.strip(), "-f", str(spec), "-o", "json",
                                 check=True).stdout)
    assert timed["status"] == "failed"
    assert timed["attempt_details"][0]["status"] == "timeout"

    spec_long = write_spec(host, replicas=2, extra={"tasks": {"timeout": "5m"}})
    apply(spec_long)
    task_id = reconcile(*add, "--title", "cancel me", "--prompt", "[hang]",
                        check=True).stdout.strip()
    wait_for(lambda: tasks(spec)[-1]["status"] == "running", message="hang task to start")
    reconcile("task", "cancel", task_id, "-f", str(spec), check=True)
    reconcile("task", "wait", task_id, "-f", str(spec), "--timeout", "30s", check=True)
    assert tasks(spec)[-1]["status"] == "cancelled"
    agents = [p for p in processes_mentioning(str(FAKE_AGENT))
              if str(host) in " ".join(p.cmdline())]
    assert agents == []


def test_second_apply_waits_then_names_the_lock_holder(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    apply(spec)
    lock = state_dir(host) / "pools" / "testpool" / "apply.lock"
    with pool_lock(lock, what="apply (test holder)", timeout=1):
        proc = reconcile("apply", "-f", str(spec), "--lock-timeout", "1s")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: another command holds the lock of this pool: "
                                  "`reconcile apply (test holder)` (pid ")
    assert str(os.getpid()) in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_history_records_each_applied_spec_with_its_commit(host: Path, git_repo: Path) -> None:
    spec = write_spec(git_repo, replicas=1, repo=".")
    git(git_repo, "add", "workers.yaml")
    git(git_repo, *GIT_IDENTITY, "commit", "-q", "-m", "add spec")
    commit = git(git_repo, "rev-parse", "HEAD").strip()
    apply(spec)
    set_spec(spec, replicas=2)
    apply(spec)
    history = json.loads(reconcile("history", "-f", str(spec), "-o", "json", check=True).stdout)
    assert [h["git_commit"] for h in history] == [commit, commit + "+dirty"]
    assert all(h["source_path"] == str(spec) for h in history)
    assert history[0]["document_hash"] != history[1]["document_hash"]
    git(git_repo, "checkout", "-q", "--", "workers.yaml")
