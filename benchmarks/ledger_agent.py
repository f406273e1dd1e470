#!/usr/bin/env python3
"""ledger_agent: the agent of the chaos ledger suite (``benchmarks/chaos_ledger.py``).

It is a pool's ``worker.command``.  It writes what it does to a ledger kept
outside the store, so the suite can check the store's story against the
agents' own:

* ``<ledger>/ledger.jsonl`` gets one JSON line per event, each appended with a
  single ``write`` on an ``O_APPEND`` descriptor (lines never interleave):
  ``start`` (task, attempt, pid, ppid, time), ``end`` when the work is done
  (with ``committed``), ``duplicate`` when another agent of the same task is
  alive, ``killed-worker`` when it SIGKILLs its own worker.
* For its whole life it holds an exclusive ``flock`` on
  ``<ledger>/locks/task-<id>.lock``.  The kernel releases it when the process
  dies, even by SIGKILL, so failing to take it means exactly "another agent of
  this task is alive right now".  It then writes ``duplicate`` (with the pid
  holding the lock) and carries on as if nothing happened, as a real agent would.

The task id and attempt number come from ``RECONCILER_TASK_ID`` and
``RECONCILER_ATTEMPT`` (set by the worker).  The work is a sleep of
``--min-seconds`` to ``--max-seconds`` (chosen from the task id and attempt),
then a commit of ``chaos/task-<id>.txt`` in the working directory (the
attempt's worktree) unless ``--no-commit``.

On the first attempt of every task whose id is a multiple of
``--kill-worker-every`` (0: never), the agent SIGKILLs its parent (the worker
supervising it) right after starting, then keeps working for
``--after-kill-seconds`` before it commits and writes ``end``: an agent that
outlives its worker.  A pool that keeps "never twice at once" must kill it (or
never rerun the task while it lives); otherwise the rerun's agent finds the
lock taken and the ledger shows a ``duplicate``.

Exit codes: 0 done (and committed unless ``--no-commit``), 2 usage error,
3 the commit failed (the worktree is gone, for instance).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.jsonl"
LOCKS_DIR = "locks"
GIT_IDENTITY = ("-c", "user.name=ledger-agent", "-c", "user.email=ledger-agent@localhost")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ledger_agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", type=Path, required=True, help="the ledger directory")
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--max-seconds", type=float, default=1.0)
    parser.add_argument("--kill-worker-every", type=int, default=17, metavar="N",
                        help="tasks whose id is a multiple of N kill their worker on their "
                        "first attempt (0: none)")
    parser.add_argument("--after-kill-seconds", type=float, nargs=2, default=(3.0, 5.0),
                        metavar=("MIN", "MAX"), help="how long such an agent keeps working")
    parser.add_argument("--early", choices=["none", "odd", "all"], default="none",
                        help="which of those tasks (by id // N) were started by a launcher "
                        "that already killed the worker before exec'ing this agent (the "
                        "earliest possible moment: see chaos_ledger.LAUNCHER)")
    parser.add_argument("--no-commit", action="store_true", help="do not commit a file")
    return parser.parse_args(argv)


def record(ledger: Path, event: str, task: int, attempt: int, **fields: Any) -> None:
    """Append one line with one write: O_APPEND keeps concurrent lines whole."""
    line = {"event": event, "task": task, "attempt": attempt, "pid": os.getpid(),
            "ppid": os.getppid(), "time": time.time(), **fields}
    fd = os.open(ledger / LEDGER_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def take_task_lock(ledger: Path, task: int) -> tuple[int, int | None]:
    """Open the task's lock file and try to lock it: (fd, None) if locked, else
    (fd, the pid written by the agent that holds it)."""
    locks = ledger / LOCKS_DIR
    locks.mkdir(exist_ok=True)
    fd = os.open(locks / f"task-{task}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return fd, int(holder) if holder.isdigit() else -1
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd, None


def say(text: str) -> None:
    """Print a progress line; a worker that died has closed our pipe, and that is fine."""
    with contextlib.suppress(OSError):
        print(f"ledger-agent: {text}", flush=True)


def commit(task: int, attempt: int) -> bool:
    path = Path("chaos") / f"task-{task}.txt"
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"task {task} attempt {attempt} pid {os.getpid()}\n")
        for argv in (["git", "add", str(path)],
                     ["git", *GIT_IDENTITY, "commit", "-q", "-m", f"ledger-agent: task {task}"]):
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        task = int(os.environ["RECONCILER_TASK_ID"])
        attempt = int(os.environ["RECONCILER_ATTEMPT"])
    except (KeyError, ValueError):
        print("ledger_agent: RECONCILER_TASK_ID and RECONCILER_ATTEMPT must be set",
              file=sys.stderr)
        return 2
    ledger: Path = args.ledger
    record(ledger, "start", task, attempt)
    lock_fd, holder = take_task_lock(ledger, task)  # held until we exit (or are killed)
    if holder is not None:
        record(ledger, "duplicate", task, attempt, holder=holder)
    say(f"task {task} attempt {attempt} (pid {os.getpid()})")
    rng = random.Random(task * 1000 + attempt)
    seconds = rng.uniform(args.min_seconds, args.max_seconds)
    every = args.kill_worker_every
    if every > 0 and task % every == 0 and attempt == 1:
        if args.early == "all" or (args.early == "odd" and (task // every) % 2 == 1):
            record(ledger, "killed-worker", task, attempt, worker=None, early=True)
        elif os.getppid() != 1:
            worker = os.getppid()
            record(ledger, "killed-worker", task, attempt, worker=worker, early=False)
            os.kill(worker, signal.SIGKILL)
        seconds = rng.uniform(*args.after_kill_seconds)
    time.sleep(seconds)
    committed = False if args.no_commit else commit(task, attempt)
    record(ledger, "end", task, attempt, committed=committed)
    say("done")
    os.close(lock_fd)
    return 0 if committed or args.no_commit else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
