"""pueue's command line, as the pueue runtime drives it: argv lists on our side, always.

pueue runs each task's command through ``sh -c`` (pueue/src/daemon: the command
string is handed to the shell), so what we give ``pueue add`` is only our own
identifiers (the Python that runs us, ``run-task``, the pool, the task and attempt
numbers, the state directory), each quoted with ``shlex.quote``, after a ``--``:
task text (a title, a prompt) never reaches pueue, and no word of ours can be read
by the shell as anything but one argument.

Every call has a timeout and turns pueue's failure into one line
(``PueueError``); a task's ``envs`` (the submitter's whole environment) is never
read: ``reconciler.pueuestatus`` leaves it out.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.pueuestatus import PueueState, label_for, parse_status

CALL_TIMEOUT = 10.0  # one pueue call; the daemon answers in milliseconds
DAEMON_START_TIMEOUT = 10.0


class PueueError(ReconcilerError):
    """pueue refused, or could not be run."""


class PueueClient:
    """``pueue`` and ``pueued`` found on ``PATH`` (or given), with an optional
    ``--config`` (pueue's way to choose a daemon: its socket and state)."""

    def __init__(self, *, config: Path | None = None, pueue: str = "pueue",
                 pueued: str = "pueued", env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.pueue, self.pueued = pueue, pueued
        self.env = dict(env) if env is not None else None

    # ------------------------------------------------------------------ reading

    def status(self) -> PueueState:
        """One ``pueue status --json``: every task and group (``PueueStatusError`` for a
        document that is not pueue's)."""
        return parse_status(self._run("status", "--json").stdout)

    def daemon_running(self) -> bool:
        try:
            self._run("status", "--json")
        except PueueError:
            return False
        return True

    # ------------------------------------------------------------------ the daemon

    def start_daemon(self, timeout: float = DAEMON_START_TIMEOUT) -> None:
        """``pueued -d``: it puts itself in the background and returns at once, so wait
        until ``pueue status`` answers."""
        argv = [self.pueued, "-d", *self._config()]
        try:  # no pipe: the daemon keeps the output it was given, and would hold it open
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=CALL_TIMEOUT,
                                  check=False, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PueueError(f"cannot start pueued: {_why(exc)}",
                             hint="install pueue, or put pueued on PATH") from exc
        if proc.returncode != 0:
            raise PueueError(f"pueued -d exited {proc.returncode}",
                             hint="run `pueued -d` yourself to see why")
        deadline = time.monotonic() + timeout
        while not self.daemon_running():
            if time.monotonic() > deadline:
                raise PueueError(f"pueued started but did not answer within {timeout:.0f}s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ groups

    def add_group(self, group: str, parallel: int) -> None:
        self._run("group", "add", group, "--parallel", str(parallel))

    def set_parallel(self, group: str, parallel: int) -> None:
        self._run("parallel", str(parallel), "--group", group)

    def pause_group(self, group: str) -> None:
        """New tasks of ``group`` wait; running ones go on (``--wait``)."""
        self._run("pause", "--group", group, "--wait")

    def start_group(self, group: str) -> None:
        self._run("start", "--group", group)

    # ------------------------------------------------------------------ tasks

    def add_attempt(self, *, group: str, pool: str, task_id: int, attempt: int,
                    priority: int, state_dir: Path, cwd: Path) -> int:
        """Queue attempt ``attempt`` of task ``task_id`` in ``group``: pueue will run
        ``reconcile run-task`` for it.  Returns pueue's task id."""
        command = run_task_command(pool, task_id, attempt, state_dir)
        out = self._run("add", "--print-task-id", "--group", group,
                        "--label", label_for(pool, task_id, attempt),
                        # one word: clap takes a separate "-5" for an unknown flag
                        f"--priority={priority}", "--working-directory", str(cwd),
                        "--", *command).stdout.strip()
        if not out.isdigit():
            raise PueueError(f"pueue add printed no task id: {_first_line(out)!r}")
        return int(out)

    def kill(self, ids: Sequence[int]) -> None:
        self._run("kill", *(str(i) for i in ids))

    def remove(self, ids: Sequence[int]) -> None:
        """Take tasks that are not running out of pueue's list (running ones stay: they
        must be killed first)."""
        self._run("remove", *(str(i) for i in ids))

    def restart_in_place(self, ids: Sequence[int]) -> None:
        self._run("restart", "--in-place", *(str(i) for i in ids))

    # ------------------------------------------------------------------ plumbing

    def _config(self) -> list[str]:
        return ["--config", str(self.config)] if self.config is not None else []

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [self.pueue, *self._config(), *args]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=CALL_TIMEOUT, check=False, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PueueError(f"pueue {args[0]}: {_why(exc)}",
                             hint="install pueue, or put it on PATH") from exc
        if proc.returncode != 0:  # stderr only: stdout may be a status, envs and all
            said = _first_line(proc.stderr) or f"exit {proc.returncode}"
            raise PueueError(f"pueue {args[0]} failed: {said}")
        return proc


def run_task_command(pool: str, task_id: int, attempt: int, state_dir: Path) -> list[str]:
    """The words of the command pueue runs for one attempt, each quoted for ``sh -c``:
    only our own identifiers, never a task's text."""
    words = [sys.executable, "-m", "reconciler", "--state-dir", str(state_dir), "run-task",
             "--pool", pool, "--task", str(task_id), "--attempt", str(attempt)]
    return [shlex.quote(word) for word in words]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:300]


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer within {exc.timeout:.0f}s"
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename} not found on PATH"
    return str(exc)
