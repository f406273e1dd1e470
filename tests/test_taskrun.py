"""run_command against real processes: exit codes, logs, timeouts and cancellation of trees."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from reconciler.taskrun import RunResult, log_tail, run_command
from tests.helpers import gone, wait_for

GRACE = 0.5

# The command under test: it starts a child, which starts a grandchild that leaves
# the process group with setsid() and ignores SIGTERM; every one of them writes
# its pid to PIDS_FILE and then sleeps.
TREE_SCRIPT = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    pids, role = sys.argv[1], sys.argv[2]
    if role == "grandchild":
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pids, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    nxt = {"parent": "child", "child": "grandchild"}.get(role)
    if nxt:
        subprocess.Popen([sys.executable, __file__, pids, nxt])
    print(role, "ready", flush=True)
    time.sleep(600)
""")


def run(argv: list[str], tmp_path: Path, *, timeout: float = 30.0,
        should_cancel: Callable[[], bool] | None = None) -> RunResult:
    cancel = should_cancel or (lambda: False)
    return run_command(argv, cwd=tmp_path, env=dict(os.environ), log=tmp_path / "task.log",
                       timeout=timeout, grace=GRACE, should_cancel=cancel, echo=False)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    pids = tmp_path / "pids"
    yield [sys.executable, str(script), str(pids), "parent"], pids
    # never leak the tree into the next test, whatever happened (same script: not a reused pid)
    for pid in read_pids(pids):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if str(script) in proc.cmdline():
                proc.kill()


def test_success_records_output_in_the_log(tmp_path: Path) -> None:
    result = run(py("print('hello from the task'); import sys; print('err', file=sys.stderr)"),
                 tmp_path)
    assert (result.status, result.exit_code, result.error) == ("succeeded", 0, None)
    assert result.ended_at is not None
    log = (tmp_path / "task.log").read_text()
    assert "hello from the task" in log
    assert "err" in log
    assert "hello from the task" in log_tail(tmp_path / "task.log")


def test_log_is_private(tmp_path: Path) -> None:
    run(py("print('x')"), tmp_path)
    assert stat.S_IMODE((tmp_path / "task.log").stat().st_mode) == 0o600


def test_runs_in_the_given_directory_with_the_given_env(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    result = run_command(py("import os; print(os.getcwd()); print(os.environ['TASK_X'])"),
                         cwd=workdir, env={**os.environ, "TASK_X": "42"},
                         log=tmp_path / "task.log", timeout=30, grace=GRACE,
                         should_cancel=lambda: False, echo=False)
    assert result.status == "succeeded"
    log = (tmp_path / "task.log").read_text().split()
    assert log == [str(workdir), "42"]


def test_failure_records_exit_code(tmp_path: Path) -> None:
    result = run(py("print('about to fail'); raise SystemExit(3)"), tmp_path)
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exit 3"
    assert "about to fail" in (tmp_path / "task.log").read_text()


@pytest.mark.parametrize("argv0", [
    pytest.param("reconciler-no-such-command-xyz", id="on-path"),
    pytest.param("/nonexistent/dir/command", id="absolute"),
])
def test_command_not_found(tmp_path: Path, argv0: str) -> None:
    result = run([argv0, "arg"], tmp_path)
    assert result.status == "failed"
    assert result.exit_code == 127
    assert result.error is not None and argv0 in result.error
    assert argv0 in (tmp_path / "task.log").read_text()


def test_timeout_kills_the_whole_tree(tmp_path: Path, tree: tuple[list[str], Path]) -> None:
    argv, pids_file = tree
    result = run(argv, tmp_path, timeout=3.0)

    assert result.status == "timeout"
    pids = read_pids(pids_file)
    assert len(pids) == 3, f"the tree did not start in time: {pids}"
    wait_for(lambda: all(gone(p) for p in pids), timeout=GRACE + 1, interval=0.05,
             message=f"processes {pids} to die")


def test_cancel_kills_the_whole_tree(tmp_path: Path, tree: tuple[list[str], Path]) -> None:
    argv, pids_file = tree

    def should_cancel() -> bool:
        return len(read_pids(pids_file)) == 3

    result = run(argv, tmp_path, timeout=60.0, should_cancel=should_cancel)

    assert result.status == "cancelled"
    assert result.error == "cancelled by operator"
    pids = read_pids(pids_file)
    wait_for(lambda: all(gone(p) for p in pids), timeout=GRACE + 1, interval=0.05,
             message=f"processes {pids} to die")


def test_a_full_disk_under_the_log_neither_kills_the_reader_nor_stalls_the_task(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 7 item 9: a log write failing with ENOSPC killed the output reader with a
    traceback; the task then blocked on its full pipe.  /dev/full fails every write."""
    result = run_command(py("import sys; sys.stdout.write('x' * 300_000); print('done')"),
                         cwd=tmp_path, env=dict(os.environ), log=Path("/dev/full"),
                         timeout=20, grace=GRACE, should_cancel=lambda: False, echo=False)
    assert (result.status, result.exit_code) == ("succeeded", 0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert err.count("cannot write the task log") == 1
