"""Dispatch throughput and latency of the real pool, against ``xargs -P`` doing the same git work.

Every task is the same naive sequence: make a worktree on a new branch from
``main``, run a trivial agent in it (a Python script that writes its start
time to a file outside the worktree), remove the worktree.  Measured side by
side in the same run, on the same generated repository:

- the naive ceiling: ``xargs -P N -n 1 python one_task.py ...`` (no shell),
  each task running ``git worktree add -b``, the agent, ``git worktree remove``;
  the two git calls under ``flock`` on one lock file, because git cannot run
  them concurrently: without it, about 2 % of tasks fail with "failed to read
  .git/worktrees/<other>/commondir" (a ``worktree add`` reads every other
  worktree's metadata while another one is half written);
- the no-checkout ceiling: the same, with ``git worktree add --no-checkout``
  under the lock, then ``git checkout --force`` outside it (what the pool
  does to keep its repository lock short; the pool also deletes a finished
  worktree's files before it takes the lock for ``worktree remove``, which
  this ceiling does not);
- the pool: ``runtime: process``, N workers, embedded queue, its own state
  directory, from the enqueue of all tasks (one ``add_tasks`` call) to the last
  task's finish as the store recorded it.

Then dispatch latency with idle workers, with fresh worktrees and again with
``worktrees.reuse: perWorker``: one task enqueued at a time (at a
random moment, with the wake-up ``reconcile task add`` sends), enqueue to
the agent's own start time; the agent's
interpreter start-up alone is measured too, since it is part of that figure.

Run: ``python benchmarks/bench_throughput.py [--tasks 200] [--workers 8]
[--files 200] [--repeat 3] [--latency-samples 30]``.  It works in its own
temporary directory and stops its pool with ``reconcile delete --force``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import poolkit  # the benchmarks' folder is on the path when a script runs
import yaml

from reconciler.paths import pool_paths
from reconciler.store.sqlite import Store
from reconciler.wakeup import ring_workers

POOL = "bench"
AGENT = textwrap.dedent("""
    import sys, time
    started = time.time()
    with open(sys.argv[1] + "/" + sys.argv[2], "w") as fh:
        fh.write(repr(started))
""")
# one task of the ceilings, started by xargs with the task's number as its last argument
ONE_TASK = textwrap.dedent("""
    import subprocess, sys
    mode, repo, root, agent, out, prefix, n = sys.argv[1:]
    path, branch = f"{root}/{prefix}-{n}", f"{prefix}-{n}"
    locked = ["flock", f"{root}/repo.lock", "git", "-C", repo]
    if mode == "naive":
        subprocess.run([*locked, "worktree", "add", "--quiet", "-b", branch, "--", path, "main"],
                       check=True)
    else:
        subprocess.run([*locked, "worktree", "add", "--quiet", "--no-checkout", "-b", branch,
                        "--", path, "main"], check=True)
        subprocess.run(["git", "-C", path, "checkout", "--force", "--quiet"], check=True)
    subprocess.run([sys.executable, "-S", agent, out, f"{prefix}-{n}"], cwd=path, check=True)
    subprocess.run([*locked, "worktree", "remove", "--force", "--", path], check=True)
