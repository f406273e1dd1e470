"""``reconcile demo``: the demo pool end to end, in a throwaway repository.

It creates a git repository and a state directory under a new temporary
directory (never the operator's own), applies the demo spec to that
repository, enqueues sample tasks for the simulated agent, shows live progress
until the queue drains and prints a summary with the commands to look around.

The demo spec and its simulated agent ship inside the package (``demo_pool/``,
declared as package data), so the demo runs from any directory, clone or not.
In the repository they are symlinks to ``specs/`` (as ``schema/`` is to
``schemas/``); a wheel holds the files themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from reconciler import operations
from reconciler.errors import ReconcilerError
from reconciler.paths import ensure_private_dir, pool_paths
from reconciler.pool import Pool, observe_pool
from reconciler.report.documents import printable
from reconciler.report.render import age
from reconciler.report.status import worker_statuses
from reconciler.spec import load_spec, with_repo
from reconciler.store.sqlite import Store
from reconciler.wakeup import ring_workers
from reconciler.worktrees import git


class _SafeConsole(Console):
    """A console that never writes a control character it was given in a string: every
    string printed, or drawn in a table cell, passes ``render_str``."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text, multiline=True), **kwargs)


console: Console = _SafeConsole(highlight=False, soft_wrap=True)
# next to the package's modules, as the schema is (spec.SCHEMA_PATH): a real file even
# in a non-editable install, whose ``{spec_dir}/fake-agent`` the workers can execute
DEMO_SPEC = Path(__file__).resolve().parent / "demo_pool" / "workers.yaml"
DEMO_TIMEOUT = 600.0
IDENTITY = ["-c", "user.name=reconciler demo", "-c", "user.email=demo@localhost"]

SAMPLE_TASKS = [
    ("Add a greeting to the README", "Add a friendly greeting to README.md.", 0),
    ("Write a CONTRIBUTING guide", "Create CONTRIBUTING.md with three short rules.", 0),
    ("Fix typo in docs", "Fix the typo 'teh' wherever it appears.", 5),
    ("Add a LICENSE file", "Add an MIT LICENSE file.", 0),
    ("Document the CLI", "Describe every command in docs/cli.md.", 0),
    ("Refactor the parser", "Split parser.py into tokenizer and parser modules.", 0),
    ("Add unit tests for utils", "Cover utils.py with tests; use pytest.", 3),
    ("Update the changelog", "Add an entry for version 0.2.0 to CHANGELOG.md.", 0),
    ("Handle empty input", "Make main() exit 1 with a message on empty input.", 0),
    ("Task with tricky text", 'Keep this literal: $(rm -rf ~); echo "`id`" C-c #{pane_id}', 0),
    ("Rename a config key", "Rename `timeout_s` to `timeout` everywhere.", 0),
    ("A task that always fails", "This one fails on purpose to show retries. [fail]", 0),
]


def _make_repo(repo: Path) -> None:
    repo.mkdir(parents=True)
    git(repo, ["init", "-q", "-b", "main"])
    (repo / "README.md").write_text("# demo project\n\nA throwaway repository for the "
                                    "reconciler demo.\n")
    git(repo, ["add", "--", "README.md"])
    git(repo, [*IDENTITY, "commit", "-q", "-m", "initial commit"])


def _tasks(count: int) -> list[tuple[str, str, int]]:
    tasks = []
    for i in range(count):
        title, prompt, priority = SAMPLE_TASKS[i % len(SAMPLE_TASKS)]
        if i >= len(SAMPLE_TASKS):
            title = f"{title} (again {i // len(SAMPLE_TASKS)})"
        tasks.append((title, prompt, priority))
    return tasks


def _dashboard(pool: Pool, store: Store, progress: Progress, bar: TaskID) -> Group:
    observation = observe_pool(pool)
    now = time.time()
    table = Table(title=f"pool {pool.name}", title_justify="left")
    for column in ("worker", "health", "task", "heartbeat", "restarts"):
        table.add_column(column)
    titles = {t.id: t.title for t in store.tasks("running")}
    for w in worker_statuses(observation, now, pool.spec):
        task = f"{w.current_task}: {titles.get(w.current_task, '')}" if w.current_task else "-"
        table.add_row(w.id, w.health, escape(task), age(w.heartbeat_age), str(w.restarts))
    q = observation.queue
    progress.update(bar, completed=q.succeeded + q.failed + q.cancelled, total=q.total)
    return Group(progress, table)


