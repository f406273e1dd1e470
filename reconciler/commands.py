"""One handler per CLI command: call the operation, render its result, pick the exit code.

A handler imports what only it needs (the planner and executor, the controller, the
demo, rich's progress bars, PyYAML): every CLI call pays for what this module imports
at the top, and ``status`` should not pay for ``apply`` (issue 9: lean processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from reconciler import pool as pools
from reconciler.checkedspecs import CheckedSpecs
from reconciler.durations import day_start, parse_duration
from reconciler.errors import PoolError, ReconcilerError, SpecError, TaskError
from reconciler.model import FINAL_TASK_STATUSES, ReportAttempt, TaskRow
from reconciler.naming import branch_directory, branch_pattern
from reconciler.paths import not_a_regular_file
from reconciler.pool import Pool
from reconciler.report.documents import print_json, print_json_array, printable, task_document
from reconciler.report.status import UNHEALTHY_EXIT
from reconciler.spec import load_spec
from reconciler.specmodel import PoolSpec
from reconciler.store.sqlite import Store
from reconciler.wakeup import ring_controller, ring_workers

if TYPE_CHECKING:  # names for types only: they load nothing when the program runs
    from reconciler.purge import Remains
    from reconciler.sync import SyncDrift, SyncFlags


def wake_claimers(pool: Pool) -> None:
    """New or requeued tasks: idle workers claim them now, and under runtime: pueue the
    controller hands them to pueue now (not at its next look)."""
    ring_workers(pool.paths.root)
    if pool.spec is not None and pool.spec.runtime == "pueue":
        ring_controller(pool.paths.root)


def _render() -> ModuleType:
    """The text renderings, imported only to draw text: ``-o json`` never loads them."""
    from reconciler.report import render

    return render


def _print(text: str, style: str | None = None) -> None:
    """One line of text output (made safe: it may carry outside text)."""
    _render().say(text, style)


def _progress_line(line: str) -> None:
    """One progress line of apply, delete or scale (made safe: it may carry outside text)."""
    _render().say(f"  {line}")


def _progress_console() -> Any:
    """rich's console for the progress bars of ``apply --wait`` and ``task wait`` (on
    stdout; their text is ours), imported only when one is drawn."""
    from rich.console import Console

    return Console(highlight=False)


POLL_SECONDS = 0.25
TASK_PAGE = 50  # tasks `task list` shows unless --limit or --all says otherwise
COMMIT_CHUNK = 1000  # tasks per git call for the commit counts of `task list -o json`
MAX_REPLICAS = 256


def dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "validate": cmd_validate, "diff": cmd_diff, "apply": cmd_apply, "delete": cmd_delete,
        "status": cmd_status, "history": cmd_history, "events": cmd_events, "task": cmd_task,
        "demo": cmd_demo, "controller": cmd_controller,
        "restart": cmd_restart, "scale": cmd_scale, "backup": cmd_backup,
        "prune": cmd_prune, "resume": cmd_resume, "report": cmd_report,
        "dashboard": cmd_dashboard, "export": cmd_export, "metrics": cmd_metrics,
        "pools": cmd_pools, "logs": cmd_logs,
    }
    return handlers[args.command](args)


def _duration_arg(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ReconcilerError(f"{option}: {exc}") from exc


MIN_REFRESH = 0.1  # seconds: a faster refresh is a busy loop, not a better view


def _refresh_interval(text: str) -> float:
    """``--interval`` of a view that refreshes: at least ``MIN_REFRESH``."""
    interval = _duration_arg(text, "--interval")
    if interval < MIN_REFRESH:
        raise ReconcilerError(f"--interval {text} is too short: the least is 100ms",
                              hint="e.g. --interval 1s")
    return interval


def _pool(args: argparse.Namespace) -> Pool:
    return pools.resolve_pool(args.state_dir, args.file, args.pool)


# ---------------------------------------------------------------------- spec and plan


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.file)
    except SpecError as exc:
        if args.output == "json":
            print_json({"file": args.file, "valid": False, "problems": list(exc.problems)})
        else:
            lines = [exc.one_line()] if len(exc.problems) == 1 else exc.problems
            for problem in lines:
                print(f"error: {printable(problem)}", file=sys.stderr)
        return 1
    if args.output == "json":
        print_json({"file": args.file, "valid": True, "pool": spec.name,
                    "replicas": spec.replicas, "runtime": spec.runtime})
    else:
        print(f"{args.file}: valid (pool {spec.name}, {spec.replicas} replica(s), "
              f"runtime {spec.runtime})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from reconciler import operations
    from reconciler.report.plan import plan_document

    pool = pools.resolve_pool(args.state_dir, args.file, None)
    plan = operations.diff(pool)
    drift = _sync_drift(pool)
    if args.output == "json":
        document = plan_document(plan)
        if drift is not None:  # only with sync on: the plan's contract is unchanged without
            document["sync"] = asdict(drift) | {"pending": drift.pending}
        print_json(document)
    else:
        _render().render_plan(plan, title=f"reconcile apply would change pool {pool.name}:")
        if drift is not None:
            _print(drift.describe(), "yellow" if drift.pending or drift.problem else None)
    return 0 if plan.in_sync and not (drift and drift.pending) else 2


def _sync_drift(pool: Pool) -> SyncDrift | None:
    """What ``diff`` says of GitOps sync, when the spec or a controller's ``--sync`` turns
    it on: the ref as last fetched against what runs (it never fetches: a fetch changes
    the repository, and ``diff`` changes nothing)."""
    from reconciler import gitsync
    from reconciler.specmodel import document_hash
    from reconciler.sync import SYNC_KEY, SyncConfig, state_from_json

    if pool.spec is None or pool.spec.source_path is None:
        return None
    state, running = None, None
    if pool.paths.exists():
        # opened as operations.diff opens it: a read-only connection closing last would
        # leave the -wal and -shm files behind, which changes how a later write fails
        with Store(pool.paths.store) as store:
            state = state_from_json(store.meta_value(SYNC_KEY))
            latest, history = store.latest_spec(), store.history()
        if latest is not None:
            running = (latest[0], document_hash(latest[1]),
                       history[-1].git_commit if history else None)
    config = pool.spec.sync or (SyncConfig(state.ref, state.path or None, state.interval)
                                if state else None)
    if config is None:
        return None
    fetched_at = state.fetched_at if state and state.ref == config.ref else None
    return gitsync.drift(pool.spec.source_path, config, pool.name, running, fetched_at,
                         pool.spec.document_hash)


def cmd_apply(args: argparse.Namespace) -> int:
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from reconciler import operations
    from reconciler.actions import Plan
    from reconciler.report.plan import plan_document

    wait_timeout = _duration_arg(args.timeout, "--timeout")
    lock_timeout = _duration_arg(args.lock_timeout, "--lock-timeout")
    checked = CheckedSpecs(args.state_dir)
    pool = pools.resolve_pool(args.state_dir, args.file, None, checked=checked)
    text = args.output == "text"

    def show_plan(plan: Plan) -> None:  # called under the lock, with the plan that runs
        if text and not plan.in_sync:
            _render().render_plan(plan, title=f"Applying to pool {pool.name}:")

    say = _progress_line if text else (lambda _line: None)
    result = operations.apply(pool, lock_timeout=lock_timeout, on_plan=show_plan, progress=say,
                              force=args.force)
    checked.save()  # applied: the file's next load skips its checks
    waited = None
    if args.wait:
        with Progress(TextColumn("converging"), TextColumn("{task.fields[detail]}"),
                      TimeElapsedColumn(), console=_progress_console(), disable=not text,
                      transient=True) as bar:
            job = bar.add_task("converging", detail="")
            waited = operations.converge(
                pool, result.generation, timeout=wait_timeout, progress=say,
                on_tick=lambda remaining: bar.update(job, detail=remaining.summary()))
    ready = waited is None or waited.ready
    if not text:
        print_json({**plan_document(result.plan), "spec_id": result.generation,
                    "generation": result.generation,
                    "recorded": result.recorded, "done": result.report.done,
                    "skipped": result.report.skipped, "problems": result.report.problems,
                    "forced": list(result.forced),
                    "remaining": plan_document(result.remaining), "ready": ready,
                    "superseded_by": waited.superseded_by if waited else None})
    elif result.plan.in_sync and not result.plan.steps:
        _print(f"Nothing to do: pool {pool.name} already matches {args.file}"
                      f" (generation {result.generation}"
                      f"{', recorded now' if result.recorded else ''}).")
    else:
        _print(f"Apply complete! {len(result.report.done)} change(s) made; generation "
               f"{result.generation} in history.", "bold green")
        if not args.wait and not result.remaining.empty:
            _print(f"still in progress: {result.remaining.summary()} "
                          "(the controller finishes it; `reconcile diff` shows what is left)")
    for problem in result.report.problems:
        print(f"warning: {printable(problem)}", file=sys.stderr)
    for problem in result.forced:
        print(f"warning: applied despite (--force): {printable(problem)}", file=sys.stderr)
    if waited is not None and waited.superseded_by is not None:
        print(f"error: stopped waiting: generation {waited.superseded_by} was applied after "
              f"this one ({result.generation}); the pool now converges to that", file=sys.stderr)
        return 1
    if not ready:
        print(f"error: the pool did not converge within {args.timeout} (see `reconcile diff` "
              "and `reconcile status`)", file=sys.stderr)
        _show_crash_tails(pool)
        return 1
    return 0


def _show_crash_tails(pool: Pool) -> None:
    """What the children that died before their first heartbeat printed last (on stderr,
    escaped: it is their output, not ours)."""
    from reconciler.crashtail import crash_tails

    for who, tail in crash_tails(pool.paths, pools.observe_pool(pool)):
        print(f"{who} exited before its first heartbeat; the last lines it printed:",
              file=sys.stderr)
        for line in tail.splitlines():
            print(f"  | {printable(line)}", file=sys.stderr)


def cmd_delete(args: argparse.Namespace) -> int:
    from reconciler import operations

    pool = _pool(args)
    result = operations.delete(
        pool, force=args.force, purge=args.purge,
        lock_timeout=_duration_arg(args.lock_timeout, "--lock-timeout"),
        progress=_progress_line)
    for problem in result.report.problems:
        print(f"warning: {printable(problem)}", file=sys.stderr)
    if not result.done:
        print("error: some workers did not stop in time; run `reconcile delete --force` to "
              "stop them now (their tasks go back to the queue)" +
              (", then --purge again" if args.purge else ""), file=sys.stderr)
        return 1
    if result.purged is not None:
        _print(f"Pool {pool.name} deleted and purged; removed:")
        for path, held in result.purged.removed:
            _print(f"  {path} ({held})")
    else:
        _print(f"Pool {pool.name} deleted. Kept, for `reconcile apply` to bring it back:")
        _print(f"  the queue, attempts, history and events: {pool.paths.store}")
        _print(f"  logs: {pool.paths.logs}")
    if result.remains is not None:
        for line in _remains_lines(result.remains, purged=result.purged is not None):
            _print(line)
    return 1 if result.report.problems else 0


def _remains_lines(left: Remains, *, purged: bool) -> list[str]:
    """What a deleted pool leaves in its repository, and how to remove it."""
    repo, where = left.repo, f"{left.branch_directory}*" if left.branch_directory else "*"
    lines = []
    if left.worktrees:
        lines.append(f"  worktrees: {len(left.worktrees)} under {left.worktree_root}")
    lines.append(f"  task branches: {left.branches} in {repo} ({where}); they hold the "
                 f"agents' work and stay{' (not purged)' if purged else ''}")
    if purged:
        lines.append(f"To remove them: git -C {repo} branch --list '{where}' lists them, "
                     f"git -C {repo} branch -D NAME deletes one.")
    else:
        lines.append("`reconcile prune` removes the worktrees and the branches of failed "
                     "tasks (--branches all: every one) and old logs; `reconcile delete "
                     "--purge` then removes the store and logs (branches stay).")
    return lines


def cmd_controller(args: argparse.Namespace) -> int:
    from reconciler import controller
    from reconciler.crashlog import enable_crash_log
    from reconciler.log import log_to

    pool = _pool(args)
    if pool.spec is None:
        raise PoolError(f"pool {pool.name!r} was never applied",
                        hint="pass -f workers.yaml to apply it and keep it converged")
    if not pool.spec.controller_enabled:  # it would only be told to stop at once
        where = args.file or f"the applied spec of pool {pool.name}"
        raise PoolError(f"controller.enabled is false in {where}: this pool changes only "
                        "when you run apply", hint="set controller.enabled: true (and apply "
                        "it), or run `reconcile apply` when you want the pool converged")
    flags = _sync_flags(args, pool)
    log_to(sys.stderr, "{time} controller {level} {message}", level="INFO", replace=True)
    try:
        log = enable_crash_log(pool.paths.logs / "controller.log", who="controller")
        log_to(log, "{time} {level} {message}", time="timestamp")
    except OSError as exc:  # a full disk must not keep the controller from running
        from reconciler.log import logger

        logger.error("cannot open {}: {}; logging to stderr only",
                     pool.paths.logs / "controller.log", exc.strerror or exc)
    # with -f, the file given is applied (once the lock is ours) and kept converged
    return controller.run_controller(pool, apply_first=bool(args.file),
                                     detached=args.detached, sync=flags)


def _sync_flags(args: argparse.Namespace, pool: Pool) -> SyncFlags:
    """``--sync`` and ``--sync-*`` checked, and, when sync will be on, its repository and
    remote too (only reads): a wrong ref is one line now, not an event a minute later."""
    from reconciler import gitsync
    from reconciler.sync import SyncFlags, check_path, effective_config, split_ref

    interval = _duration_arg(args.sync_interval, "--sync-interval") \
        if args.sync_interval else None
    if interval is not None and interval <= 0:
        raise ReconcilerError(f"--sync-interval {args.sync_interval} must be longer than 0",
                              hint="e.g. --sync-interval 1m")
    if args.sync_ref:
        split_ref(args.sync_ref)
    if args.sync_path:
        check_path(args.sync_path)
    flags = SyncFlags(args.sync or bool(args.sync_ref or args.sync_path or interval),
                      args.sync_ref, args.sync_path, interval)
    config = effective_config(pool.spec.sync if pool.spec else None, flags.forced, flags.ref,
                              flags.path, flags.interval)
    if config is None:
        return flags
    spec_file = pool.spec.source_path if args.file and pool.spec else None
    if spec_file is None and pool.paths.exists():
        with Store(pool.paths.store, readonly=True) as store:
            history = store.history()
        spec_file = Path(history[-1].source_path) if history and history[-1].source_path \
            else None
    if spec_file is None:
        raise PoolError(f"pool {pool.name!r}: sync needs the spec file the pool was applied "
                        "from", hint="pass -f workers.yaml (in a clone of the repository "
                        "to follow)")
    gitsync.check_remote(gitsync.locate(spec_file, config), config)
    return flags


def cmd_restart(args: argparse.Namespace) -> int:
    from reconciler import operations

    pool = _pool(args)
    result = operations.restart(pool, args.worker)
    for problem in result.report.problems:
        print(f"warning: {printable(problem)}", file=sys.stderr)
    if result.report.problems:
        return 1
    message = ("it is replaced after its current task" if result.after_current_task
               else "restarted now")
    print(f"{args.worker}: restart budget reset; {message} (not counted against the budget)")
    return 0


# ---------------------------------------------------------------------- read commands


def cmd_status(args: argparse.Namespace) -> int:
    if not args.watch:
        return _status_once(args)
    interval = _refresh_interval(args.interval)
    terminal = sys.stdout.isatty()
    while True:  # Ctrl-C ends it
        if terminal:
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: each print replaces the last
        else:
            print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} ---")
        _status_once(args)
        sys.stdout.flush()
        time.sleep(interval)


def cmd_dashboard(args: argparse.Namespace) -> int:
    interval = _refresh_interval(args.interval)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ReconcilerError("reconcile dashboard needs a terminal (its input and output)",
                              hint="use `reconcile status --watch`, or `status -o json` in "
                              "scripts")
    from reconciler.report import dashboard

    with _open_store(args) as (pool, store):
        return dashboard.run(pool, store, interval)


def _status_once(args: argparse.Namespace) -> int:
    pool = _pool(args)
    if pool.paths.exists():  # read-only: works on a full or read-only disk, wakes no one
        with Store(pool.paths.store, readonly=True) as store:
            _, document = pools.status_of(pool, store, time.time())
    else:
        _, document = pools.status_of(pool, None, time.time())
    if args.output == "json":
        print_json(document)
    else:
        _render().render_status(document)
    return 0 if document["ok"] else UNHEALTHY_EXIT


@contextmanager
def _open_store(args: argparse.Namespace, create: bool = False,
                write: bool = False) -> Iterator[tuple[Pool, Store]]:
    """The pool named by ``args`` and its store, closed when the command is done.

    Read-only unless the command writes (``write``, or ``create``: tasks may be
    queued before the first apply), so reads work on a full or read-only disk.
    """
    pool = _pool(args)
    if create and not pool.paths.exists():
        pool.paths.create()
    elif not pool.paths.exists():
        raise PoolError(f"pool {pool.name!r} has no state in {pool.paths.state_dir}",
                        hint="apply its spec first: reconcile apply -f workers.yaml")
    with Store(pool.paths.store, readonly=not (create or write)) as store:
        yield pool, store


def cmd_logs(args: argparse.Namespace) -> int:
    """A task's, a worker's or the controller's log; ``-f`` follows it."""
    from reconciler.logview import log_target, show_log

    with _open_store(args) as (pool, store):
        path, still_written = log_target(pool.paths, store, args.target, args.attempt)
        show_log(path, tail=args.tail, follow=args.follow, still_written=still_written)
    return 0


