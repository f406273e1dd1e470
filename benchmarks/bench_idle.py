"""Idle cost: the CPU a pool uses while nothing happens, and the controller's wake-ups.

For each size, a pool with the default settings starts, settles, and then its
processes are measured over ``--seconds``: the controller, every worker, and
the pool's tmux server (tmux runtime).  Reported: percent of one core in total
and per worker, and the controller's wake-ups per second (context switches of
all its threads).  "busy" runs the same with every worker running a task whose
agent sleeps.  supervisord and pm2 supervising the same number of sleeping
programs are measured the same way in the same run (their daemons only: the
sleeping programs cost nothing), as the baseline.

Run: ``python benchmarks/bench_idle.py [--sizes tmux:8 process:8 process:32
process:128 process:256] [--busy 8] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from poolkit import (  # the benchmarks' folder is on the path when a script runs
    INSTALL_HINT,
    Pm2,
    ScratchPool,
    Supervisord,
    cpu_seconds,
    pm2_executable,
    supervisord_executable,
    wait_until,
    wakeups,
)

HEARTBEAT_SECONDS = 5.0  # health.heartbeatInterval's default
SETTLE_SECONDS = 3.0  # after every worker heartbeats: the start's own work is done
SLEEPING_AGENT = ["sleep", "3600"]


def measure(pids: Callable[[], list[int]], controller: int | None,
            seconds: float) -> tuple[float, float]:
    """(percent of one core used by ``pids``, the controller's wake-ups per second)."""
    watched = pids()
    cpu_before = cpu_seconds(watched)
    wake_before = wakeups(controller) if controller else 0
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(watched) - cpu_before
    woke = (wakeups(controller) - wake_before) if controller else 0
    return 100.0 * cpu / elapsed, woke / elapsed


def pool_cost(directory: Path, runtime: str, workers: int, seconds: float,
              busy: bool) -> tuple[float, float]:
    name = f"{'busy' if busy else 'idle'}-{runtime}-{workers}"
    pool = ScratchPool(directory, name, workers, runtime,
                       SLEEPING_AGENT if busy else ["true"])
    try:
        pool.apply()
        pool.wait_heartbeating(workers, timeout=600)
        if busy:
            for i in range(workers):
                pool.cli("task", "add", "-f", str(pool.spec), "--title", f"sleep {i}",
                         "--prompt", "sleep")
            wait_until(lambda: _running(pool) >= workers, 120, "every worker busy",
                       interval=0.2)
        time.sleep(SETTLE_SECONDS)
        controller = pool.controller_pid()
        server = pool.tmux_server_pid() if runtime == "tmux" else None

        def pids() -> list[int]:
            found = [int(r["pid"]) for r in pool.rows().values() if r["pid"]]
            return found + [p for p in (controller, server) if p]

        return measure(pids, controller, seconds)
    finally:
        pool.close()


def _running(pool: ScratchPool) -> int:
    """Running attempts, straight from the store (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{pool.store}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM attempts WHERE status = 'running'")
                   .fetchone()[0])


def supervisor_cost(make: Callable[[], Supervisord | Pm2], seconds: float) -> float:
    supervisor = make()
    try:
        time.sleep(SETTLE_SECONDS)
        percent, _ = measure(supervisor.daemon_pids, None, seconds)
        return percent
    finally:
        supervisor.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+",
                        default=["tmux:8", "process:8", "process:32", "process:128",
                                 "process:256"],
                        help="RUNTIME:WORKERS pairs to measure idle")
    parser.add_argument("--busy", type=int, default=8,
                        help="workers each running a sleeping agent (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; measured over {args.seconds:g}s after settling; "
          "default settings")
    if args.seconds < HEARTBEAT_SECONDS * 2:
        print(f"(a window under {HEARTBEAT_SECONDS * 2:g}s sees at most one heartbeat per worker, "
              "and CPU time counts in 10 ms ticks: the figures below are rough)")
    with tempfile.TemporaryDirectory(prefix="rbi-") as scratch:
        directory = Path(scratch)
        for size in args.sizes:
            runtime, _, count = size.partition(":")
            workers = int(count)
            percent, rate = pool_cost(directory, runtime, workers, args.seconds, busy=False)
            print(f"idle {runtime:>7} {workers:>4} workers: {percent:.3f}% of a core "
                  f"({percent / workers:.4f}% per worker), controller {rate:.2f} wake-ups/s")
        if args.busy:
            percent, rate = pool_cost(directory, "tmux", args.busy, args.seconds, busy=True)
            print(f"busy    tmux {args.busy:>4} workers: {percent:.3f}% of a core "
                  f"({percent / args.busy:.4f}% per worker), controller {rate:.2f} wake-ups/s")
        if not args.no_baselines:
            sv, pm2 = supervisord_executable(), pm2_executable()
            count = max(int(s.partition(":")[2]) for s in args.sizes[:2])
            if sv:
                percent = supervisor_cost(lambda: Supervisord(directory / "sv", count, sv),
                                          args.seconds)
                print(f"baseline supervisord {count:>4} programs: {percent:.3f}% of a core")
            if pm2:
                percent = supervisor_cost(lambda: Pm2(directory / "pm2", count, pm2),
                                          args.seconds)
                print(f"baseline pm2 {count:>4} programs: {percent:.3f}% of a core")
            if not (sv and pm2):
                print(f"(supervisord or pm2 not found: {INSTALL_HINT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