def run(args: argparse.Namespace) -> int:
    spec_file = Path(args.file) if args.file is not None else DEMO_SPEC
    base_spec = load_spec(spec_file)
    if args.tasks < 1:
        raise ReconcilerError("--tasks must be at least 1")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    ensure_private_dir(base)
    repo, state_dir = base / "repo", base / "state"
    if repo.exists() or state_dir.exists():
        raise ReconcilerError(f"{base} already holds a demo", hint="pass an empty --dir")
    started = time.monotonic()
    _make_repo(repo)
    # a socket of its own, so two demos on one host never take over each other's windows
    spec = with_repo(base_spec, repo, tmux_socket=f"{base_spec.tmux_socket}-{base.name[-8:]}")
    pool = Pool(pool_paths(state_dir, spec.name), spec)
    console.print(f"[bold]reconciler demo[/bold]: {spec.replicas} simulated agents, "
                  f"{args.tasks} tasks, repository {repo}")
    result = operations.apply(pool, progress=lambda line: console.print(f"  {escape(line)}"))
    store = Store(pool.paths.store)
    ids = store.add_tasks(_tasks(args.tasks))
    ring_workers(pool.paths.root)
    console.print(f"  enqueued tasks {ids[0]}-{ids[-1]}")
    progress = Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    bar = progress.add_task("tasks", total=len(ids))
    deadline = time.monotonic() + DEMO_TIMEOUT
    killed: str | None = None
    with Live(_dashboard(pool, store, progress, bar), console=console,
              refresh_per_second=4, transient=False) as live:
        while store.queue_counts().open and time.monotonic() < deadline:
            time.sleep(0.5)
            if killed is None and args.kill_one and _done(store) * 3 >= len(ids):
                killed = _kill_a_busy_worker(pool)
                if killed:
                    live.console.print(f"  [red]demo: SIGKILL {killed} part-way through its "
                                       "task[/red] (the controller replaces it; the task is "
                                       "requeued)")
            live.update(_dashboard(pool, store, progress, bar))
    drained = not store.queue_counts().open
    _summary(pool, store, repo, time.monotonic() - started, result.generation, drained, killed)
    store.close()
    if args.teardown:
        operations.delete(pool)
        console.print(f"\npool deleted (--teardown); the repository and state stay in {base}")
    else:
        _look_around(pool, spec.tmux_socket, base)
    return 0 if drained else 1


def _done(store: Store) -> int:
    q = store.queue_counts()
    return q.succeeded + q.failed + q.cancelled


def _kill_a_busy_worker(pool: Pool) -> str | None:
    """SIGKILL one worker that is running a task, as a crash would."""
    observation = observe_pool(pool)
    for attempt in observation.running:
        instance = observation.instance(attempt.worker_id)
        if instance is not None and instance.alive and instance.pid:
            os.kill(instance.pid, signal.SIGKILL)
            return attempt.worker_id
    return None


def _summary(pool: Pool, store: Store, repo: Path, elapsed: float, spec_id: int,
             drained: bool, killed: str | None) -> None:
    q = store.queue_counts()
    branches = git(repo, ["for-each-ref", "--format=%(refname:short)", "refs/heads/"]
                   ).stdout.split()
    with_commits = [b for b in branches if b != "main" and git(
        repo, ["rev-list", "--count", f"main..{b}", "--"]).stdout.strip() not in ("", "0")]
    restarts = sum(w.restarts for w in store.workers(include_removed=True))
    lost = [a for a in store.attempts() if a.status == "lost"]
    accounted = q.succeeded + q.failed + q.cancelled
    console.print()
    console.print("[bold]Summary[/bold]" + ("" if drained else " [red](timed out)[/red]"))
    console.print(f"  tasks:     {q.succeeded} succeeded, {q.failed} failed, "
                  f"{q.cancelled} cancelled, {q.open} unfinished (of {q.total})")
    console.print(f"  branches:  {len(with_commits)} with the agent's commits "
                  f"(git -C {repo} log --oneline --all)")
    console.print(f"  restarts:  {restarts}" + (f" ({killed} was killed on purpose)" if killed
                                                 else "")
                  + f";  elapsed: {elapsed:.1f}s;  generation {spec_id}")
    verdict = "no task lost" if accounted == q.total else f"{q.total - accounted} unfinished"
    console.print(f"  recovery:  {len(lost)} attempt(s) lost with a worker and requeued; "
                  f"{verdict}: {accounted} of {q.total} tasks ended succeeded or failed with "
                  "a reason")


def _invocation() -> str:
    """How this very command was run, so the printed commands work when pasted."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "reconcile":
        return f"{sys.executable} -m reconciler"
    on_path = shutil.which("reconcile")
    if on_path and Path(on_path).resolve() == argv0.resolve():
        return "reconcile"
    return sys.argv[0]  # e.g. .venv/bin/reconcile, valid from the same directory


def _look_around(pool: Pool, socket: str, base: Path) -> None:
    cli = f"{_invocation()} --state-dir {pool.paths.state_dir}"
    console.print("\n[bold]Look around[/bold] (the pool keeps running, idle):")
    console.print(f"  tmux -L {socket} attach -t {pool.name}")
    for command in ("status", "task list", "task show 1", "history", "events", "dashboard",
                    "report"):
        console.print(f"  {cli} {command}")
    console.print(f"  {cli} delete --pool {pool.name} && rm -rf {base}   # when done")