def cmd_pools(args: argparse.Namespace) -> int:
    """Every pool of the state directory, read from its store alone (no tmux, no git,
    no pueue): fast however many pools there are."""
    from reconciler.paths import known_pools

    rows = [pools.pool_summary(args.state_dir, name, time.time())
            for name in known_pools(args.state_dir)]
    if args.output == "json":
        print_json(rows)
    else:
        _render().render_pools(rows, args.state_dir)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _open_store(args) as (_, store):
        history = store.history()
        if args.output == "json":
            print_json([asdict(h) for h in history])
        else:
            _render().render_history(history)
        return 0


def cmd_events(args: argparse.Namespace) -> int:
    where = {"kind": args.kind, "worker_id": args.worker, "task_id": args.task,
             "severity": args.severity}
    with _open_store(args) as (_, store):
        events = store.find_events(**where, last=args.limit)  # filtered by the store
        if not args.follow:
            if args.output == "json":
                print_json([asdict(e) for e in events])
            else:
                _render().render_events(events)
            return 0
        last = events[-1].id if events else 0
        while True:  # one JSON object per line with -o json; Ctrl-C ends it
            for event in events:
                if args.output == "json":
                    print(json.dumps(asdict(event)), flush=True)
                else:
                    _render().render_events([event], empty_note=False)
                last = event.id
            sys.stdout.flush()  # each line as it happens, into a pipe too (| grep, | tee)
            time.sleep(POLL_SECONDS)
            events = store.find_events(**where, after_id=last)


