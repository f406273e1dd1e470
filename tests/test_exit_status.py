"""Exit statuses as people read them (issue 12): never subprocess's ``exit -15``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.exitstatus import describe_exit
from reconciler.model import RuntimeInstance, WorkerRow
from reconciler.observe.procs import process_instances
from reconciler.proctree import process_state
from reconciler.runtimes import spawn
from reconciler.runtimes.exits import recorded_exit
from tests.helpers import wait_for


@pytest.mark.parametrize(("code", "signal", "words"), [
    (0, None, "exit 0"),
    (3, None, "exit 3"),
    (-9, None, "killed by SIGKILL (exit 137)"),
    (-15, None, "terminated by SIGTERM (exit 143)"),
    (-2, None, "interrupted by SIGINT (exit 130)"),
    (-11, None, "killed by SIGSEGV (exit 139)"),
    (None, 9, "killed by SIGKILL (exit 137)"),
    (None, None, "exit status unknown"),
    (-77, None, "killed by signal 77 (exit 205)"),
])
def test_exit_statuses_read_as_a_shell_reports_them(code: int | None, signal: int | None,
                                                    words: str) -> None:
    assert describe_exit(code, signal) == words


def test_a_window_killed_by_a_signal_says_which() -> None:
    pane = RuntimeInstance("w-1", "tmux", 1, False, exit_signal=15)
    assert pane.exit_description() == "terminated by SIGTERM (exit 143)"


def test_an_agent_killed_by_sigterm_fails_with_words_not_a_negative_code(
        tmp_path: Path) -> None:
    from reconciler.taskrun import run_command

    result = run_command(("sh", "-c", "kill -TERM $$"), cwd=tmp_path,
                         env={"PATH": "/bin:/usr/bin"}, log=tmp_path / "log", timeout=10,
                         grace=1, should_cancel=lambda: False, echo=False)
    assert result.status == "failed" and result.error == "terminated by SIGTERM (exit 143)"


# ------------------------------------------------- runtime: process, through its reaper

def _launch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The process runtime's launcher, as ProcessRuntime runs it."""
    return subprocess.run([sys.executable, "-I", "-S", spawn.__file__, str(tmp_path / "w.out"),
                           str(tmp_path / "w.exit"), "--", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def _gone(pid: int) -> bool:
    return process_state(pid) is None


@pytest.mark.parametrize(("argv", "end", "returncode", "words"), [
    (["sh", "-c", "echo started; exit 3"], None, 3, "exit 3"),
    (["sleep", "60"], signal.SIGKILL, -9, "killed by SIGKILL (exit 137)"),
    (["sleep", "60"], signal.SIGTERM, -15, "terminated by SIGTERM (exit 143)"),
])
def test_a_detached_worker_leaves_its_real_exit_status(tmp_path: Path, argv: list[str],
                                                       end: int | None, returncode: int,
                                                       words: str) -> None:
    """Issue 12: a process-runtime worker that crashed or was killed read "exit status
    unknown" (its launcher had exited, and only a parent learns how a child ended)."""
    launched = _launch(tmp_path, *argv)  # returns at once, though the child runs on
    assert launched.returncode == 0, launched.stderr
    pid = int(launched.stdout)
    try:
        if end is not None:
            os.kill(pid, end)
        wait_for(lambda: _gone(pid), timeout=10, message="the worker to be reaped")
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert recorded_exit(tmp_path, "w", pid) == returncode  # there once the pid is gone
    assert (tmp_path / "w.exit").stat().st_mode & 0o777 == 0o600
    row = WorkerRow(id="w", runtime="process", tmux_socket=None, pid=pid, pid_create_time=None,
                    spec_id=1, template_hash=None, template_digests={}, state="running",
                    current_task=None, started_at=None, heartbeat_at=None, restarts=0,
                    drain_requested=False, exited_at=None, exit_code=None, removed=False)
    [instance] = process_instances([row], tmp_path)
    assert not instance.alive and instance.exit_description() == words
    assert recorded_exit(tmp_path, "w", pid + 1) is None  # another worker's record: not its


def test_a_program_that_cannot_start_says_so(tmp_path: Path) -> None:
    launched = _launch(tmp_path, "no-such-program-xyz")
    assert launched.returncode == 1
    assert "cannot start no-such-program-xyz: No such file or directory" in launched.stderr
