"""Observation cost against the worker count, with real tmux and a real store.

``observe`` makes one ``tmux list-panes -a`` call and one store read per pass,
however many workers there are.  The baseline, measured in the same run, is
the naive approach of one tmux call per worker (what shell-script supervisors
do).  Run: ``python benchmarks/bench_observe.py``; it uses its own tmux socket
directory and cleans up after itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from reconciler.observe import observe
from reconciler.store.sqlite import Store

SOCKET = "bench-observe"
POOL = "bench"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True,
                          check=True).stdout


def timed(fn: object, repeat: int = 15) -> float:
    assert callable(fn)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2]


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    os.environ["TMUX_TMPDIR"] = str(workdir)
    store = Store(workdir / "store.db")
    try:
        spec_id = store.record_applied_spec(source_path=None, source_sha256="", git_commit=None,
                                            document_hash="x", document="{}", summary="bench")
        tmux("new-session", "-d", "-s", POOL, "-n", "w-1", "--", "sleep", "600")
        store.register_worker("w-1", runtime="tmux", pid=None, pid_create_time=None,
                              spec_id=spec_id, template_hash="x", template_digests={},
                              restarted=False)
        count = 1
        print(f"{'workers':>8} {'observe':>10} {'per-worker tmux calls':>22} {'ratio':>7}")
        for target in (2, 8, 32):
            for i in range(count + 1, target + 1):
                tmux("new-window", "-d", "-t", f"={POOL}:", "-n", f"w-{i}", "--", "sleep", "600")
                store.register_worker(f"w-{i}", runtime="tmux", pid=None, pid_create_time=None,
                                      spec_id=spec_id, template_hash="x", template_digests={},
                                      restarted=False)
            count = target
            ours = timed(lambda: observe(POOL, SOCKET, store))
            naive = timed(lambda n=count: [tmux("display-message", "-p", "-t",
                                                f"={POOL}:w-{i}", "#{pane_pid} #{pane_dead}")
                                           for i in range(1, n + 1)], repeat=5)
            print(f"{count:>8} {ours * 1e3:>8.1f}ms {naive * 1e3:>20.1f}ms "
                  f"{naive / ours:>6.1f}x")
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True, check=False)
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