""")


def make_repo(directory: Path, files: int) -> Path:
    """The generated repository every side of the comparison works on."""
    return poolkit.make_repo(directory, files)


def ceiling(directory: Path, repo: Path, mode: str, tasks: int, workers: int,
            prefix: str) -> float:
    """Seconds for ``xargs -P workers`` to run ``tasks`` tasks of ``mode``."""
    root, out = directory / "ceiling-worktrees", directory / "out"
    root.mkdir(exist_ok=True)
    argv = ["xargs", "-P", str(workers), "-n", "1", sys.executable, "-S",
            str(directory / "one_task.py"), mode, str(repo), str(root),
            str(directory / "agent.py"), str(out), prefix]
    ids = "".join(f"{i}\n" for i in range(tasks))
    started = time.monotonic()
    subprocess.run(argv, input=ids, text=True, check=True, timeout=900)
    return time.monotonic() - started


def cli(state: Path, *args: str) -> None:
    env = poolkit.reconciler_env(state.parent, RECONCILER_STATE_DIR=str(state))
    subprocess.run([sys.executable, "-m", "reconciler", *args], env=env, check=True,
                   capture_output=True, text=True, timeout=900)


def wait_done(store: Store, ids: list[int], timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = store.task_statuses(ids)
        if all(status in ("succeeded", "failed", "cancelled") for status in statuses.values()):
            failed = [i for i, status in statuses.items() if status != "succeeded"]
            if failed:
                raise SystemExit(f"bench_throughput: tasks {failed[:5]} did not succeed")
            return
        time.sleep(0.02)
    raise SystemExit("bench_throughput: the pool did not finish its tasks in time")


def enqueue(store: Store, pool_root: Path, tasks: list[tuple[str, str, int]]) -> list[int]:
    """What ``reconcile task add`` does: the tasks in one transaction, then a wake-up
    for the pool's idle workers."""
    ids = store.add_tasks(tasks)
    ring_workers(pool_root)
    return ids


def pool_run(store: Store, pool_root: Path, tasks: int) -> float:
    """Seconds from the enqueue of ``tasks`` tasks to the last one's finish in the store."""
    started = time.time()
    ids = enqueue(store, pool_root, [(f"t{i}", "p", 0) for i in range(tasks)])
    wait_done(store, ids)
    return max(row.updated_at for row in store.tasks() if row.id in set(ids)) - started


def dispatch_latency(store: Store, pool_root: Path, out: Path,
                     samples: int) -> tuple[list[float], list[float]]:
    """Enqueue to agent start, one task at a time on an idle pool, at random moments;
    and how long each of those attempts took to make its worktree (part of it)."""
    latencies, worktrees = [], []
    for _ in range(samples):
        time.sleep(random.uniform(0.05, 0.3))  # no phase lock with the workers' timers
        enqueued = time.time()
        (task_id,) = enqueue(store, pool_root, [("latency", "p", 0)])
        wait_done(store, [task_id])
        latencies.append(float((out / str(task_id)).read_text()) - enqueued)
        worktrees += [a.phases["worktree"] for a in store.attempts(task_id)
                      if "worktree" in a.phases]
    return latencies, worktrees


def agent_startup(directory: Path, samples: int) -> list[float]:
    """Start of the agent process to its own start time: part of every dispatch latency."""
    startups = []
    for i in range(samples):
        started = time.time()
        subprocess.run([sys.executable, "-S", str(directory / "agent.py"),
                        str(directory / "out"), f"startup-{i}"], check=True)
        startups.append(float((directory / "out" / f"startup-{i}").read_text()) - started)
    return startups


def write_spec(directory: Path, repo: Path, workers: int, reuse: str = "fresh") -> Path:
    spec = directory / "pool.yaml"
    spec.write_text(yaml.safe_dump({
        "apiVersion": "reconciler/v1", "kind": "WorkerPool", "metadata": {"name": POOL},
        "spec": {"replicas": workers, "repo": str(repo), "baseRef": "main",
                 "runtime": "process",
                 "worker": {"command": [sys.executable, "-S", str(directory / "agent.py"),
                                        str(directory / "out"), "{task.id}"]},
                 "worktrees": {"cleanup": "always", "reuse": reuse}}}))
    return spec


