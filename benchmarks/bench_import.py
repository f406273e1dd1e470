"""Importing a large task file: ``reconcile task import`` of N tasks (issue 12: 100,000
tasks in one transaction in under 5 s), as JSON and as JSON Lines.

The baseline, measured in the same run on the same file, is the least any import
must do: ``json.loads`` of the file and one ``executemany`` of its rows into a
bare SQLite table, in a process of its own (so both pay Python's start).  The
ratio is what the CLI, validation, the store's bookkeeping (an event per task,
the per-status counts) and its durability settings add.

Run: ``python benchmarks/bench_import.py [--tasks 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = """
import json, sqlite3, sys
rows = json.loads(open(sys.argv[1], encoding="utf-8").read())
db = sqlite3.connect(sys.argv[2])
db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title, prompt, priority)")
with db:
    db.executemany("INSERT INTO tasks (title, prompt, priority) VALUES (?, ?, ?)",
                   [(r["title"], r["prompt"], r["priority"]) for r in rows])
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rb-import-"))
    try:
        run(args.tasks, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(count: int, work: Path) -> None:
    repo = work / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    spec = work / "workers.yaml"
    spec.write_text("apiVersion: reconciler/v1\nkind: WorkerPool\nmetadata: {name: bench}\n"
                    "spec:\n  replicas: 0\n  repo: repo\n  runtime: process\n"
                    "  worker: {command: [\"true\"]}\n  controller: {enabled: false}\n")
    tasks = [{"title": f"task {n}", "prompt": f"Fix issue {n}: make the change and add a "
              "test for it.", "priority": n % 5} for n in range(count)]
    as_json = work / "tasks.json"
    as_json.write_text(json.dumps(tasks))
    as_lines = work / "tasks.jsonl"
    as_lines.write_text("\n".join(json.dumps(t) for t in tasks))
    env = {**os.environ, "RECONCILER_STATE_DIR": str(work / "state")}
    cli = [sys.executable, "-m", "reconciler"]
    timed([*cli, "apply", "-f", str(spec)], env)
    baseline = timed([sys.executable, "-c", BASELINE, str(as_json), str(work / "bare.db")],
                     env)
    print(f"baseline (json.loads + executemany, {count} rows): {baseline:.2f} s")
    for path in (as_json, as_lines):
        took = timed([*cli, "task", "import", str(path), "-f", str(spec)], env)
        print(f"task import {path.suffix:<6} {count} tasks ({path.stat().st_size / 2**20:.1f}"
              f" MB): {took:.2f} s; ratio {took / baseline:.1f}x")


if __name__ == "__main__":
    main()
