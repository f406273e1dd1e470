"""One handler per CLI command: call the operation, render its result, pick the exit code."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reconciler import controller, demo, worker
from reconciler.controller import Pool
from reconciler.durations import parse_duration
from reconciler.errors import PoolError, ReconcilerError, SpecError, TaskError
from reconciler.model import FINAL_TASK_STATUSES, Plan
from reconciler.paths import pool_paths
from reconciler.planner import worker_ids
from reconciler.report import render
from reconciler.report.render import console, print_json
from reconciler.report.status import status_document, worker_statuses
from reconciler.spec import load_spec
from reconciler.store.sqlite import Store
from reconciler.taskfile import NewTask, check_title, read_task_file

POLL_SECONDS = 0.25


def dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "validate": cmd_validate, "diff": cmd_diff, "apply": cmd_apply, "delete": cmd_delete,
        "status": cmd_status, "history": cmd_history, "events": cmd_events, "task": cmd_task,
        "worker": cmd_worker, "demo": cmd_demo,
    }
    return handlers[args.command](args)


def _duration_arg(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ReconcilerError(f"{option}: {exc}") from exc


def _pool(args: argparse.Namespace) -> Pool:
    return controller.resolve_pool(args.state_dir, args.file, args.pool)


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
                print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.output == "json":
        print_json({"file": args.file, "valid": True, "pool": spec.name,
                    "replicas": spec.replicas, "runtime": spec.runtime})
    else:
        print(f"{args.file}: valid (pool {spec.name}, {spec.replicas} replica(s), "
              f"runtime {spec.runtime})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    pool = controller.resolve_pool(args.state_dir, args.file, None)
    plan, _ = controller.diff(pool)
    if args.output == "json":
        print_json(render.plan_document(plan))
    else:
        render.render_plan(plan, title=f"reconcile apply would change pool {pool.name}:")
    return 0 if plan.empty else 2


def cmd_apply(args: argparse.Namespace) -> int:
    wait_timeout = _duration_arg(args.timeout, "--timeout")
    lock_timeout = _duration_arg(args.lock_timeout, "--lock-timeout")
    pool = controller.resolve_pool(args.state_dir, args.file, None)
    text = args.output == "text"

    def show_plan(plan: Plan) -> None:  # called under the lock, with the plan that runs
        if text and not plan.empty:
            render.render_plan(plan, title=f"Applying to pool {pool.name}:")

    result = controller.apply(pool, lock_timeout=lock_timeout, on_plan=show_plan,
                              progress=lambda line: console.print(f"  {escape(line)}")
                              if text else None)
    ready = True
    if args.wait:
        ready = wait_for_workers(pool, wait_timeout, show=text)
    if not text:
        print_json({**render.plan_document(result.plan), "spec_id": result.spec_id,
                    "recorded": result.recorded, "done": result.report.done,
                    "remaining": render.plan_document(result.remaining), "ready": ready})
    elif result.plan.empty:
        console.print(f"Nothing to do: pool {pool.name} already matches {args.file}"
                      f" (spec #{result.spec_id}{', recorded now' if result.recorded else ''}).")
    else:
        console.print(f"[bold green]Apply complete![/bold green] {len(result.report.done)} "
                      f"change(s) made; spec #{result.spec_id} recorded in history.")
        if not result.remaining.empty:
            console.print(f"[yellow]warning:[/yellow] still pending: "
                          f"{escape(result.remaining.summary())} (a worker may have crashed "
                          f"at once; see `reconcile status` and its log)")
    if not ready:
        print(f"error: not every worker heartbeat within {args.timeout}", file=sys.stderr)
        return 1
    return 0


def wait_for_workers(pool: Pool, timeout: float, *, show: bool) -> bool:
    """Poll until every desired worker runs and has heartbeat since it started."""
    assert pool.spec is not None
    wanted = set(worker_ids(pool.spec.replicas))
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("waiting for workers"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not show,
                  transient=True) as progress:
        bar = progress.add_task("workers", total=len(wanted))
        while True:
            observation = controller.observe_pool(pool)
            ready = {w.id for w in observation.workers
                     if w.id in wanted and w.heartbeat_at and w.state in ("idle", "working")
                     and (inst := observation.instance(w.id)) is not None and inst.alive}
            progress.update(bar, completed=len(ready))
            if ready == wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)


def cmd_delete(args: argparse.Namespace) -> int:
    pool = _pool(args)
    _, report = controller.delete(
        pool, force=args.force, lock_timeout=_duration_arg(args.lock_timeout, "--lock-timeout"),
        progress=lambda line: console.print(f"  {escape(line)}"))
    console.print(f"Pool {pool.name} deleted: {len(report.done)} change(s); the queue, logs "
                  "and history are kept.")
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- read commands


def cmd_status(args: argparse.Namespace) -> int:
    pool = _pool(args)
    observation = controller.observe_pool(pool)
    now = time.time()
    if args.output == "json":
        print_json(status_document(observation, now))
    else:
        render.render_status(pool.name, worker_statuses(observation, now), observation.queue)
    return 0


def _with_store(args: argparse.Namespace, create: bool = False) -> tuple[Pool, Store]:
    pool = _pool(args)
    if create and not pool.paths.exists():  # tasks may be queued before the first apply
        return pool, Store(pool.paths.create().store)
    return pool, pool.open_store()


def cmd_history(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    history = store.history()
    if args.output == "json":
        print_json([asdict(h) for h in history])
    else:
        render.render_history(history)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    events = store.events(last=args.limit)
    if args.output == "json":
        print_json([asdict(e) for e in events])
    else:
        render.render_events(events)
    return 0


# ---------------------------------------------------------------------- tasks


def cmd_task(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "add": task_add, "import": task_import, "list": task_list, "show": task_show,
        "cancel": task_cancel, "wait": task_wait,
    }
    return handlers[args.task_command](args)


def task_add(args: argparse.Namespace) -> int:
    title = check_title(args.title)
    prompt = args.prompt if args.prompt is not None else title
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaskError(f"--prompt-file {args.prompt_file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise TaskError(f"--prompt-file {args.prompt_file}: not UTF-8 text (byte {exc.start})",
                            hint="save the prompt as UTF-8") from exc
    _, store = _with_store(args, create=True)
    (task_id,) = store.add_tasks([(title, prompt, args.priority)])
    if args.output == "json":
        print_json({"id": task_id})
    else:
        print(task_id)
    return 0


def task_import(args: argparse.Namespace) -> int:
    tasks: list[NewTask] = read_task_file(args.tasks_file)
    _, store = _with_store(args, create=True)
    ids = store.add_tasks([(t.title, t.prompt, t.priority) for t in tasks])
    if args.output == "json":
        print_json({"ids": ids})
    else:
        print(f"imported {len(ids)} task(s): ids {ids[0]}-{ids[-1]}")
    return 0


def task_list(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    tasks = store.tasks(args.status)
    if args.output == "json":
        print_json([render.task_document(t) for t in tasks])
    else:
        render.render_tasks(tasks)
    return 0


def task_show(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    task = store.task(args.task_id)
    attempts = store.attempts(task.id)
    if args.output == "json":
        print_json(render.task_document(task, attempts))
    else:
        render.render_task(task, attempts)
    return 0


def task_cancel(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    status = store.cancel_task(args.task_id)
    message = ("cancelled" if status == "cancelled"
               else "cancel requested: its worker stops it within a heartbeat")
    if args.output == "json":
        print_json({"id": args.task_id, "status": status})
    else:
        print(f"task {args.task_id}: {message}")
    return 0


def task_wait(args: argparse.Namespace) -> int:
    timeout = _duration_arg(args.timeout, "--timeout") if args.timeout else None
    pool, store = _with_store(args)
    if not any(i.alive for i in controller.observe_pool(pool).instances):
        print(f"warning: no worker of pool {pool.name} is running; tasks will not progress "
              "until `reconcile apply` starts some", file=sys.stderr)
    ids = list(args.task_ids) or [t.id for t in store.tasks()
                                  if t.status not in FINAL_TASK_STATUSES]
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
    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                  disable=not show) as progress:
        bar = progress.add_task("tasks", total=len(ids), detail="")
        while True:
            statuses = [store.task(i).status for i in ids]
            done = sum(s in FINAL_TASK_STATUSES for s in statuses)
            progress.update(bar, completed=done,
                            detail=f"{statuses.count('running')} running, "
                                   f"{statuses.count('failed')} failed")
            if done == len(ids):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------- internal


def cmd_worker(args: argparse.Namespace) -> int:
    paths = pool_paths(args.state_dir, args.pool)
    if not paths.exists():
        raise PoolError(f"pool {args.pool!r} has no store in {args.state_dir}")
    return worker.main(paths, args.id, args.spec_id)


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(args)
