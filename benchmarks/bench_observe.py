"""Observation cost against the worker count, with real tmux and a real store.

``observe`` makes one ``tmux list-panes -a`` call and a few store reads per
pass, however many workers there are.  The baseline, measured in the same
run, is the naive approach of one tmux call per worker (what shell-script
supervisors do).  Workers are started by the real tmux runtime (tagged
windows running ``sleep``) and registered in a real store, so ``observe``
sees every one of them.

Run: ``python benchmarks/bench_observe.py [--workers 2 8 32] [--repeat 15]``.
It uses its own state and tmux socket directory (never your tmux server) and
kills its tmux server and every process it started, by pid, on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil

from reconciler.observe import observe
from reconciler.paths import PoolPaths
from reconciler.runtimes.tmux import TmuxRuntime
from reconciler.store.sqlite import Store

POOL = "bench"


def median_time(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def one_call_per_worker(socket: str, count: int) -> None:
    """The baseline: ask tmux about each worker's pane separately."""
    for i in range(1, count + 1):
        subprocess.run(["tmux", "-L", socket, "display-message", "-p", "-t", f"={POOL}:=w-{i}",
                        "#{pane_pid} #{pane_dead}"], capture_output=True, check=True)


def kill_pids(pids: list[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def run(sizes: list[int], repeat: int, workdir: Path) -> None:
    socket = f"bench-observe-{os.getpid()}"
    paths = PoolPaths(workdir / "state", POOL).create()
    runtime = TmuxRuntime(socket, POOL, paths.tmux_conf)
    store = Store(paths.store)
    pids: list[int] = []
    try:
        spec_id = store.record_applied_spec(source_path=None, source_sha256="", git_commit=None,
                                            document_hash="x", document="{}", summary="bench")
        count = 0
        print(f"{'workers':>8} {'observe':>10} {'per-worker tmux calls':>22} {'ratio':>7}")
        for target in sorted(set(sizes)):
            for i in range(count + 1, target + 1):
                worker_id = f"w-{i}"
                store.register_worker(worker_id, runtime="tmux", pid=None, pid_create_time=None,
                                      spec_id=spec_id, template_hash="x", template_digests={},
                                      restarted=False, tmux_socket=socket)
                pids.append(runtime.start(worker_id, ["sleep", "600"]).pid)
            count = target
            seen = len(observe(paths, [socket], store).instances)
            if seen != count:
                raise SystemExit(f"observe saw {seen} of {count} workers")
            ours = median_time(lambda: observe(paths, [socket], store), repeat)
            naive = median_time(partial(one_call_per_worker, socket, count), max(1, repeat // 3))
            print(f"{count:>8} {ours * 1e3:>8.1f}ms {naive * 1e3:>20.1f}ms "
                  f"{naive / ours:>6.1f}x")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
        kill_pids(pids)
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8, 32], metavar="N",
                        help="worker counts to measure (default: 2 8 32)")
    parser.add_argument("--repeat", type=int, default=15, metavar="N",
                        help="timed observations per count; the median is shown (default: 15)")
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    # short path: a tmux socket path must fit in sun_path (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    os.environ["TMUX_TMPDIR"] = str(workdir)
    os.environ.pop("TMUX", None)
    try:
        run(args.workers, args.repeat, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
