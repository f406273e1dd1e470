"""The README's main job: `reconcile demo` end to end, leaving the clone clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT, git, kill_processes_mentioning, one_error_line, reconcile

pytestmark = pytest.mark.e2e


def git_status() -> str:
    return git(ROOT, "status", "--porcelain")


def test_demo_runs_end_to_end_and_leaves_the_clone_clean(host: Path) -> None:
    before = git_status()
    demo_dir = host / "demo"
    try:
        proc = reconcile("demo", "--tasks", "12", "--dir", str(demo_dir), "--teardown", cwd=ROOT,
                         timeout=300)
    finally:
        kill_processes_mentioning(str(demo_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tasks:     11 succeeded, 1 failed, 0 cancelled, 0 unfinished (of 12)" in proc.stdout
    assert "branches:  11 with the agent's commits" in proc.stdout
    # the demo kills a busy worker part-way: the controller replaces it, nothing is lost
    assert "demo: SIGKILL w-" in proc.stdout
    assert "restarts:  1 (w-" in proc.stdout
    assert "1 attempt(s) lost with a worker and requeued; no task lost: 12 of 12" in proc.stdout
    repo = demo_dir / "repo"
    branches = git(repo, "branch", "--list", "agent/*").split()
    # every attempt has its own branch: 12 first attempts, the failing task's retry and
    # the retry of the task whose worker was killed (unless that was the failing task)
    assert len(branches) in (13, 14)
    assert git_status() == before


def test_demo_refuses_a_directory_that_already_holds_one(host: Path) -> None:
    (host / "demo" / "repo").mkdir(parents=True)
    line = one_error_line(reconcile("demo", "--dir", str(host / "demo"), cwd=ROOT, timeout=60))
    assert "already holds a demo" in line
