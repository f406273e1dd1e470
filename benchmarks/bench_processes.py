"""What a process of the pool costs: an idle worker's memory, and ``status``/``diff`` latency.

Issue 9's goals: a worker ≤ 20 MB PSS (issue 12 adds its reaper parent, which
records how it ended: printed apart); ``reconcile status`` and ``reconcile
diff`` ≤ 100 ms as whole processes at 32 workers.  Everything is real: a
throwaway git repository and state directory, and a pool (``runtime:
process``, no controller) applied with ``reconcile apply --wait``, so its
workers are started exactly as a pool starts them.  Baselines, measured in the
same run:

- memory: the PSS (``/proc/PID/smaps_rollup``) of bare interpreters
  (``python -c`` blocked on a read, as many as workers, at most 8) beside the
  median PSS of the pool's idle workers;
- latency: ``python -c pass``, run interleaved with the commands, N times each.

Run: ``python benchmarks/bench_processes.py [--workers 32] [--runs 15]``.  It
stops its pool with ``reconcile delete --force``, kills only the pids it
started, and removes its directory on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import poolkit  # the benchmarks' folder is on the path when a script runs

CLI = [sys.executable, "-m", "reconciler"]
# says it is up, then idles until its stdin closes
BARE = [sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"]


def pss_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in kB, from the kernel's rollup of its mappings."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields["Pss"], fields["Rss"]


def parent_pid(pid: int) -> int:
    """The parent of ``pid``, from /proc (field 4 of stat, after the command's name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def make_pool(root: Path, workers: int) -> Path:
    """A git repository and a pool spec for ``workers`` idle process workers."""
    repo = root / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "initial"], check=True)
    spec = root / "workers.yaml"
    spec.write_text(json.dumps({
        "apiVersion": "reconciler/v1", "kind": "WorkerPool", "metadata": {"name": "bench"},
        "spec": {"replicas": workers, "repo": str(repo), "baseRef": "main",
                 "runtime": "process", "worker": {"command": ["true"]},
                 "controller": {"enabled": False}}}))
    return spec


def reconcile(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, "--state-dir", str(state), *args], capture_output=True,
                          text=True, check=False, timeout=300,
                          env=poolkit.reconciler_env(state.parent))
    if check and proc.returncode not in (0, 2):
        raise SystemExit(f"error: reconcile {' '.join(args)} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def wall_ms(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, env=poolkit.reconciler_env(cwd))
    return (time.perf_counter() - start) * 1e3


def measure_memory(state: Path, workers: int) -> None:
    document = json.loads(reconcile(state, "status", "-o", "json").stdout)
    pids = [w["pid"] for w in document["workers"] if w["pid"]]
    if len(pids) != workers:
        raise SystemExit(f"error: {len(pids)} of {workers} workers are running")
    samples = [pss_kb(pid) for pid in pids]
    reapers = [pss_kb(parent_pid(pid)) for pid in pids]  # each worker's, which records its exit
    bare = [subprocess.Popen(BARE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=poolkit.reconciler_env(state.parent))
            for _ in range(min(workers, 8))]
    try:
        for proc in bare:
            assert proc.stdout is not None
            proc.stdout.readline()  # started
        baseline = [pss_kb(proc.pid) for proc in bare]
    finally:
        for proc in bare:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    pss = statistics.median(s[0] for s in samples) / 1024
    rss = statistics.median(s[1] for s in samples) / 1024
    base = statistics.median(s[0] for s in baseline) / 1024
    reaper = statistics.median(s[0] for s in reapers) / 1024
    print(f"idle worker PSS: {pss:.1f} MB median of {len(samples)} (RSS {rss:.1f} MB); "
          f"bare python PSS: {base:.1f} MB; ratio {pss / base:.1f}x")
    print(f"its reaper (parent) PSS: {reaper:.1f} MB median (RSS "
          f"{statistics.median(s[1] for s in reapers) / 1024:.1f} MB); worker and reaper "
          f"{pss + reaper:.1f} MB; reaper / bare python {reaper / base:.1f}x")


def measure_latency(root: Path, state: Path, spec: Path, runs: int) -> None:
    commands = {
        "status": [*CLI, "--state-dir", str(state), "status"],
        "diff": [*CLI, "--state-dir", str(state), "diff", "-f", str(spec)],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the file cache and .pyc files
        wall_ms(argv, root)
    for _ in range(runs):  # interleaved, so a busy moment slows every command alike
        for name, argv in commands.items():
            times[name].append(wall_ms(argv, root))
    baseline = statistics.median(times["python -c pass"])
    for name in ("status", "diff"):
        ours = statistics.median(times[name])
        p90 = statistics.quantiles(times[name], n=10)[-1] if runs > 1 else ours
        print(f"reconcile {name}: {ours:.0f} ms median, {p90:.0f} ms p90 of {runs} runs; "
              f"python -c pass: {baseline:.0f} ms; ratio {ours / baseline:.1f}x")


def stop_pool(state: Path, spec: Path) -> None:
    """``delete --force``, then SIGKILL any worker it left (only the pids this pool ran)."""
    document = reconcile(state, "status", "-o", "json", check=False)
    pids = []
    with contextlib.suppress(ValueError, KeyError):
        pids = [w["pid"] for w in json.loads(document.stdout)["workers"] if w["pid"]]
    reconcile(state, "delete", "-f", str(spec), "--force", check=False)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError, FileNotFoundError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(state).encode() in cmdline:  # still ours, not a recycled pid
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=32, metavar="N",
                        help="idle workers in the pool (default: 32)")
    parser.add_argument("--runs", type=int, default=15, metavar="N",
                        help="runs of each command (default: 15)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.runs < 1:
        parser.error("--workers and --runs must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    state = root / "state"
    spec = make_pool(root, args.workers)
    try:
        reconcile(state, "apply", "-f", str(spec), "--wait", "--timeout", "120s")
        print(f"pool of {args.workers} idle workers (runtime: process), started by "
              "`reconcile apply --wait`")
        measure_memory(state, args.workers)
        measure_latency(root, state, spec, args.runs)
    finally:
        stop_pool(state, spec)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
