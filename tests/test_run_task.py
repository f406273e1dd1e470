"""``reconcile run-task``: one attempt of one task in the foreground, by the same attempt
runner as a worker (what the pueue runtime hands to pueue), taken only when it is the
task's next attempt and the task is queued and due."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e import add_task, apply, show_task
from tests.helpers import CLI, FAKE_AGENT, git, one_error_line, reconcile, write_spec


def run_task(task: str, attempt: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run-task", "--pool", "testpool", "--task", task,
                           "--attempt", str(attempt)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **env})


def test_run_task_runs_the_attempt_as_a_worker_would(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=0)  # no worker: only run-task runs it
    apply(spec)
    task = add_task(spec, title="paint the fence")
    proc = run_task(task, 1, PUEUE_WORKER_ID="2")  # pueue's third slot
    assert proc.returncode == 0, proc.stderr
    shown = show_task(spec, task)
    assert shown["status"] == "succeeded"
    attempt, = shown["attempt_details"]
    assert (attempt["number"], attempt["worker_id"], attempt["status"]) == (1, "w-3",
                                                                           "succeeded")
    assert git(git_repo, "log", "-1", "--format=%s", shown["branch"]).strip() == \
        "fake-agent: paint the fence"
    again = run_task(task, 1)  # pueue restarting it: the attempt is not taken twice
    assert again.returncode == 2
    assert f"not running attempt 1 of task {task}: task {task} is succeeded, not queued" \
        in again.stderr
    assert len(show_task(spec, task)["attempt_details"]) == 1


def test_run_task_takes_only_the_next_attempt_when_it_is_due(host: Path,
                                                             git_repo: Path) -> None:
    failing = [str(FAKE_AGENT), "--prompt-file", "{task.prompt_file}", "--fail"]
    spec = write_spec(host, replicas=0, command=failing,
                      extra={"tasks": {"maxAttempts": 2, "retryBackoff": "1h"}})
    apply(spec)
    task = add_task(spec, title="flaky")
    skipped = run_task(task, 2)
    assert skipped.returncode == 2 and "attempt 2 of task" in skipped.stderr \
        and "is not its next (that is 1)" in skipped.stderr
    assert show_task(spec, task)["attempt_details"] == []
    failed = run_task(task, 1)
    assert failed.returncode == 1, failed.stderr
    shown = show_task(spec, task)
    assert shown["status"] == "queued" and shown["attempt_details"][0]["status"] == "failed"
    early = run_task(task, 2)  # its retry's backoff (1h) has not ended
    assert early.returncode == 2 and "is not due yet" in early.stderr
    assert len(show_task(spec, task)["attempt_details"]) == 1


def test_run_task_of_an_unknown_pool_or_task_is_one_line(host: Path, git_repo: Path) -> None:
    line = one_error_line(reconcile("run-task", "--pool", "nope", "--task", "1",
                                    "--attempt", "1"))
    assert "pool 'nope' has no store" in line
    apply(write_spec(host, replicas=0))
    proc = run_task("42", 1)
    assert proc.returncode == 2 and "there is no task 42" in proc.stderr
