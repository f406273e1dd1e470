"""Helpers for tests: run the real CLI, write specs, poll for conditions, find processes."""

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
FAKE_AGENT = ROOT / "examples" / "agents" / "fake-agent"
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


def kill_processes_mentioning(text: str) -> None:
    procs = processes_mentioning(text)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


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


def reconcile(*args: str, check: bool = False, timeout: float = 120,
              input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m reconciler``) in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, input=input_text)
    if check and proc.returncode != 0:
        raise AssertionError(f"reconcile {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.2,
             message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")