def cmd_report(args: argparse.Namespace) -> int:
    """The pool's productivity over ``--since``, read-only."""
    from reconciler.health import LIVE
    from reconciler.report.analysis import analyse, pueue_summary

    since = _duration_arg(args.since, "--since")
    target = _duration_arg(args.target_wait, "--target-wait")
    for value, option in ((since, "--since"), (target, "--target-wait")):
        if value <= 0:
            raise ReconcilerError(f"{option} must be longer than 0", hint=f"e.g. {option} 5m")
    html_file = _html_target(args.html) if args.html is not None else None  # before reading
    now = time.time()
    with _open_store(args) as (pool, store):
        attempts, tasks, restarts = store.report_rows(now - since)
        counts, oldest = store.queue_counts(), store.oldest_queued_at()
        lives = store.worker_lives(now - since, now)
        up_now = {w.id: not w.removed and w.health in LIVE
                  for w in store.workers(include_removed=True)}
        observation = pools.observe_pool(pool, store)
        pueue_events = [e for kind in ("pueue.down", "pueue.killed", "pueue.restarted")
                        for e in store.find_events(kind=kind)] \
            if observation.pueue is not None else []
    per_worker, available = _worker_memory(observation)
    document = analyse(pool=pool.name, since=now - since, now=now,
                       replicas=pool.spec.replicas if pool.spec else 0, attempts=attempts,
                       tasks=tasks, restarts=restarts, queued=counts.queued,
                       running=counts.running, target_wait=target,
                       memory_per_worker=per_worker, memory_available=available,
                       oldest_queued_at=oldest, lives=lives, up_now=up_now)
    if observation.pueue is not None:
        document["pueue"] = pueue_summary(pueue_events, now - since, now, observation.pueue)
    if html_file is not None:
        _write_html(html_file, document, attempts)
    if args.output == "json":
        print_json(document)
    else:
        _render().render_report(document, markdown=args.output == "markdown")
    return 0


