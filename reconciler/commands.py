"""One handler per CLI command: call the operation, render its result, pick the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from loguru import logger
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reconciler import controller, demo, worker
from reconciler import pool as pools
from reconciler.durations import parse_duration
from reconciler.errors import PoolError, ReconcilerError, SpecError, TaskError
from reconciler.lock import pool_lock
from reconciler.model import FINAL_TASK_STATUSES, Plan
from reconciler.paths import open_private_append, pool_paths
from reconciler.pool import Pool
from reconciler.report import render
from reconciler.report.render import console, print_json
from reconciler.report.status import UNHEALTHY_EXIT, status_document
from reconciler.scale import rewrite_replicas
from reconciler.spec import load_spec
from reconciler.store.sqlite import Store
from reconciler.taskfile import NewTask, check_title, read_task_file

POLL_SECONDS = 0.25
MAX_REPLICAS = 256
LOCK_TIMEOUT = 10.0


def dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "validate": cmd_validate, "diff": cmd_diff, "apply": cmd_apply, "delete": cmd_delete,
        "status": cmd_status, "history": cmd_history, "events": cmd_events, "task": cmd_task,
        "worker": cmd_worker, "demo": cmd_demo, "controller": cmd_controller,
        "restart": cmd_restart, "scale": cmd_scale,
    }
    return handlers[args.command](args)


def _duration_arg(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ReconcilerError(f"{option}: {exc}") from exc


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
    pool = pools.resolve_pool(args.state_dir, args.file, None)
    plan, _ = pools.diff(pool)
    if args.output == "json":
        print_json(render.plan_document(plan))
    else:
        render.render_plan(plan, title=f"reconcile apply would change pool {pool.name}:")
    return 0 if plan.empty else 2


def cmd_apply(args: argparse.Namespace) -> int:
    wait_timeout = _duration_arg(args.timeout, "--timeout")
    lock_timeout = _duration_arg(args.lock_timeout, "--lock-timeout")
    pool = pools.resolve_pool(args.state_dir, args.file, None)
    text = args.output == "text"

    def show_plan(plan: Plan) -> None:  # called under the lock, with the plan that runs
        if text and not plan.empty:
            render.render_plan(plan, title=f"Applying to pool {pool.name}:")

    say = (lambda line: console.print(f"  {escape(line)}")) if text else (lambda _line: None)
    result = controller.apply(pool, lock_timeout=lock_timeout, on_plan=show_plan, progress=say)
    ready = True
    if args.wait:
        with Progress(TextColumn("converging"), TextColumn("{task.fields[detail]}"),
                      TimeElapsedColumn(), console=console, disable=not text,
                      transient=True) as bar:
            job = bar.add_task("converging", detail="")
            ready = controller.converge(
                pool, timeout=wait_timeout, progress=say,
                on_tick=lambda remaining: bar.update(job, detail=remaining.summary()))
    if not text:
        print_json({**render.plan_document(result.plan), "spec_id": result.spec_id,
                    "recorded": result.recorded, "done": result.report.done,
                    "problems": result.report.problems,
                    "remaining": render.plan_document(result.remaining), "ready": ready})
    elif result.plan.empty and not result.plan.steps:
        console.print(f"Nothing to do: pool {pool.name} already matches {args.file}"
                      f" (spec #{result.spec_id}{', recorded now' if result.recorded else ''}).")
    else:
        console.print(f"[bold green]Apply complete![/bold green] {len(result.report.done)} "
                      f"change(s) made; spec #{result.spec_id} in history.")
        if not args.wait and not result.remaining.empty:
            console.print(f"still in progress: {escape(result.remaining.summary())} "
                          "(the controller finishes it; `reconcile diff` shows what is left)")
    for problem in result.report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not ready:
        print(f"error: the pool did not converge within {args.timeout} (see `reconcile diff` "
              "and `reconcile status`)", file=sys.stderr)
        return 1
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    pool = _pool(args)
    report = controller.delete(
        pool, force=args.force, lock_timeout=_duration_arg(args.lock_timeout, "--lock-timeout"),
        progress=lambda line: console.print(f"  {escape(line)}"))
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    console.print(f"Pool {pool.name} deleted; the queue, logs and history are kept.")
    return 1 if report.problems else 0


def cmd_controller(args: argparse.Namespace) -> int:
    pool = _pool(args)
    if pool.spec is None:
        raise PoolError(f"pool {pool.name!r} was never applied",
                        hint="pass -f workers.yaml to apply it and keep it converged")
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss} controller {level} {message}", level="INFO")
    fd = open_private_append(pool.paths.logs / "controller.log")
    logger.add(os.fdopen(fd, "a", buffering=1), format="{time:YYYY-MM-DD HH:mm:ss.SSS} "
               "{level} {message}", level="DEBUG")
    # with -f, the file given is applied (once the lock is ours) and kept converged
    return controller.run_controller(pool, apply_first=bool(args.file))


def cmd_restart(args: argparse.Namespace) -> int:
    pool = _pool(args)
    store = pool.open_store()
    try:
        with pool_lock(pool.paths.lock, what="restart", timeout=LOCK_TIMEOUT):
            rows = {w.id: w for w in store.workers()}
            row = rows.get(args.worker)
            if row is None:
                raise PoolError(f"no worker {args.worker} in pool {pool.name}",
                                hint=f"workers: {', '.join(sorted(rows)) or 'none'}")
            store.reset_restart_budget(args.worker, "reconcile restart (operator)")
            if row.health in ("failed", "dead"):
                store.set_health(args.worker, row.health, "dead", "operator asked for a restart")
                message = "restart budget reset; it is restarted on the next pass"
            else:  # a live worker is replaced like a roll: after its task, nothing charged
                store.request_drain(args.worker, "operator asked for a restart")
                message = "it is replaced after its current task (budget reset)"
    finally:
        store.close()
    print(f"{args.worker}: {message}")
    return 0


# ---------------------------------------------------------------------- read commands


def cmd_status(args: argparse.Namespace) -> int:
    pool = _pool(args)
    observation = pools.observe_pool(pool)
    info, paused = None, 0.0
    if pool.paths.exists():
        store = Store(pool.paths.store)
        try:
            info, paused = store.controller(), store.paused_until()
        finally:
            store.close()
    document = status_document(observation, time.time(), pool.spec, info, paused)
    if args.output == "json":
        print_json(document)
    else:
        render.render_status(document)
    return 0 if document["ok"] else UNHEALTHY_EXIT


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
    if not args.follow:
        if args.output == "json":
            print_json([asdict(e) for e in events])
        else:
            render.render_events(events)
        return 0
    last = events[-1].id if events else 0
    while True:  # one JSON object per line with -o json; Ctrl-C ends it
        for event in events:
            if args.output == "json":
                print(json.dumps(asdict(event)), flush=True)
            else:
                render.render_events([event], empty_note=False)
            last = event.id
        time.sleep(POLL_SECONDS)
        events = store.events(after_id=last)


def cmd_scale(args: argparse.Namespace) -> int:
    path = Path(args.file)
    wait_timeout = _duration_arg(args.timeout, "--timeout")
    if not 0 <= args.replicas <= MAX_REPLICAS:
        raise ReconcilerError(f"replicas must be from 0 to {MAX_REPLICAS}, got {args.replicas}")
    before = rewrite_replicas(path, args.replicas)
    console.print(f"{path}: replicas {before} → {args.replicas}")
    pool = pools.resolve_pool(args.state_dir, args.file, None)
    say = lambda line: console.print(f"  {escape(line)}")  # noqa: E731
    controller.apply(pool, progress=say)
    if args.wait and not controller.converge(pool, timeout=wait_timeout, progress=say):
        print(f"error: the pool did not converge within {args.timeout}", file=sys.stderr)
        return 1
    console.print(f"applied: pool {pool.name} scaled to {args.replicas}")
    return 0


# ---------------------------------------------------------------------- tasks


def cmd_task(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "add": task_add, "import": task_import, "list": task_list, "show": task_show,
        "cancel": task_cancel, "wait": task_wait, "retry": task_retry,
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


def task_retry(args: argparse.Namespace) -> int:
    _, store = _with_store(args)
    store.retry_task(args.task_id)
    if args.output == "json":
        print_json({"id": args.task_id, "status": "queued"})
    else:
        print(f"task {args.task_id}: queued again")
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
    if not any(i.alive for i in pools.observe_pool(pool).instances):
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
