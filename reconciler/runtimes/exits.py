"""How a ``runtime: process`` worker ended, as its reaper recorded it.

The launcher (``spawn.py``) leaves each worker a reaper parent that writes
``<logs>/<worker>.exit`` (``{"pid": N, "returncode": R}``) after the worker exits
and before it is reaped: once the pid is gone, the record is there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from reconciler.proctree import process_state

ZOMBIE_WAIT = 0.5  # at most this long for a reaper to write down an exit it just saw


def exit_record(log_dir: Path, worker_id: str) -> Path:
    return log_dir / f"{worker_id}.exit"


def recorded_exit(log_dir: Path, worker_id: str, pid: int) -> int | None:
    """The returncode of ``pid`` (negative: killed by that signal) as its reaper wrote
    it, or None when no reaper did (it was killed too, or the worker predates it).  A
    pid that is still a zombie is being recorded: wait for it, briefly."""
    deadline = time.monotonic() + ZOMBIE_WAIT
    while process_state(pid) == "Z" and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        record = json.loads(exit_record(log_dir, worker_id).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("pid") != pid:
        return None  # another worker's of that name
    returncode = record.get("returncode")
    return returncode if isinstance(returncode, int) else None