def _html_target(name: str) -> Path:
    """The file ``--html`` names, checked before any work: matplotlib is installed, the
    name is not a directory, and its directory exists (a typo fails at once, not after
    reading the store)."""
    try:
        import matplotlib  # noqa: F401  # only asked whether it is there
    except ImportError:
        raise ReconcilerError("--html draws its charts with matplotlib, which is not "
                              "installed", hint="install the html extra: pip install -e "
                              "'.[html]' in a clone of reconciler") from None
    if not name.strip():
        raise ReconcilerError("--html needs a file name", hint="e.g. --html report.html")
    path = Path(name)
    problem = not_a_regular_file(path)
    if problem is not None:  # a rename over it would replace a device, a FIFO, a link
        raise ReconcilerError(f"--html {name}: {problem}",
                              hint="name a regular file, e.g. --html report.html")
    if not path.parent.is_dir():
        raise ReconcilerError(f"--html {name}: directory {path.parent} does not exist",
                              hint="create it first, or name a file in another directory")
    return path


def _write_html(path: Path, document: dict[str, Any], attempts: Iterable[ReportAttempt],
                ) -> None:
    """Draw the page and put it in place whole: a reader (a browser reloading, a CI
    upload) never sees half a file."""
    from reconciler.report.charts import draw_charts
    from reconciler.report.html import render_html

    page = render_html(document, draw_charts(document, attempts)).encode("utf-8")
    try:
        _write_atomically(path, page)
    except OSError as exc:
        raise ReconcilerError(f"--html {path}: cannot write it: {exc.strerror or exc}") from None
    print(f"wrote {printable(str(path))} ({max(1, round(len(page) / 1024))} KB)",
          file=sys.stderr)


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file in ``path``'s directory, renamed over ``path`` once complete;
    an existing file keeps its mode, a new one gets the umask's."""
    import os
    import tempfile

    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).chmod(mode)
        Path(temporary).replace(path)  # os.replace: atomic within a file system
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _worker_memory(observation: Any) -> tuple[float | None, float | None]:
    """The mean resident memory of the live workers' process trees (with their agents)
    and the host's available memory, in bytes; None where unknown."""
    import psutil

    from reconciler.report.dashboard import TreeMeter

    meter = TreeMeter()
    sizes = [size for instance in observation.instances if instance.alive and instance.pid
             if (size := meter.measure(instance.pid)[1]) is not None]
    per_worker = sum(sizes) / len(sizes) if sizes else None
    return per_worker, float(psutil.virtual_memory().available)


