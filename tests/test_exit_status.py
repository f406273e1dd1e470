"""Exit statuses as people read them (issue 12): never subprocess's ``exit -15``."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.exitstatus import describe_exit
from reconciler.model import RuntimeInstance


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
