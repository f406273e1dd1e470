"""Crash → replacement and hang → replacement, side by side with supervisord and pm2.

**Crash.** A pool with the default settings (``restartPolicy``, ``health``,
``controller``) and ``--workers`` idle workers; each worker is SIGKILLed once,
one at a time, and the time from the kill until its replacement's first
heartbeat is in the store is measured (a first crash: no backoff is due).  The
same run does the same to supervisord and pm2, each supervising the same
number of copies of a trivial Python program that writes its pid and the time
to a file when it starts (its "first heartbeat").  pm2 runs a second time with
that program first doing what our worker does before its first heartbeat
(import the worker's modules, open a SQLite store): the difference to ours is
then the supervisor's own part.  A last kill of an already
restarted worker shows that repeated crashes still back off (``backoff``, 1s,
jittered).

**Hang.** A worker whose process stops (SIGSTOP: alive, silent) is replaced
once its heartbeat is older than ``deadAfter``; the figure is how long after
``deadAfter`` the replacement heartbeats (the goal: under 0.5s).  It uses a
short ``deadAfter`` so the run stays short.

Run: ``python benchmarks/bench_recovery.py [--workers 8] [--rounds 2]
[--runtimes tmux process] [--hangs 3]``.  supervisord and pm2 are optional:
found on PATH or in ``benchmarks/.tools/`` (see the hint printed when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from poolkit import (  # the benchmarks' folder is on the path when a script runs
    INSTALL_HINT,
    Pm2,
    ScratchPool,
    Supervisord,
    percentile,
    pm2_executable,
    read_beat,
    summary,
    supervisord_executable,
    wait_until,
)

IDLE_AGENT = ["true"]  # never run: the workers stay idle


def replacement_after_kill(pool: ScratchPool, worker: str) -> float:
    """SIGKILL ``worker``; seconds until a new process of it has heartbeat."""
    old = pool.rows()[worker]
    killed_at = time.time()
    os.kill(int(old["pid"]), signal.SIGKILL)

    def replaced() -> float | None:
        row = pool.rows().get(worker)
        if row is None or row["pid"] == old["pid"] or not row["heartbeat_at"] \
                or (row["started_at"] or 0) < killed_at:
            return None
        return time.time()

    seen = wait_until(replaced, 60, f"{worker} to be replaced")
    return float(seen - killed_at)


def crash_pool(directory: Path, runtime: str, workers: int, rounds: int) -> tuple[
        list[float], float]:
    samples: list[float] = []
    repeated = float("nan")
    for round_number in range(rounds):
        pool = ScratchPool(directory, f"crash-{runtime}-{round_number}", workers, runtime,
                           IDLE_AGENT)
        try:
            pool.apply()
            pool.wait_heartbeating(workers)
            for i in range(1, workers + 1):
                samples.append(replacement_after_kill(pool, f"w-{i}"))
            if round_number == rounds - 1:  # the same worker again: its backoff applies
                repeated = replacement_after_kill(pool, "w-1")
        finally:
            pool.close()
    return samples, repeated


def restarted(beat: Path, old_pid: int) -> bool:
    now = read_beat(beat)
    return now is not None and now[0] != old_pid


def crash_supervisor(make: Callable[[], Supervisord | Pm2], rounds: int) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        supervisor = make()
        try:
            for beat in supervisor.beats:
                before = read_beat(beat)
                assert before is not None
                killed_at = time.time()
                os.kill(before[0], signal.SIGKILL)
                wait_until(functools.partial(restarted, beat, before[0]), 60,
                           "the program to be restarted")
                samples.append(time.time() - killed_at)
        finally:
            supervisor.close()
    return samples


def hang_pool(directory: Path, hangs: int, dead_after: float) -> list[float]:
    """Seconds past ``deadAfter`` until a SIGSTOPped worker's replacement heartbeats."""
    pool = ScratchPool(directory, "hang", hangs, "process", IDLE_AGENT, spec={
        "health": {"heartbeatInterval": "200ms", "unresponsiveAfter": "500ms",
                   "deadAfter": f"{dead_after:g}s"}})
    overshoot = []
    try:
        pool.apply()
        pool.wait_heartbeating(hangs)
        for i in range(1, hangs + 1):
            worker = f"w-{i}"
            old = pool.rows()[worker]
            os.kill(int(old["pid"]), signal.SIGSTOP)
            last_beat = float(old["heartbeat_at"])

            def replaced(w: str = worker, pid: int = int(old["pid"])) -> float | None:
                row = pool.rows().get(w)
                if row is None or row["pid"] == pid or not row["heartbeat_at"]:
                    return None
                return time.time()

            seen = wait_until(replaced, dead_after + 60, f"{worker} to be replaced")
            overshoot.append(seen - (last_beat + dead_after))
            with contextlib.suppress(ProcessLookupError):  # killed by the controller
                os.kill(int(old["pid"]), signal.SIGCONT)
    finally:
        pool.close()
    return overshoot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=["tmux", "process"],
                        choices=["tmux", "process"])
    parser.add_argument("--hangs", type=int, default=3)
    parser.add_argument("--dead-after", type=float, default=2.0)
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip supervisord and pm2 even when installed")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; {args.workers} workers x {args.rounds} rounds; "
          "default restartPolicy/health/controller settings")
    with tempfile.TemporaryDirectory(prefix="rbr-") as scratch:
        directory = Path(scratch)
        ours: dict[str, list[float]] = {}
        for runtime in args.runtimes:
            samples, repeated = crash_pool(directory, runtime, args.workers, args.rounds)
            ours[runtime] = samples
            print(f"crash -> replacement heartbeating, reconciler ({runtime}): "
                  f"{summary(samples)}")
            print(f"  a second crash of the same worker (backoff 1s, jittered): "
                  f"{repeated:.3f}s")
        baselines: dict[str, list[float]] = {}
        if not args.no_baselines:
            sv, pm2 = supervisord_executable(), pm2_executable()
            if sv:
                baselines["supervisord"] = crash_supervisor(
                    lambda: Supervisord(directory / f"sv{time.monotonic_ns()}",
                                        args.workers, sv), args.rounds)
            if pm2:
                baselines["pm2"] = crash_supervisor(
                    lambda: Pm2(directory / f"pm{time.monotonic_ns()}", args.workers, pm2),
                    args.rounds)
                baselines["pm2, program with our worker's start-up"] = crash_supervisor(
                    lambda: Pm2(directory / f"pm{time.monotonic_ns()}", args.workers, pm2,
                                worker_start=True), args.rounds)
            if not (sv and pm2):
                print(f"(supervisord or pm2 not found: {INSTALL_HINT})")
        for name, samples in baselines.items():
            print(f"crash -> restart writing its first line, {name}: {summary(samples)}")
            for runtime, mine in ours.items():
                print(f"  ratio reconciler ({runtime}) / {name}: p50 "
                      f"{statistics.median(mine) / statistics.median(samples):.2f}x  p90 "
                      f"{percentile(mine, 0.9) / percentile(samples, 0.9):.2f}x")
        if args.hangs:
            overshoot = hang_pool(directory, args.hangs, args.dead_after)
            print(f"hang -> replacement heartbeating, past deadAfter ({args.dead_after:g}s): "
                  f"{summary(overshoot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
