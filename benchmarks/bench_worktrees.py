"""Warm worktrees: throughput with ``worktrees.reuse: perWorker`` against ``fresh``.

Both modes drain the same queue on the same generated repository in the same
run, through the real CLI, workers and git: once with a setup step that
dominates (it creates a virtualenv-sized tree of files and takes
``--setup-seconds``, like ``python -m venv .venv && pip install -e .``), and
once with no setup at all.  ``fresh`` makes a new worktree (a whole checkout)
and runs setup for every attempt; ``perWorker`` resets each worker's worktree
between tasks and runs setup once per worker.

Run: ``python benchmarks/bench_worktrees.py [--tasks 16] [--workers 2]
[--files 1000] [--setup-files 900] [--setup-seconds 2]``.  It works in its own
temporary directory (state, repository, worktrees) with ``runtime: process``,
and deletes its pools on the way out.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import poolkit  # the benchmarks' folder is on the path when a script runs
import yaml

IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}

AGENT = textwrap.dedent("""
    import os, subprocess
    name = "out-" + os.environ["RECONCILER_TASK_ID"] + ".txt"
    open(name, "w").write("done\\n")
    subprocess.run(["git", "add", name], check=True)
    subprocess.run(["git", "commit", "-q", "-m", "task " + name], check=True)
""")

SETUP = textwrap.dedent("""
    import os, sys, time
    files, seconds = int(sys.argv[1]), float(sys.argv[2])
    started = time.monotonic()
    for i in range(files):
        os.makedirs(f".venv/lib/pkg{i % 30}", exist_ok=True)
        with open(f".venv/lib/pkg{i % 30}/mod{i}.py", "w") as fh:
            fh.write("x = 1\\n" * 20)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
""")


def make_repo(directory: Path, files: int) -> Path:
    """The generated repository, with a ``pyproject.toml`` for the setup step to read."""
    return poolkit.make_repo(directory, files,
                             extra={"pyproject.toml": "[project]\nname = 'bench'\n"})


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = poolkit.reconciler_env(state.parent, RECONCILER_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "reconciler", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=900)


def drain(directory: Path, repo: Path, *, name: str, reuse: str, setup: list[list[str]],
          tasks: int, workers: int) -> float:
    """Tasks per second for one pool draining ``tasks`` tasks."""
    state = directory / f"state-{name}"
    spec = directory / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "apiVersion": "reconciler/v1", "kind": "WorkerPool", "metadata": {"name": name},
        "spec": {"replicas": workers, "repo": str(repo), "baseRef": "main",
                 "runtime": "process",
                 "worker": {"command": [sys.executable, str(directory / "agent.py")],
                            "env": IDENTITY},
                 "worktrees": {"reuse": reuse, "setup": setup, "cleanup": "always",
                               "setupWhen": ["pyproject.toml"]},
                 "controller": {"enabled": False}}}))
    tasks_file = directory / f"{name}-tasks.yaml"
    tasks_file.write_text(yaml.safe_dump([{"title": f"t{i}", "prompt": "p"}
                                          for i in range(tasks)]))
    cli(state, "apply", "-f", str(spec), "--wait")
    try:
        started = time.monotonic()
        cli(state, "task", "import", str(tasks_file), "-f", str(spec))
        cli(state, "task", "wait", "-f", str(spec), "--timeout", "15m")
        return tasks / (time.monotonic() - started)
    finally:
        cli(state, "delete", "-f", str(spec), "--force")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks each pool drains")
    parser.add_argument("--workers", type=int, default=2, help="replicas of each pool")
    parser.add_argument("--files", type=int, default=1000, help="files in the repository")
    parser.add_argument("--setup-files", type=int, default=900,
                        help="files the setup step creates (a virtualenv's worth)")
    parser.add_argument("--setup-seconds", type=float, default=2.0,
                        help="how long the setup step takes at least")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="rbw-"))
    try:
        repo = make_repo(directory, args.files)
        (directory / "agent.py").write_text(AGENT)
        (directory / "setup.py").write_text(SETUP)
        setup = [[sys.executable, str(directory / "setup.py"), str(args.setup_files),
                  str(args.setup_seconds)]]
        print(f"{args.tasks} tasks, {args.workers} workers, a repository of {args.files} "
              f"files; the setup step creates {args.setup_files} files and takes at least "
              f"{args.setup_seconds:g} s; throughput from enqueue to the last task's end")
        for label, steps in (("setup dominates", setup), ("no setup", [])):
            fresh = drain(directory, repo, name="fresh", reuse="fresh", setup=steps,
                          tasks=args.tasks, workers=args.workers)
            warm = drain(directory, repo, name="warm", reuse="perWorker", setup=steps,
                         tasks=args.tasks, workers=args.workers)
            print(f"{label:16} fresh {fresh:.2f} tasks/s  perWorker {warm:.2f} tasks/s  "
                  f"{warm / fresh:.2f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
