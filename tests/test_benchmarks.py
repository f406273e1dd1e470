"""Every script in ``benchmarks/`` still runs against the current code and prints its figures.

Each runs as a subprocess at a tiny size (the figures mean nothing there; only
that the script works).  Its temporary files and tmux sockets go to a directory
of this test's own, which must be empty afterwards, and no process the
benchmark started may outlive it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, kill_all, kill_tmux_servers_under

BENCHMARKS = sorted((ROOT / "benchmarks").glob("bench_*.py"))
FIGURE = r"[0-9]+(\.[0-9]+)?"

# per script: the arguments that make it tiny, and one pattern per line of figures it must print
TINY: dict[str, tuple[list[str], list[str]]] = {
    "bench_observe.py": (["--workers", "1", "3", "--repeat", "2"], [
        rf"^ +1 +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
        rf"^ +3 +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
    ]),
    "bench_import.py": (["--tasks", "50"], [
        rf"^baseline \(json.loads \+ executemany, 50 rows\): {FIGURE} s$",
        rf"^task import .json +50 tasks \({FIGURE} MB\): {FIGURE} s; ratio {FIGURE}x$",
        rf"^task import .jsonl +50 tasks \({FIGURE} MB\): {FIGURE} s; ratio {FIGURE}x$",
    ]),
    "bench_pueue.py": (["--tasks", "10", "30", "--repeat", "2"], [
        rf"^ +10 +{FIGURE}MB +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
        rf"^ +30 +{FIGURE}MB +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
    ]),
    "bench_planner.py": (["--workers", "2", "5", "--passes", "2"], [
        rf"^ +2 +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
        rf"^ +5 +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}ms +{FIGURE}x$",
    ]),
    "bench_processes.py": (["--workers", "2", "--runs", "2"], [
        rf"^idle worker PSS: {FIGURE} MB median of 2 \(RSS {FIGURE} MB\); "
        rf"bare python PSS: {FIGURE} MB; ratio {FIGURE}x$",
        rf"^reconcile status: {FIGURE} ms median, {FIGURE} ms p90 of 2 runs; "
        rf"python -c pass: {FIGURE} ms; ratio {FIGURE}x$",
        rf"^reconcile diff: {FIGURE} ms median, {FIGURE} ms p90 of 2 runs; "
        rf"python -c pass: {FIGURE} ms; ratio {FIGURE}x$",
    ]),
    "bench_spec.py": (["--repeat", "1", "--number", "1"], [
        rf"^load\+validate demo spec: {FIGURE} ms \(yaml\.safe_load alone: {FIGURE} ms",
        rf"^alias bomb .* rejected by the alias cap in {FIGURE} ms",
        rf"^alias bomb .* rejected by the expansion cap in {FIGURE} ms",
    ]),
    "bench_store.py": (["--tasks", "30", "--attempts", "30", "--events", "200", "--repeat", "1",
                        "--cli-repeat", "1"], [
        rf"^pass store reads +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^queue_counts\(\) +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^status +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^task list \(page\) +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^task list -o json +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^task list -o json peak RSS +{FIGURE} MB +{FIGURE} MB +{FIGURE}x$",
        rf"^events +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^events --kind +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        r"^attempts ended in the last 24h / 30 days: [0-9]+ / 30 at scale, [0-9]+ / 100 on "
        r"the baseline$",
        rf"^report reads 24h +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report analyse 24h +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report reads 720h +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^dashboard snapshot +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^dashboard refresh +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^metrics scrape +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report -o json +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report --since 720h +{FIGURE} ms +{FIGURE} ms +{FIGURE}x$",
        rf"^report --since 720h peak RSS +{FIGURE} MB +{FIGURE} MB +{FIGURE}x$",
    ]),
    "bench_worktrees.py": (["--tasks", "2", "--workers", "1", "--files", "10",
                            "--setup-files", "5", "--setup-seconds", "0"], [
        rf"^setup dominates +fresh {FIGURE} tasks/s +perWorker {FIGURE} tasks/s +{FIGURE}x$",
        rf"^no setup +fresh {FIGURE} tasks/s +perWorker {FIGURE} tasks/s +{FIGURE}x$",
    ]),
    "bench_recovery.py": (["--workers", "1", "--rounds", "1", "--hangs", "1",
                           "--dead-after", "1", "--runtimes", "process", "--no-baselines"], [
        rf"^crash -> replacement heartbeating, reconciler \(process\): p50 {FIGURE}s +p90 "
        rf"{FIGURE}s",
        rf"^hang -> replacement heartbeating, past deadAfter \(1s\): p50 -?{FIGURE}s",
    ]),
    "bench_idle.py": (["--sizes", "process:1", "--busy", "1", "--seconds", "0.5",
                       "--no-baselines"], [
        rf"^idle process +1 workers: {FIGURE}% of a core \({FIGURE}% per worker\), "
        rf"controller {FIGURE} wake-ups/s$",
        rf"^busy +tmux +1 workers: {FIGURE}% of a core",
    ]),
    "bench_throughput.py": (["--tasks", "2", "--workers", "1", "--files", "5", "--repeat", "1",
                             "--latency-samples", "2"], [
        r"^[0-9]+ cores; 2 tasks, 1 workers, a repository of 5 files",
        rf"^naive ceiling \(xargs\) +{FIGURE} s +{FIGURE} tasks/s$",
        rf"^no-checkout ceiling \(xargs\) +{FIGURE} s +{FIGURE} tasks/s$",
        rf"^pool \(1 workers, process\) +{FIGURE} s +{FIGURE} tasks/s$",
        rf"^pool / naive ceiling: +{FIGURE}x$",
        rf"^pool / no-checkout ceiling: +{FIGURE}x$",
        rf"^pool phase worktree +p50 +{FIGURE} ms +p90 +{FIGURE} ms$",
        rf"^dispatch latency .*: p50 {FIGURE} ms +p90 {FIGURE} ms +"
        rf"\(of which agent start-up p50 {FIGURE} ms, making the worktree p50 {FIGURE} ms\)$",
        rf"^dispatch latency with worktrees.reuse perWorker: p50 {FIGURE} ms +p90 {FIGURE} ms$",
    ]),
}
# real tmux; real workers and git
E2E = {"bench_observe.py", "bench_processes.py", "bench_worktrees.py", "bench_recovery.py",
       "bench_idle.py", "bench_throughput.py"}


def test_every_benchmark_has_a_tiny_size() -> None:
    assert BENCHMARKS, "no benchmarks found"
    assert sorted(TINY) == [script.name for script in BENCHMARKS]


@pytest.fixture
def scratch() -> Iterator[Path]:
    # short: a tmux socket path under it must fit in sun_path (108 bytes)
    directory = Path(tempfile.mkdtemp(prefix="rb-"))
    try:
        yield directory
    finally:
        kill_tmux_servers_under(directory)
        kill_all(started_under(directory))
        shutil.rmtree(directory, ignore_errors=True)


def started_under(directory: Path) -> list[psutil.Process]:
    """Processes whose environment points their temporary files into ``directory``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if any(env.get(name, "").startswith(str(directory))
                   for name in ("TMPDIR", "TMUX_TMPDIR")):
                found.append(proc)
    return found


@pytest.mark.parametrize("script", [
    pytest.param(script, id=script.name,
                 marks=[pytest.mark.e2e] if script.name in E2E else [])
    for script in BENCHMARKS])
def test_benchmark_runs_and_prints_its_figures(script: Path, scratch: Path) -> None:
    args, patterns = TINY[script.name]
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    env |= {"TMPDIR": str(scratch), "TMUX_TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), \
            f"no line matches {pattern!r} in:\n{proc.stdout}"
    assert not started_under(scratch), "the benchmark left processes running"
    assert not list(scratch.iterdir()), "the benchmark left files behind"
