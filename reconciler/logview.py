"""``reconcile logs``: a task's log (its latest attempt, or ``--attempt N``), a worker's
own log, or the controller's; ``--tail N`` lines, ``-f`` to follow.

Following polls the file, as ``tail -f`` does, and ends by itself when the attempt
has ended and its log has been read to the end (a worker's or the controller's log
is followed until Ctrl-C).  What is shown on a terminal has its control characters
written out visibly: an agent's output must not drive the operator's terminal.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from reconciler.errors import PoolError
from reconciler.paths import PoolPaths
from reconciler.report.documents import printable
from reconciler.store.port import StorePort

FOLLOW_POLL = 0.2  # seconds between looks at a followed log
CHUNK = 65536


def log_target(paths: PoolPaths, store: StorePort, target: str,
               attempt: int | None) -> tuple[Path, Callable[[], bool]]:
    """The log file ``target`` names (a task id, ``w-N`` or ``controller``) and a check
    of whether it is still being written (for ``-f``)."""
    if target == "controller":
        return paths.logs / "controller.log", lambda: True
    if target.startswith("w-"):
        if not any(w.id == target for w in store.workers(include_removed=True)):
            raise PoolError(f"no worker {target} in pool {paths.name}",
                            hint="reconcile status lists the workers")
        return paths.logs / f"{target}.log", lambda: True
    if not target.isdigit():
        raise PoolError(f"{target!r} is neither a task id, a worker id (w-N) nor "
                        "`controller`", hint="e.g. reconcile logs 12, or reconcile logs w-2")
    task_id = int(target)
    store.task(task_id)  # "no task with id N" when there is none
    attempts = [a for a in store.attempts(task_id) if a.log_path]
    if attempt is not None:
        attempts = [a for a in attempts if a.number == attempt]
    if not attempts:
        which = f"attempt {attempt}" if attempt is not None else "an attempt"
        raise PoolError(f"task {task_id} has no log: it has not had {which} yet",
                        hint="reconcile task show " + str(task_id))
    chosen = attempts[-1]

    def running() -> bool:
        current = [a for a in store.attempts(task_id) if a.id == chosen.id]
        return bool(current) and current[0].status == "running"

    return Path(str(chosen.log_path)), running


def show_log(path: Path, *, tail: int | None, follow: bool, still_written: Callable[[], bool],
             out: BinaryIO | None = None) -> None:
    """Print ``path`` (its last ``tail`` lines), then, with ``follow``, what is added to it
    until ``still_written`` says it is done and everything was read."""
    out = out if out is not None else sys.stdout.buffer
    terminal = os.isatty(out.fileno()) if hasattr(out, "fileno") else False
    try:
        handle = path.open("rb")
    except FileNotFoundError as exc:
        raise PoolError(f"log {path} is gone (removed with its worktree, or by prune)"
                        ) from exc
    with handle:
        if tail is not None:
            lines = deque(handle, maxlen=tail)
            _write(out, b"".join(lines), terminal)
        else:
            while chunk := handle.read(CHUNK):
                _write(out, chunk, terminal)
        while follow:
            writing = still_written()  # asked before reading: the last bytes are not missed
            chunk = handle.read(CHUNK)
            if chunk:
                _write(out, chunk, terminal)
                continue
            if not writing:
                return
            time.sleep(FOLLOW_POLL)


def _write(out: BinaryIO, data: bytes, terminal: bool) -> None:
    if terminal:
        data = printable(data.decode("utf-8", "replace"), multiline=True).encode()
    out.write(data)
    out.flush()
