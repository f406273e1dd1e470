"""The README's main job: `reconcile demo` end to end, leaving the clone clean, from the
clone or from any other directory (its spec and agent ship in the package)."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path

import pytest

from reconciler.demo import DEMO_SPEC
from tests.helpers import ROOT, git, kill_processes_mentioning, one_error_line, reconcile

pytestmark = pytest.mark.e2e


def git_status() -> str:
    return git(ROOT, "status", "--porcelain")


def test_demo_runs_end_to_end_from_any_directory_and_leaves_the_clone_clean(
        host: Path) -> None:
    """Run from a directory that is not the clone (its spec and agent ship in the
    package): it writes nothing there, nor in the clone."""
    before = git_status()
    elsewhere = host / "elsewhere"
    elsewhere.mkdir()
    demo_dir = host / "demo"
    try:
        proc = reconcile("demo", "--tasks", "12", "--dir", str(demo_dir), "--teardown",
                         cwd=elsewhere, timeout=300)
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
    assert list(elsewhere.iterdir()) == []


def test_demo_refuses_a_directory_that_already_holds_one(host: Path) -> None:
    (host / "demo" / "repo").mkdir(parents=True)
    line = one_error_line(reconcile("demo", "--dir", str(host / "demo"), cwd=ROOT, timeout=60))
    assert "already holds a demo" in line


def test_the_demo_spec_and_agent_are_package_data() -> None:
    """A non-editable install (a wheel) holds only what pyproject.toml declares: the
    demo spec, its executable agent, and every other non-Python file of the package
    must match a package-data pattern."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["reconciler"]
    package = ROOT / "reconciler"
    tracked = git(ROOT, "ls-files", "--", "reconciler").splitlines()
    data = [Path(f).relative_to("reconciler").as_posix() for f in tracked
            if not f.endswith(".py")]
    assert DEMO_SPEC.relative_to(package).as_posix() in data
    assert "demo_pool/fake-agent" in data
    assert [f for f in data if not any(fnmatch.fnmatch(f, glob) for glob in declared)] == []
    assert os.access(DEMO_SPEC.parent / "fake-agent", os.X_OK)
