"""The store at scale: what a long history costs a controller pass and the read commands.

A pool that has run for months holds 100,000 tasks, 100,000 past attempts and a
million events.  None of that history should make a controller pass, ``status``,
a page of ``task list``, ``events`` or a dashboard refresh slower, ``report``
should cost what its window holds (not the history before it), and ``task list
-o json`` must stream every task in bounded memory.  Each figure is measured
twice in the same run, the samples of the two alternating: on a fresh pool (the
baseline: same schema, same workers, 100 tasks so every page is as full;
``--baseline-tasks 0`` makes it empty) and on a store at scale, and printed with
the ratio.  The baseline's last day holds a few attempts against about 3,300 at
scale, so ``report``'s ratios count that day's work too.

The history is written with plain ``executemany`` inserts into a store whose
schema the real ``Store`` created (so its indexes are the real ones, and no
``ANALYZE`` is run: the planner sees what it sees in a user's store).  It is
spread over the last ``--days`` (30): ids grow with time as in a real store,
attempts end evenly over the days (so a day holds 1/30 of them, about 3,300 at
full size), each has a 2,000-character output tail as a worker records, two in
three an agent's report (cost and tokens) and all their phases; some events
are alerts (a severity).  ``report --since 720h`` (30 days) reads the whole
history: the worst case.

Run: ``python benchmarks/bench_store.py [--tasks 100000] [--attempts 100000]
[--events 1000000] [--days 30] [--baseline-tasks 100] [--repeat 20]
[--cli-repeat 5]``.  Its state directory is a temporary one, removed on the way
out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
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
from reconciler.pool import Pool
from reconciler.store.sqlite import Store

POOL = "bench"
WORKERS = 8
DAY = 86400.0
TASK_STATUSES = ("succeeded",) * 90 + ("failed",) * 5 + ("cancelled",) * 2 + ("queued",) * 3
EVENT_KINDS = ("task.queued", "attempt.started", "attempt.succeeded", "worker.health",
               "worker.restarted")
RARE_KIND, RARE_EVERY = "pool.paused", 10_000  # a kind `events --kind pool` must find
PROMPT = "Refactor the module so that each function does one thing. " * 4
TAIL = ("agent: edited src/module.py, ran the tests: 42 passed\n" * 40)[:2000]


def attempt_status(task_status: str, i: int) -> str:
    """The outcome of the (only) attempt of a task of ``task_status``: a queued task's
    attempt was lost or rate limited, a failed task's failed or timed out."""
    if task_status == "failed":
        return "failed" if i % 2 else "timeout"
    if task_status == "queued":
        return "lost" if i % 2 else "rate_limited"
    return task_status