def reused_dispatch_latency(directory: Path, state: Path, repo: Path, workers: int,
                            samples: int) -> list[float]:
    """The dispatch latency again with ``worktrees.reuse: perWorker``, once every worker
    has made its own worktree (a warm-up of two tasks per worker)."""
    spec = write_spec(directory, repo, workers, reuse="perWorker")
    cli(state, "apply", "-f", str(spec), "--wait")
    pool = pool_paths(state, POOL)
    with Store(pool.store) as store:
        wait_done(store, enqueue(store, pool.root, [("warm", "p", 0)] * (2 * workers)))
        latencies, _ = dispatch_latency(store, pool.root, directory / "out", samples)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per run")
    parser.add_argument("--workers", type=int, default=8, help="pool replicas and xargs -P")
    parser.add_argument("--files", type=int, default=200, help="files in the repository")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, for the median")
    parser.add_argument("--latency-samples", type=int, default=30,
                        help="tasks enqueued one at a time for the dispatch latency")
    args = parser.parse_args()
    if min(args.tasks, args.workers, args.files, args.repeat, args.latency_samples) < 1:
        raise SystemExit("bench_throughput: every size must be at least 1")
    directory = Path(tempfile.mkdtemp(prefix="rbt-"))
    state = directory / "state"
    spec = write_spec(directory, make_repo(directory, args.files), args.workers)
    repo = directory / "repo"
    (directory / "agent.py").write_text(AGENT)
    (directory / "one_task.py").write_text(ONE_TASK)
    (directory / "out").mkdir()
    print(f"{os.cpu_count()} cores; {args.tasks} tasks, {args.workers} workers, a repository "
          f"of {args.files} files; median of {args.repeat} runs")
    times: dict[str, list[float]] = {"naive": [], "no-checkout": [], "pool": []}
    try:
        cli(state, "apply", "-f", str(spec), "--wait")
        pool = pool_paths(state, POOL)
        store = Store(pool.store)
        for run in range(args.repeat):  # interleaved: the machine's load hits each alike
            times["naive"].append(ceiling(directory, repo, "naive", args.tasks, args.workers,
                                          f"naive{run}"))
            times["no-checkout"].append(ceiling(directory, repo, "no-checkout", args.tasks,
                                                args.workers, f"nocheckout{run}"))
            times["pool"].append(pool_run(store, pool.root, args.tasks))
        phases = [a.phases for a in store.attempts() if a.phases]
        latencies, worktree_times = dispatch_latency(store, pool.root, directory / "out",
                                                     args.latency_samples)
        store.close()
        reused = reused_dispatch_latency(directory, state, repo, args.workers,
                                         args.latency_samples)
    finally:
        cli(state, "delete", "-f", str(spec), "--force")
        shutil.rmtree(directory, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, label in (("naive", "naive ceiling (xargs)"),
                        ("no-checkout", "no-checkout ceiling (xargs)"),
                        ("pool", f"pool ({args.workers} workers, process)")):
        print(f"{label:34} {median[name]:7.2f} s  {args.tasks / median[name]:7.1f} tasks/s")
    print(f"pool / naive ceiling:       {median['naive'] / median['pool']:.2f}x")
    print(f"pool / no-checkout ceiling: {median['no-checkout'] / median['pool']:.2f}x")
    for phase in ("worktree", "agent", "finish"):
        values = [p[phase] for p in phases if phase in p]
        if values:
            print(f"pool phase {phase:9} p50 {1000 * statistics.median(values):7.1f} ms  "
                  f"p90 {1000 * poolkit.percentile(values, 0.9):7.1f} ms")
    startups = agent_startup_safe(args.latency_samples)
    print(f"dispatch latency (enqueue to agent start, idle workers): "
          f"p50 {1000 * statistics.median(latencies):.1f} ms  "
          f"p90 {1000 * poolkit.percentile(latencies, 0.9):.1f} ms  "
          f"(of which agent start-up p50 {1000 * statistics.median(startups):.1f} ms, "
          f"making the worktree p50 {1000 * statistics.median(worktree_times):.1f} ms)")
    print(f"dispatch latency with worktrees.reuse perWorker: "
          f"p50 {1000 * statistics.median(reused):.1f} ms  "
          f"p90 {1000 * poolkit.percentile(reused, 0.9):.1f} ms")


def agent_startup_safe(samples: int) -> list[float]:
    """``agent_startup`` in a directory of its own (the run's directory is gone by now)."""
    directory = Path(tempfile.mkdtemp(prefix="rbt-"))
    try:
        (directory / "agent.py").write_text(AGENT)
        (directory / "out").mkdir()
        return agent_startup(directory, samples)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
