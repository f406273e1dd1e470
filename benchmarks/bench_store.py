"""The store at scale: what a long history costs a controller pass and the read commands.

A pool that has run for months holds 100,000 tasks, 100,000 past attempts and a
million events.  None of that history should make a controller pass, ``status``,
a page of ``task list`` or ``events`` slower, and ``task list -o json`` must
stream every task in bounded memory.  Each figure is measured twice in the same
run, the samples of the two alternating: on a fresh pool (the baseline: same
schema, same workers, 100 tasks so every page is as full; ``--baseline-tasks 0``
makes it empty) and on a store at scale, and printed with the ratio.

The history is written with plain ``executemany`` inserts into a store whose
schema the real ``Store`` created (so its indexes are the real ones, and no
``ANALYZE`` is run: the planner sees what it sees in a user's store).

Run: ``python benchmarks/bench_store.py [--tasks 100000] [--attempts 100000]
[--events 1000000] [--baseline-tasks 100] [--repeat 20] [--cli-repeat 5]``.
Its state directory is a temporary one, removed on the way out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import poolkit  # the benchmarks' folder is on the path when a script runs

from reconciler.paths import pool_paths
from reconciler.store.sqlite import Store

POOL = "bench"
WORKERS = 8
TASK_STATUSES = ("succeeded",) * 90 + ("failed",) * 5 + ("cancelled",) * 2 + ("queued",) * 3
EVENT_KINDS = ("task.queued", "attempt.started", "attempt.succeeded", "worker.health",
               "worker.restarted")
RARE_KIND, RARE_EVERY = "pool.paused", 10_000  # a kind `events --kind pool` must find
PROMPT = "Refactor the module so that each function does one thing. " * 4


def build_store(state_dir: Path, tasks: int, attempts: int, events: int) -> Path:
    """A pool's store with ``tasks``, ``attempts`` (ended) and ``events`` of history,
    ``WORKERS`` live workers and a controller; returns the store's path."""
    paths = pool_paths(state_dir, POOL).create()
    Store(paths.store).close()  # the real schema and indexes
    now = time.time()
    db = sqlite3.connect(paths.store, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO tasks (id, title, prompt, priority, status, created_at, updated_at,"
        " attempts, branch) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
        ((i, f"task {i}", PROMPT, TASK_STATUSES[i % len(TASK_STATUSES)], now - i, now - i,
          0 if TASK_STATUSES[i % len(TASK_STATUSES)] == "queued" else 1,
          f"reconciler/{POOL}/task-{i}") for i in range(1, tasks + 1)))
    db.executemany(
        "INSERT INTO attempts (task_id, number, worker_id, lease_token, lease_expires_at,"
        " status, started_at, ended_at, exit_code, branch, worktree, log_path)"
        " VALUES (?, 1, ?, 'x', ?, ?, ?, ?, 0, ?, ?, ?)",
        ((1 + i % max(tasks, 1), f"w-{1 + i % WORKERS}", now - i,
          "succeeded" if i % 10 else "failed", now - i - 5, now - i,
          f"reconciler/{POOL}/task-{i}", f"/worktrees/{POOL}/task-{i}-1",
          f"/logs/task-{i}-1.log") for i in range(attempts)))
    db.executemany(
        "INSERT INTO events (at, kind, worker_id, task_id, message, fields) VALUES"
        " (?, ?, ?, ?, ?, ?)",
        ((now - events + i, RARE_KIND if i % RARE_EVERY == 0 else EVENT_KINDS[i % len(EVENT_KINDS)],
          f"w-{1 + i % WORKERS}",
          1 + i % max(tasks, 1), f"attempt 1 of task {i % max(tasks, 1)}",
          json.dumps({"attempt": 1, "status": "succeeded"})) for i in range(events)))
    db.executemany(
        "INSERT INTO workers (id, runtime, state, started_at, heartbeat_at, health,"
        " restart_epoch) VALUES (?, 'process', 'idle', ?, ?, 'healthy', ?)",
        ((f"w-{i}", now, now, now - 60) for i in range(1, WORKERS + 1)))
    db.executemany("INSERT INTO restarts (worker_id, at, reason) VALUES (?, ?, 'crashed')",
                   ((f"w-{1 + i % WORKERS}", now - attempts + i) for i in range(attempts // 10)))
    db.execute("INSERT INTO controller (id, pid, started_at, heartbeat_at) VALUES (1, 1, ?, ?)",
               (now, now))
    db.execute("COMMIT")
    db.close()
    return paths.store


def pass_reads(store: Store) -> dict[str, Callable[[], object]]:
    """The store reads one controller pass makes (reconciler.observe and the loop)."""
    worktrees = [f"/worktrees/{POOL}/task-{i}-1" for i in range(1, WORKERS + 1)]
    return {
        "workers()": store.workers,
        "queue_counts()": store.queue_counts,
        "attempt_worktrees()": lambda: store.attempt_worktrees(worktrees),
        "running_attempts()": store.running_attempts,
        "restart_history()": store.restart_history,
        "controller()": store.controller,
        "latest_spec()": store.latest_spec,
        "paused_until()": store.paused_until,
    }


def run_cli(state_dir: Path, args: list[str]) -> tuple[float, float]:
    """One ``reconcile`` process: its wall time (ms) and its peak RSS (MB)."""
    command = [sys.executable, "-m", "reconciler", "--state-dir", str(state_dir), *args,
               "--pool", POOL]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=poolkit.reconciler_env(state_dir))
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    errors = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0, 3):  # 3: status says a worker is unhealthy
        sys.exit(f"error: {' '.join(args)} exited {proc.returncode}: {errors.strip()}")
    return elapsed, usage.ru_maxrss / 1024


def read_command_reads(store: Store) -> dict[str, Callable[[], object]]:
    """What ``status``, a ``task list`` page and ``events`` read from the store, in-process
    (the processes below also pay for Python and the imports, the same at any scale)."""
    return {
        "status store reads": lambda: (
            [r() for r in pass_reads(store).values()], store.task_titles([1, 2, 3]),
            store.deleting(), store.rescued_counts()),
        "task list page read": lambda: (store.tasks(limit=50), store.queue_counts()),
        "events read": lambda: store.find_events(last=50),
        "events --kind read": lambda: store.find_events(kind="pool", last=50),
        "events --task read": lambda: store.find_events(task_id=7, last=50),
    }


COMMANDS = {
    "status": ["status"],
    "task list (page)": ["task", "list"],
    "task list -o json": ["task", "list", "-o", "json"],
    "events": ["events"],
    "events --kind": ["events", "--kind", "pool"],
    "events --task": ["events", "--task", "7"],
}


def measure(baseline: Path, scaled: Path, repeat: int,
            cli_repeat: int) -> list[tuple[str, str, float, float]]:
    """``(what, unit, on the baseline, at scale)`` for each figure.  Samples of the two
    stores alternate, so a change in the machine's load meanwhile hits both alike."""
    figures = []
    with Store(pool_paths(baseline, POOL).store) as small, \
            Store(pool_paths(scaled, POOL).store) as big:
        reads = [pass_reads(small), pass_reads(big)]
        for name in reads[0]:
            figures.append((name, "ms", *alternating(
                [reads[0][name], reads[1][name]], repeat)))
        figures.append(("pass store reads", "ms", *alternating(
            [functools.partial(read_all, r) for r in reads], repeat)))
        commands = [read_command_reads(small), read_command_reads(big)]
        for name in commands[0]:
            figures.append((name, "ms", *alternating(
                [commands[0][name], commands[1][name]], repeat)))
    for name, args in COMMANDS.items():
        runs: list[list[tuple[float, float]]] = [[], []]
        for _ in range(cli_repeat):
            for side, state_dir in enumerate((baseline, scaled)):
                runs[side].append(run_cli(state_dir, args))
        small_run, big_run = runs
        figures.append((name, "ms", statistics.median(t for t, _ in small_run),
                        statistics.median(t for t, _ in big_run)))
        if name == "task list -o json":
            figures.append((f"{name} peak RSS", "MB", max(m for _, m in small_run),
                            max(m for _, m in big_run)))
    return figures


def read_all(reads: dict[str, Callable[[], object]]) -> None:
    for read in reads.values():
        read()


def alternating(reads: list[Callable[[], object]], repeat: int) -> tuple[float, float]:
    """The median time (ms) of each of two reads, sampled in turn."""
    samples: list[list[float]] = [[], []]
    for _ in range(repeat):
        for side, read in enumerate(reads):
            start = time.perf_counter()
            read()
            samples[side].append((time.perf_counter() - start) * 1000)
    return statistics.median(samples[0]), statistics.median(samples[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline-tasks", type=int, default=100,
                        help="tasks (and attempts; ten times as many events) of the baseline "
                        "store: enough to fill a page, so both show as many rows (default 100; "
                        "0: empty)")
    parser.add_argument("--repeat", type=int, default=20, help="samples per store read")
    parser.add_argument("--cli-repeat", type=int, default=5, help="processes per command")
    args = parser.parse_args()
    if min(args.tasks, args.attempts, args.events, args.baseline_tasks) < 0 or \
            min(args.repeat, args.cli_repeat) < 1:
        print("error: sizes must be >= 0 and repeats >= 1", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        small, full = root / "small", root / "full"
        build_store(small, args.baseline_tasks, args.baseline_tasks, 10 * args.baseline_tasks)
        start = time.perf_counter()
        build_store(full, args.tasks, args.attempts, args.events)
        print(f"store: {args.tasks} tasks, {args.attempts} attempts, {args.events} events "
              f"(built in {time.perf_counter() - start:.1f} s); baseline, same run: the same "
              f"pool with {args.baseline_tasks} tasks and attempts, "
              f"{10 * args.baseline_tasks} events")
        print(f"{'what':<26} {'baseline':>10} {'at scale':>10} {'ratio':>8}")
        for name, unit, before, after in measure(small, full, args.repeat, args.cli_repeat):
            print(f"{name:<26} {before:>7.3f} {unit} {after:>7.3f} {unit} "
                  f"{after / before if before else 0:>7.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
