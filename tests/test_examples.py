"""Every shipped example runs as written (issue 12): only its ``repo:`` placeholder is
set, to a real repository, and its agent is whatever the example names on PATH.

For ``examples/claude-code.yaml`` that is ``tests/bin/claude``, a stand-in that
changes the worktree and prints what ``claude -p --output-format json`` prints, so
the example's own hooks, result preset and budget are what is exercised.  A new
file in ``examples/*.yaml`` is picked up here without touching this test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.spec import REPO_PLACEHOLDER
from tests.e2e import add_task, apply, delete, show_task, wait_tasks
from tests.helpers import (
    EXAMPLE_SPECS,
    example_for,
    git,
    make_repository,
    one_error_line,
    reconcile,
)

STAND_INS = Path(__file__).resolve().parent / "bin"
CLAUDE = STAND_INS / "claude"
EXAMPLES = [pytest.param(p, id=p.name) for p in EXAMPLE_SPECS]


def claude_figures(scratch: Path) -> dict[str, object]:
    """What the stand-in reports, as the ``claude-code`` preset should record it: read
    from the stand-in's own output, so its figures live in one place."""
    scratch.mkdir()
    out = subprocess.run([str(CLAUDE), "-p", "probe", "--output-format", "json"], cwd=scratch,
                         capture_output=True, text=True, check=True).stdout
    printed = json.loads(out)
    usage = printed["usage"]
    return {"is_error": False, "cost_usd": printed["total_cost_usd"],
            "input_tokens": usage["input_tokens"] + usage["cache_creation_input_tokens"]
            + usage["cache_read_input_tokens"],
            "output_tokens": usage["output_tokens"], "turns": printed["num_turns"],
            "message": None}


def any_repository(path: Path) -> Path:
    """A repository as a stranger's might be: its branch is not called main, and it
    holds none of the files an example might wrongly expect (.env.example...)."""
    return make_repository(path, branch="trunk", filename="app.py", text="print('hello')\n")


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_runs_as_shipped(example: Path, host: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{STAND_INS}{os.pathsep}{os.environ['PATH']}")
    repo = any_repository(host / "project")
    base = git(repo, "rev-parse", "HEAD").strip()
    spec = example_for(example, host, repo)
    document = yaml.safe_load(spec.read_text())["spec"]
    try:
        apply(spec)
        ids = [add_task(spec, f"Write down part {n}: keep \"quotes\" and $(this) as text",
                        title=f"part {n}") for n in (1, 2)]
        wait_tasks(spec, *ids, timeout="90s")
        for task_id in ids:
            shown = show_task(spec, task_id)
            assert shown["status"] == "succeeded", shown
            (attempt,) = shown["attempt_details"]
            ahead = git(repo, "rev-list", "--count", f"{base}..{attempt['branch']}", "--")
            assert int(ahead) >= 1, f"no commit on {attempt['branch']}"
            if document["worker"]["command"][0] == "claude":
                report = dict(attempt["report"] or {})
                assert report.pop("session_id"), attempt
                assert report == claude_figures(host / f"probe-{task_id}")
        # worktrees live outside the repository: the checkout itself is left as it was
        assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    finally:
        delete(spec)


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_example_run_as_is_stops_at_its_placeholder_and_says_what_to_do(
        example: Path, host: Path) -> None:
    """``validate``, ``diff`` and ``apply`` on the shipped file name the line and the fix;
    nothing is started against some other repository."""
    relative = example.relative_to(example.parents[1])
    for command in ("validate", "diff", "apply"):
        line = one_error_line(reconcile(command, "-f", str(relative), cwd=example.parents[1]))
        assert line.startswith(f"error: {relative}:"), line
        assert f"spec.repo: {REPO_PLACEHOLDER} is the example's placeholder" in line
        assert "set `repo: .`" in line
    assert not (host / "state" / "pools").exists()