def cmd_export(args: argparse.Namespace) -> int:
    """Stream rows as CSV (spreadsheet-safe) or JSON lines; read-only."""
    import csv

    from reconciler.store.tasks import EXPORT_COLUMNS

    since = time.time() - _duration_arg(args.since, "--since") if args.since else 0.0
    with _open_store(args) as (_, store):
        rows = store.export_rows(args.what, since)
        if args.format == "jsonl":
            for row in rows:
                sys.stdout.write(json.dumps(row) + "\n")
            return 0
        writer = csv.DictWriter(sys.stdout, fieldnames=EXPORT_COLUMNS[args.what],
                                lineterminator="\n")
        writer.writeheader()  # with no rows too: a reader still learns the columns
        for row in rows:
            writer.writerow({k: _iso_time(v) if _is_time(k) else _spreadsheet_safe(v)
                             for k, v in row.items()})
    return 0


def _is_time(column: str) -> bool:
    return column == "at" or column.endswith("_at")


def _iso_time(value: Any) -> Any:
    """A moment as ISO 8601 in local time with its UTC offset, to the millisecond (what
    spreadsheets and other tools read as a time; JSON lines keep Unix seconds)."""
    if value is None:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(float(value)).astimezone().isoformat(timespec="milliseconds")


def _spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab,
    CR first) is kept as text: a leading ``'``.  A task title is outside text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def cmd_metrics(args: argparse.Namespace) -> int:
    """One scrape's exposition on standard output; read-only."""
    from reconciler.metrics import families, gather, write_exposition

    with _open_store(args) as (pool, store):
        facts = gather(pool, store)
    if args.output == "json":
        print_json([{"name": f.name, "type": f.type, "help": f.documentation,
                     "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                                 for s in f.samples]} for f in families(facts)])
        return 0
    sys.stdout.buffer.write(write_exposition(facts, openmetrics=args.openmetrics))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Lift a pause of claiming; a budget pause is not set again before midnight."""
    now = time.time()
    with _open_store(args, write=True) as (pool, store):
        reason = store.paused_reason()
        was = store.resume_claiming(hold_until=day_start(now, days=1), now=now)
        store_resumed = store.resumed_until()
    if was:
        wake_claimers(pool)  # idle workers claim at once, not at their next check
    if args.output == "json":
        print_json({"pool": pool.name, "was_paused_until": was or None,
                    "reason": reason if was else None,
                    "budget_not_enforced_until": store_resumed if store_resumed > now
                    else None})
    elif was:
        held = store_resumed > now
        _print(f"pool {pool.name}: claiming resumed (it was paused until "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(was))}: {reason})"
               + ("; the day's budget is not enforced again before midnight" if held else ""))
    else:
        _print(f"pool {pool.name}: claiming was not paused; nothing to resume")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from reconciler.store.base import backup_store

    with _open_store(args) as (pool, store):  # read-only: a backup changes nothing
        inside = args.dest.resolve().is_relative_to(pool.paths.root.resolve())
        if inside:  # over its own store.db, workers would write on into a deleted file
            raise ReconcilerError(f"backup destination {args.dest} is inside the pool's own "
                                  f"state directory {pool.paths.root}",
                                  hint="write the backup somewhere else, e.g. ~/backups/")
        info = backup_store(store, args.dest, force=args.force)
    if args.output == "json":
        print_json({"pool": pool.name, "source": str(info.source),
                    "destination": str(info.destination), "bytes": info.bytes,
                    "tasks": info.tasks, "schema": info.schema,
                    "seconds": round(info.seconds, 3)})
    else:
        print(f"backed up pool {pool.name}: {info.tasks} task(s), {info.bytes} bytes "
              f"-> {info.destination}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove what ended attempts left (worktrees, branches, old logs), or with
    ``--empty-branches`` only the task branches with no commits; asks nothing
    (--dry-run shows it first)."""
    if args.empty_branches:
        given = [option for option, value in (("--branches", args.branches),
                                              ("--older-than", args.older_than),
                                              ("--dirty-worktrees", args.dirty_worktrees))
                 if value]
        if given:
            raise ReconcilerError(f"prune --empty-branches takes no {given[0]}: it deletes "
                                  "only branches without commits", hint="leave out "
                                  "--empty-branches to prune what ended attempts left")
        return _prune_empty_branches(args)
    return _prune_leftovers(args)


def _prune_leftovers(args: argparse.Namespace) -> int:
    from reconciler.pruneplan import DEFAULT_BRANCH_POLICY, DEFAULT_OLDER_THAN, PruneOptions
    from reconciler.worktrees import check_repo

    older_than = args.older_than or DEFAULT_OLDER_THAN
    options = PruneOptions(branches=args.branches or DEFAULT_BRANCH_POLICY,
                           older_than=_duration_arg(older_than, "--older-than"),
                           dirty=args.dirty_worktrees)
    with _open_store(args) as (pool, store):  # read-only: it records nothing
        spec = _applied(pool)
        check_repo(spec.repo, spec.base_ref)
        from reconciler.prune import prune_leftovers

        outcome = prune_leftovers(pool.paths, spec, store, options, dry_run=args.dry_run,
                                  pool_deleted=bool(store.meta_value(pools.DELETED_KEY)),
                                  now=time.time())
    def rows(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"kind": i.kind, "name": i.name, "reason": i.reason, "task_id": i.task_id,
                 "commit": outcome.tips.get(i.name) if i.kind == "branch" else None}
                for i in items]
    document = {"pool": pool.name, "repo": str(spec.repo), "dry_run": args.dry_run,
                "branches": options.branches, "older_than": older_than,
                "dirty_worktrees": options.dirty, "removed": rows(outcome.done),
                "kept": rows(outcome.plan.keep), "recent_logs": outcome.plan.recent_logs,
                "failed": rows(outcome.failed)}
    return _pruned(args, document, _render().render_prune_leftovers, len(outcome.failed),
                   "item(s) could not be removed")


def _pruned(args: argparse.Namespace, document: dict[str, Any],
            render: Callable[[dict[str, Any]], None], failures: int, what: str) -> int:
    """A prune's document as JSON or text; exit 1, with one line, if anything failed
    (each failure is in the document)."""
    if args.output == "json":
        print_json(document)
    else:
        render(document)
    if failures:
        print(f"error: {failures} {what} (listed above)", file=sys.stderr)
        return 1
    return 0


def _applied(pool: Pool) -> PoolSpec:
    """The pool's spec (the file's, else the newest applied), or one line saying why
    there is none."""
    if pool.spec is None:
        raise PoolError(f"pool {pool.name!r} was never applied, so its branch naming and "
                        "baseRef are unknown", hint="pass -f workers.yaml")
    return pool.spec


def _prune_empty_branches(args: argparse.Namespace) -> int:
    """Delete the pool's empty task branches."""
    from reconciler.branches import prune_empty_branches
    from reconciler.worktrees import check_repo, repo_lock

    with _open_store(args) as (pool, store):  # read-only: branches are git's, not the store's
        spec = _applied(pool)
        check_repo(spec.repo, spec.base_ref)
        # under the lock every worker takes to add a worktree: no attempt starts meanwhile
        with repo_lock(pool.paths.repo_locks, spec.repo):
            result = prune_empty_branches(
                spec.repo, spec.base_ref, dry_run=args.dry_run,
                naming=branch_pattern(spec.worktrees.branch, pool=pool.name),
                directory=branch_directory(spec.worktrees.branch, pool=pool.name),
                recorded=store.attempt_branches())
    document = {"pool": pool.name, "repo": str(spec.repo), "base_ref": spec.base_ref,
                "dry_run": args.dry_run, "deleted": result.deleted,
                "kept": [{"branch": b, "reason": r} for b, r in result.kept.items()],
                "with_commits": result.with_commits,
                "failed": [{"branch": b, "reason": r} for b, r in result.failed.items()]}
    return _pruned(args, document, _render().render_prune, len(result.failed),
                   "branch(es) could not be deleted")


def cmd_scale(args: argparse.Namespace) -> int:
    from reconciler import operations

    path = Path(args.file)
    wait_timeout = _duration_arg(args.timeout, "--timeout")
    if not 0 <= args.replicas <= MAX_REPLICAS:
        raise ReconcilerError(f"replicas must be from 0 to {MAX_REPLICAS}, got {args.replicas}")
    result = operations.scale(path, args.replicas, state_dir=args.state_dir, wait=args.wait,
                              timeout=wait_timeout,
                              progress=_progress_line)
    _print(f"{path}: replicas {result.before} → {result.after}")
    if result.converge is not None and result.converge.superseded_by is not None:
        print(f"error: stopped waiting: generation {result.converge.superseded_by} was applied "
              "after this one", file=sys.stderr)
        return 1
    if result.converge is not None and not result.converge.ready:
        print(f"error: the pool did not converge within {args.timeout}", file=sys.stderr)
        return 1
    _print(f"applied: pool {result.apply.plan.pool} scaled to {args.replicas} "
                  f"(generation {result.apply.generation})")
    return 0


# ---------------------------------------------------------------------- tasks


def cmd_task(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "add": task_add, "import": task_import, "list": task_list, "show": task_show,
        "cancel": task_cancel, "wait": task_wait, "retry": task_retry,
    }
    return handlers[args.task_command](args)


def task_add(args: argparse.Namespace) -> int:
    from reconciler.taskfile import check_prompt, check_title, read_prompt_file

    try:
        title = check_title(args.title)
    except TaskError as exc:
        raise TaskError(f"--title: {exc.message}", hint=exc.hint) from exc
    prompt, option = (args.prompt, "--prompt") if args.prompt is not None else (title, "--title")
    if args.prompt_file is not None:
        option = f"--prompt-file {args.prompt_file}"
        try:
            prompt = read_prompt_file(args.prompt_file)
        except TaskError as exc:
            raise TaskError(f"{option}: {exc.message}", hint=exc.hint) from exc
    try:
        check_prompt(prompt)
    except TaskError as exc:
        raise TaskError(f"{option}: {exc.message}", hint=exc.hint) from exc
    with _open_store(args, create=True) as (pool, store):
        (task_id,) = store.add_tasks([(title, prompt, args.priority)])
        wake_claimers(pool)
        if args.output == "json":
            print_json({"id": task_id})
        else:
            print(task_id)
        return 0


def task_import(args: argparse.Namespace) -> int:
    from reconciler.taskfile import NewTask, read_task_file

    tasks: list[NewTask] = read_task_file(args.tasks_file, allow_outside=args.allow_outside)
    with _open_store(args, create=True) as (pool, store):
        ids = store.add_tasks([(t.title, t.prompt, t.priority) for t in tasks])
        wake_claimers(pool)
        if args.output == "json":
            print_json({"ids": ids})
        else:
            print(f"imported {len(ids)} task(s): ids {ids[0]}-{ids[-1]}")
        return 0


def task_list(args: argparse.Namespace) -> int:
    """One page (``TASK_PAGE`` tasks, or ``--limit``) as a table; ``-o json`` streams every
    task (or ``--limit``) straight from the store's cursor: with 100,000 tasks neither
    reads more than it shows, nor holds them all in memory (issue 9)."""
    since = time.time() - _duration_arg(args.since, "--since") if args.since else None
    with _open_store(args) as (pool, store):
        if args.output == "json":
            print_json_array(_task_documents(pool, store.iter_tasks(
                args.status, limit=None if args.all else args.limit, since=since)))
            return 0
        page = store.tasks(args.status, limit=None if args.all else args.limit or TASK_PAGE,
                           since=since)
        counts = store.queue_counts()
    _render().render_tasks(page, _commit_counts(pool, page))
    total = getattr(counts, args.status) if args.status else counts.total
    if since is None and total > len(page):
        _print(f"showing the first {len(page)} of {total} tasks; "
                      "--limit N shows more, --all shows every one")
    return 0


def _task_documents(pool: Pool, tasks: Iterable[TaskRow]) -> Iterator[dict[str, Any]]:
    """``task list -o json``'s objects, with each branch's commit count: the counts are
    asked of git per ``COMMIT_CHUNK`` tasks, so memory stays flat."""
    rows = iter(tasks)
    while chunk := list(islice(rows, COMMIT_CHUNK)):
        commits = _commit_counts(pool, chunk)
        for t in chunk:
            yield {**task_document(t),
                   "commits": commits.get(t.branch) if t.branch else None}


def _commit_counts(pool: Pool, tasks: list[TaskRow]) -> dict[str, int | None]:
    """Commits beyond the spec's baseRef of each task's branch: a few git calls for all of
    them; unknown (None) without an applied spec or when git cannot tell."""
    from reconciler.branches import known_counts

    branches = [t.branch for t in tasks if t.branch]
    if pool.spec is None or not branches:
        return {}
    directory = branch_directory(pool.spec.worktrees.branch, pool=pool.name)
    if not all(b.startswith(directory) for b in branches):  # from an earlier template
        directory = ""
    return known_counts(pool.spec.repo, pool.spec.base_ref, directory, branches)


def task_show(args: argparse.Namespace) -> int:
    with _open_store(args) as (_, store):
        task = store.task(args.task_id)
        attempts = store.attempts(task.id)
        if args.output == "json":
            print_json(task_document(task, attempts))
        else:
            _render().render_task(task, attempts, full=args.full)
        return 0


def task_retry(args: argparse.Namespace) -> int:
    def retry(store: Store, task_id: int) -> tuple[str, str]:
        store.retry_task(task_id)
        return "queued", "queued again"

    return _bulk(args, args.failed, "failed", "--failed", "queue again", retry, wake=True)


def task_cancel(args: argparse.Namespace) -> int:
    def cancel(store: Store, task_id: int) -> tuple[str, str]:
        status = store.cancel_task(task_id)
        return status, ("cancelled" if status == "cancelled"
                        else "cancel requested: its worker stops it within a heartbeat")

    return _bulk(args, args.queued, "queued", "--queued", "cancel", cancel, wake=False)


def _bulk(args: argparse.Namespace, selected: bool, status: str, option: str, verb: str,
          change: Callable[[Store, int], tuple[str, str]], *, wake: bool) -> int:
    """``task retry``/``task cancel`` of the ids given, or of every task of ``status``
    (``option``, confirmed unless ``--yes``): each changed on its own, each line saying
    what it became; exit 1 if any could not be changed."""
    if bool(args.task_ids) == selected:
        raise TaskError(f"give task ids or {option}, not both" if selected
                        else f"give the ids of the tasks to {verb}, or {option}")
    with _open_store(args, write=True) as (pool, store):
        if len(args.task_ids) == 1:  # one task: its error is the command's, one line
            (task_id,) = args.task_ids
            new_status, words = change(store, task_id)
            if wake:
                wake_claimers(pool)
            if args.output == "json":
                print_json({"id": task_id, "status": new_status})
            else:
                print(f"task {task_id}: {words}")
            return 0
        ids = list(args.task_ids) or [t.id for t in store.iter_tasks(status)]
        if selected and ids and not args.yes:
            _confirm(f"{verb} {len(ids)} {status} task(s) of pool {pool.name}?", option)
        results = []
        for task_id in ids:
            try:
                new_status, words = change(store, task_id)
            except TaskError as exc:
                results.append({"id": task_id, "changed": False, "error": exc.one_line()})
                continue
            results.append({"id": task_id, "changed": True, "status": new_status,
                            "message": words})
        if wake and any(r["changed"] for r in results):
            wake_claimers(pool)
    if args.output == "json":
        print_json(results)
    else:
        for r in results:
            said = r["message"] if r["changed"] else f"not changed: {r['error']}"
            print(f"task {r['id']}: {said}")
        if not results:
            print(f"no {status} tasks")
    return 0 if all(r["changed"] for r in results) else 1


def _confirm(question: str, option: str) -> None:
    """Ask on the terminal; without one, refuse: a script says --yes."""
    if not sys.stdin.isatty():
        raise TaskError(f"{option} changes many tasks and stdin is not a terminal to confirm "
                        "on", hint="add --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise TaskError("nothing changed: not confirmed")


def task_wait(args: argparse.Namespace) -> int:
    timeout = _duration_arg(args.timeout, "--timeout") if args.timeout else None
    with _open_store(args) as (pool, store):
        if not any(i.alive for i in pools.observe_pool(pool).instances):
            print(f"warning: no worker of pool {pool.name} is running; tasks will not progress "
                  "until `reconcile apply` starts some", file=sys.stderr)
        ids = list(args.task_ids) or store.open_task_ids()
        for task_id in ids:
            store.task(task_id)  # unknown ids fail now, not after waiting
        finished = wait_for_tasks(store, ids, timeout, show=args.output == "text")
        tasks = [store.task(i) for i in ids]
        if args.output == "json":
            print_json({"finished": finished, "tasks": [{"id": t.id, "status": t.status}
                                                        for t in tasks]})
        else:
            counts = {s: sum(t.status == s for t in tasks) for s in sorted(FINAL_TASK_STATUSES)}
            print(f"{len(tasks)} task(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        if not finished:
            print(f"error: tasks still unfinished after {args.timeout}", file=sys.stderr)
            return 1
        return 0


def wait_for_tasks(store: Store, ids: list[int], timeout: float | None, *, show: bool) -> bool:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=_progress_console(), disable=not show) as progress:
        bar = progress.add_task("tasks", total=len(ids), detail="")
        statuses: dict[int, str] = {}
        seen_version: int | None = None
        while True:
            # read again only when another process wrote, and only what is still open:
            # one query a poll, however many tasks are waited for
            version = store.data_version()
            if version != seen_version:
                seen_version = version
                open_ids = [i for i in ids if statuses.get(i) not in FINAL_TASK_STATUSES]
                statuses.update(store.task_statuses(open_ids))
            values = [statuses.get(i, "queued") for i in ids]
            done = sum(s in FINAL_TASK_STATUSES for s in values)
            progress.update(bar, completed=done,
                            detail=f"{values.count('running')} running, "
                                   f"{values.count('failed')} failed")
            if done == len(ids):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------- internal


def cmd_demo(args: argparse.Namespace) -> int:
    from reconciler import demo

    return demo.run(args)
