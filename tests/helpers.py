"""Helpers for tests: run the real CLI, write specs, poll for conditions, find processes.

What drives a whole pool through the CLI (status, tasks, events...) is in ``tests.e2e``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
FAKE_AGENT = ROOT / "specs" / "fake-agent"
EXAMPLE_SPECS = sorted((ROOT / "examples").glob("*.yaml"))
GIT_IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            if proc.pid != os.getpid() and any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def gone(pid: int) -> bool:
    """Dead or a zombie (pid 1 in a container may never reap orphans)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL each process (already gone is fine) and reap what we can."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def kill_processes_mentioning(text: str) -> None:
    kill_all(processes_mentioning(text))


def kill_tmux_servers_under(directory: Path) -> None:
    """Kill every tmux server whose socket is under ``directory`` (a ``TMUX_TMPDIR``)."""
    for socket in directory.glob("**/tmux-*/*"):
        subprocess.run(["tmux", "-S", str(socket), "kill-server"], capture_output=True,
                       check=False)


def make_repository(path: Path, *, branch: str = "main", filename: str = "README.md",
                    text: str = "# test repo\n") -> Path:
    """A real repository at ``path`` on ``branch``, with one commit of one file."""
    path.mkdir()
    git(path, "init", "-q", "-b", branch)
    (path / filename).write_text(text)
    git(path, "add", filename)
    git(path, *GIT_IDENTITY, "commit", "-q", "-m", "initial")
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def write_spec(directory: Path, *, name: str = "testpool", replicas: int = 2,
               repo: str = "repo", runtime: str = "tmux", command: list[str] | None = None,
               extra: dict[str, Any] | None = None, filename: str = "workers.yaml") -> Path:
    """Write a pool spec using the fake agent; ``extra`` is merged into ``spec``."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "repo": repo,
        "baseRef": "main",
        "runtime": runtime,
        "tmux": {"socket": f"rt-{name}"},
        "worker": {"command": command or [str(FAKE_AGENT), "--prompt-file", "{task.prompt_file}",
                                          "--title", "{task.title}", "--seconds", "0.2"]},
        "health": {"heartbeatInterval": "500ms", "unresponsiveAfter": "5s", "deadAfter": "10s"},
        # most tests drive the pool with apply alone; controller tests turn it on
        "controller": {"enabled": False},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    document = {"apiVersion": "reconciler/v1", "kind": "WorkerPool",
                "metadata": {"name": name}, "spec": spec}
    path = directory / filename
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def example_for(example: Path, directory: Path, repo: Path) -> Path:
    """A copy of the shipped ``example`` in ``directory`` with only its ``repo:``
    placeholder line changed, to ``repo``: what an operator gets by following the
    example's own instructions."""
    from reconciler.spec import REPO_PLACEHOLDER

    text = example.read_text(encoding="utf-8")
    marker = f"repo: {REPO_PLACEHOLDER}"
    assert text.count(marker) == 1, \
        f"{example.name} must name its repository as `{marker}` (once), which validate explains"
    copy = directory / example.name
    copy.write_text(text.replace(marker, f"repo: {repo}"), encoding="utf-8")
    return copy


def push_spec(clone: Path, message: str, **changes: Any) -> str:
    """Edit ``clone``'s workers.yaml (``replicas=3``... into ``spec``), commit it, push it
    to origin's main and return the commit (GitOps sync tests)."""
    git(clone, "pull", "-q", "--ff-only", "origin", "main")  # what others pushed first
    path = clone / "workers.yaml"
    document = yaml.safe_load(path.read_text())
    document["spec"].update(changes)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    git(clone, "add", "workers.yaml")
    git(clone, *GIT_IDENTITY, "commit", "-q", "-m", message)
    git(clone, "push", "-q", "origin", "HEAD:main")
    return git(clone, "rev-parse", "HEAD").strip()


CLI = [sys.executable, "-m", "reconciler"]


def reconcile(*args: str, check: bool = False, timeout: float = 120,
              input_text: str | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m reconciler``) in a subprocess."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, input=input_text, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"reconcile {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def reconcile_background(*args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start the real CLI without waiting for it; the caller waits for or ends it."""
    return subprocess.Popen([*CLI, *args], stdout=stdout, stderr=subprocess.DEVNULL, text=True)


def error_lines(proc: subprocess.CompletedProcess[str], count: int | None = None) -> list[str]:
    """The CLI failed (exit 1) with only ``error: `` lines on stderr, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines, "expected an error on stderr"
    assert "Traceback" not in proc.stderr, proc.stderr
    for line in lines:
        assert line.startswith("error: "), proc.stderr
    if count is not None:
        assert len(lines) == count, lines
    return lines


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI failed with exactly one ``error: `` line; returns it."""
    return error_lines(proc, count=1)[0]


POLL_BACKOFF = 1.5
POLL_LONGEST = 1.0


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.2,
             message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    At the default interval a condition mostly runs the CLI, a Python process that costs
    more CPU than the pool under test spends meanwhile: on 2 cores, polling every 0.2 s
    slowed what it waited for.  So the wait grows by half each time, up to 1 s.  A
    shorter ``interval`` is a cheap check in this process, and stays as given."""
    deadline = time.monotonic() + timeout
    longest = POLL_LONGEST if interval >= 0.2 else interval
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
        interval = min(interval * POLL_BACKOFF, longest)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")
