"""Workers as detached processes, for hosts without tmux.

A worker is started through a short-lived launcher (``reconciler/runtimes/spawn.py``)
that puts it in a new session and exits at once, so the worker never becomes a
zombie of a long-running controller.  Its parent is a small reaper that records
how it ended (``<worker>.exit`` beside its output), which only a parent can learn.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import RuntimeBackendError
from reconciler.model import RuntimeInstance
from reconciler.proctree import create_time_of, kill_supervised, process_matches, request_stop
from reconciler.runtimes import spawn
from reconciler.runtimes.base import Started
from reconciler.runtimes.exits import exit_record


class ProcessRuntime:
    name = "process"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        log = self.log_dir / f"{worker_id}.out"
        exit_record(self.log_dir, worker_id).unlink(missing_ok=True)  # a predecessor's
        # run as a file in isolated mode without site (-I -S): it needs only the standard
        # library, so it starts in a third of the time, and no directory or PYTHON*
        # variable of the caller's can change what it imports
        proc = subprocess.run(
            [sys.executable, "-I", "-S", spawn.__file__, str(log),
             str(exit_record(self.log_dir, worker_id)), "--", *argv],
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
            cwd=self.log_dir.parent)
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise RuntimeBackendError(
                f"could not start {worker_id} as a process: {proc.stderr.strip() or proc.stdout}")
        pid = int(proc.stdout.strip())
        return Started(pid, create_time_of(pid))

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        if instance is not None and instance.alive and instance.pid:
            kill_supervised(instance.pid, grace)

    def request_stop(self, instance: RuntimeInstance) -> None:
        request_stop(instance.pid)

    def is_running(self, instance: RuntimeInstance) -> bool:
        return process_matches(instance.pid, None)