def build_store(state_dir: Path, tasks: int, attempts: int, events: int,
                days: float = 30.0) -> Path:
    """A pool's store with ``tasks``, ``attempts`` (ended) and ``events`` of history spread
    over the last ``days`` (ids growing with time), ``WORKERS`` live workers and a
    controller; returns the store's path."""
    paths = pool_paths(state_dir, POOL).create()
    Store(paths.store).close()  # the real schema and indexes
    now = time.time()
    span = days * DAY

    def ago(i: int, n: int) -> float:  # the i-th of n (0: the oldest), evenly over the span
        return now - span + (i + 1) * span / max(n, 1)

    def status(task_id: int) -> str:
        return TASK_STATUSES[task_id % len(TASK_STATUSES)]

    db = sqlite3.connect(paths.store, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    db.executemany(  # created 20 minutes before its attempt ends (10-19 min of queue wait)
        "INSERT INTO tasks (id, title, prompt, priority, status, created_at, updated_at,"
        " attempts, branch) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
        ((i, f"task {i}", PROMPT, status(i), ago(i - 1, tasks) - 1200, ago(i - 1, tasks),
          0 if status(i) == "queued" else 1, f"reconciler/{POOL}/task-{i}")
         for i in range(1, tasks + 1)))
    db.executemany(
        "INSERT INTO attempts (task_id, number, worker_id, lease_token, lease_expires_at,"
        " status, started_at, ended_at, exit_code, branch, worktree, log_path, error,"
        " output_tail, phases, report_is_error, cost_usd, input_tokens, output_tokens, turns,"
        " session_id) VALUES (?, 1, ?, 'x', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (_attempt(i, 1 + i % max(tasks, 1), ago(i, attempts),
                  attempt_status(status(1 + i % max(tasks, 1)), i)) for i in range(attempts)))
    db.executemany(
        "INSERT INTO events (at, kind, worker_id, task_id, message, fields, severity) VALUES"
        " (?, ?, ?, ?, ?, ?, ?)",
        ((ago(i, events), kind, f"w-{1 + i % WORKERS}", 1 + i % max(tasks, 1),
          f"attempt 1 of task {i % max(tasks, 1)}",
          json.dumps({"attempt": 1, "status": "succeeded"}), severity)
         for i in range(events) for kind, severity in [_event_kind(i)]))
    db.executemany(
        "INSERT INTO workers (id, runtime, state, started_at, heartbeat_at, health,"
        " restart_epoch) VALUES (?, 'process', 'idle', ?, ?, 'healthy', ?)",
        ((f"w-{i}", now, now, now - 60) for i in range(1, WORKERS + 1)))
    db.executemany("INSERT INTO restarts (worker_id, at, reason) VALUES (?, ?, 'crashed')",
                   ((f"w-{1 + i % WORKERS}", ago(i, attempts // 10))
                    for i in range(attempts // 10)))
    db.execute("INSERT INTO controller (id, pid, started_at, heartbeat_at) VALUES (1, 1, ?, ?)",
               (now, now))
    db.execute("COMMIT")
    db.close()
    return paths.store


def _attempt(i: int, task_id: int, ended: float, outcome: str) -> tuple[object, ...]:
    """The columns of attempt ``i``: 30 s to 10 min of run, two in three with a report."""
    run = 30.0 + (i * 37) % 570
    reported = i % 3 != 0
    return (task_id, f"w-{1 + i % WORKERS}", ended, outcome, ended - run, ended,
            0 if outcome == "succeeded" else 1, f"reconciler/{POOL}/task-{task_id}",
            f"/worktrees/{POOL}/task-{task_id}-1", f"/logs/task-{task_id}-1.log",
            None if outcome == "succeeded" else f"exit 1: {outcome}", TAIL,
            json.dumps({"worktree": 0.35, "agent": run - 0.6, "finish": 0.25}),
            0 if reported else None, 0.05 + (i % 40) / 100 if reported else None,
            20_000 + i % 5_000 if reported else None, 3_000 + i % 700 if reported else None,
            10 + i % 20 if reported else None, f"session-{i}" if reported else None)


def _event_kind(i: int) -> tuple[str, str | None]:
    """Event ``i``'s kind and severity: one attempt end in twenty is a failure (a warning),
    one health change in 120 a warning and one in 1,200 critical, a rare pause warns."""
    if i % RARE_EVERY == 0:
        return RARE_KIND, "warning"
    kind = EVENT_KINDS[i % len(EVENT_KINDS)]
    if kind == "attempt.succeeded" and i // len(EVENT_KINDS) % 20 == 0:
        return "attempt.failed", "warning"
    if kind == "worker.health" and i % 600 == 3:
        return kind, "critical" if i % 6000 == 3 else "warning"
    return kind, None


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
    """One ``reconcile`` process: its wall time (ms) and its peak RSS (MB).  Linux counts
    the image a child was forked from in its peak, so this never reads below the RSS of
    this process when it starts the child (about 27 MB): a floor, not the child's size."""
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


def report_reads(store: Store, window: float) -> Callable[[], object]:
    """What ``report --since window`` reads from the store, in-process."""
    return lambda: (store.report_rows(time.time() - window), store.queue_counts(),
                    store.oldest_queued_at())


def report_analysis(store: Store, window: float) -> Callable[[], object]:
    """``report``'s analysis (pure) of the rows of ``window``, read once beforehand."""
    from reconciler.report.analysis import analyse

    now = time.time()
    attempts, tasks, restarts = store.report_rows(now - window)
    counts, oldest = store.queue_counts(), store.oldest_queued_at()
    return lambda: analyse(pool=POOL, since=now - window, now=now, replicas=WORKERS,
                           attempts=attempts, tasks=tasks, restarts=restarts,
                           queued=counts.queued, running=counts.running, target_wait=300.0,
                           oldest_queued_at=oldest)


def dashboard(state_dir: Path, store: Store) -> dict[str, Callable[[], object]]:
    """One dashboard refresh, in-process: its snapshot (the store and the pool observed,
    as ``status``), and the snapshot drawn by rich into a 160-column screen."""
    from rich.console import Console

    from reconciler.pool import resolve_pool
    from reconciler.report.dashboard import TreeMeter, render, snapshot

    pool = resolve_pool(state_dir, None, POOL)
    meter = TreeMeter()

    def refresh() -> None:
        Console(file=io.StringIO(), width=160).print(
            render(snapshot(pool, store, meter, time.time())))

    return {"dashboard snapshot": lambda: snapshot(pool, store, meter, time.time()),
            "dashboard refresh": refresh, "metrics scrape": lambda: scrape(pool, store)}


def scrape(pool: Pool, store: Store) -> bytes:
    """One ``/metrics`` scrape: every figure read from the store (aggregates over the
    whole history: counters and histograms never forget), as the text exposition."""
    from reconciler.metrics import gather, write_exposition

    return write_exposition(gather(pool, store))


def commands(days: float) -> dict[str, list[str]]:
    """The commands run as processes: ``report`` over a day, and over the whole history."""
    return {
        "status": ["status"],
        "task list (page)": ["task", "list"],
        "task list -o json": ["task", "list", "-o", "json"],
        "events": ["events"],
        "events --kind": ["events", "--kind", "pool"],
        "events --task": ["events", "--task", "7"],
        "report": ["report"],
        "report -o json": ["report", "-o", "json"],
        f"report --since {round(days * 24)}h": ["report", "--since", f"{round(days * 24)}h"],
    }


def measure(baseline: Path, scaled: Path, repeat: int, cli_repeat: int,
            days: float = 30.0) -> list[tuple[str, str, float, float]]:
    """``(what, unit, on the baseline, at scale)`` for each figure.  Samples of the two
    stores alternate, so a change in the machine's load meanwhile hits both alike.  The
    processes run first: forked once this process holds a month of report rows, each
    would count them in its peak RSS."""
    processes = run_commands(baseline, scaled, cli_repeat, days)
    figures = []
    with Store(pool_paths(baseline, POOL).store) as small, \
            Store(pool_paths(scaled, POOL).store) as big:
        reads = [pass_reads(small), pass_reads(big)]
        for name in reads[0]:
            figures.append((name, "ms", *alternating(
                [reads[0][name], reads[1][name]], repeat)))
        figures.append(("pass store reads", "ms", *alternating(
            [functools.partial(read_all, r) for r in reads], repeat)))
        read_commands = [read_command_reads(small), read_command_reads(big)]
        for name in read_commands[0]:
            figures.append((name, "ms", *alternating(
                [read_commands[0][name], read_commands[1][name]], repeat)))
        for label, window in (("24h", DAY), (f"{round(days * 24)}h", days * DAY)):
            figures.append((f"report reads {label}", "ms", *alternating(
                [report_reads(small, window), report_reads(big, window)], repeat)))
            figures.append((f"report analyse {label}", "ms", *alternating(
                [report_analysis(small, window), report_analysis(big, window)], repeat)))
        refreshes = [dashboard(baseline, small), dashboard(scaled, big)]
        for name in refreshes[0]:
            figures.append((name, "ms", *alternating(
                [refreshes[0][name], refreshes[1][name]], repeat)))
    return figures + processes


def run_commands(baseline: Path, scaled: Path, cli_repeat: int,
                 days: float) -> list[tuple[str, str, float, float]]:
    """The median wall time of each command as a process on each store, alternating."""
    figures = []
    for name, args in commands(days).items():
        runs: list[list[tuple[float, float]]] = [[], []]
        for _ in range(cli_repeat):
            for side, state_dir in enumerate((baseline, scaled)):
                runs[side].append(run_cli(state_dir, args))
        small_run, big_run = runs
        figures.append((name, "ms", statistics.median(t for t, _ in small_run),
                        statistics.median(t for t, _ in big_run)))
        if name == "task list -o json" or name.startswith("report --since"):
            figures.append((f"{name} peak RSS", "MB", max(m for _, m in small_run),
                            max(m for _, m in big_run)))
    return figures


def window_counts(store: Path, windows: list[float]) -> list[int]:
    """How many attempts ended in each window back from now."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return [db.execute("SELECT COUNT(*) FROM attempts WHERE ended_at >= ?",
                           (time.time() - w,)).fetchone()[0] for w in windows]


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
    parser.add_argument("--days", type=float, default=30.0,
                        help="the history's span, back from now (default 30)")
    parser.add_argument("--baseline-tasks", type=int, default=100,
                        help="tasks (and attempts; ten times as many events) of the baseline "
                        "store: enough to fill a page, so both show as many rows (default 100; "
                        "0: empty)")
    parser.add_argument("--repeat", type=int, default=20, help="samples per store read")
    parser.add_argument("--cli-repeat", type=int, default=5, help="processes per command")
    args = parser.parse_args()
    if min(args.tasks, args.attempts, args.events, args.baseline_tasks) < 0 or \
            min(args.repeat, args.cli_repeat) < 1 or args.days < 1:
        print("error: sizes must be >= 0, repeats >= 1 and --days >= 1", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        small, full = root / "small", root / "full"
        small_store = build_store(small, args.baseline_tasks, args.baseline_tasks,
                                  10 * args.baseline_tasks, args.days)
        start = time.perf_counter()
        full_store = build_store(full, args.tasks, args.attempts, args.events, args.days)
        print(f"store: {args.tasks} tasks, {args.attempts} attempts, {args.events} events "
              f"over {args.days:g} days (built in {time.perf_counter() - start:.1f} s); "
              f"baseline, same run: the same pool with {args.baseline_tasks} tasks and "
              f"attempts, {10 * args.baseline_tasks} events")
        windows = [DAY, args.days * DAY]
        print("attempts ended in the last 24h / {:g} days: {} / {} at scale, {} / {} on the "
              "baseline".format(args.days, *window_counts(full_store, windows),
                                *window_counts(small_store, windows)))
        print(f"{'what':<26} {'baseline':>10} {'at scale':>10} {'ratio':>8}")
        for name, unit, before, after in measure(small, full, args.repeat, args.cli_repeat,
                                                 args.days):
            print(f"{name:<26} {before:>7.3f} {unit} {after:>7.3f} {unit} "
                  f"{after / before if before else 0:>7.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
