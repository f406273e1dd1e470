"""Human renderings (rich) and JSON documents of plans, status, tasks and history.

Each read command builds plain data first; ``-o json`` prints that data and the
text form is drawn from the same data, so the two never disagree.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from reconciler.actions import Plan, verb
from reconciler.durations import format_duration
from reconciler.model import AppliedSpec, AttemptRow, EventRow, QueueCounts, TaskRow
from reconciler.report.documents import (  # re-exported: render is documents plus rich
    printable,
)
from reconciler.report.plan import describe, symbol


def shown(text: str, *, multiline: bool = False) -> str:
    """Outside text made safe to print: control characters visible, rich markup escaped."""
    return escape(printable(text, multiline=multiline))


class _SafeConsole(Console):
    """A console that never writes a control character it was given in a string.

    Every string printed, or drawn in a table cell, passes ``render_str``: a line
    another module builds from outside text cannot drive the terminal either.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text, multiline=True), **kwargs)


console: Console = _SafeConsole(highlight=False, soft_wrap=True)
_STYLE = {"start": "green", "restart": "yellow", "reset": "yellow"}  # any other verb: red


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def render_plan(plan: Plan, *, title: str) -> None:
    if plan.steps:
        console.print("Health transitions this pass records:")
        for step in plan.steps:
            console.print(f"  [dim]{shown(step.describe())}[/dim]")
        console.print()
    if plan.empty:
        console.print(f"[green]{shown(plan.summary())}[/green]")
        return
    console.print(f"{title}\n")
    for action in plan.actions:
        style = _STYLE.get(verb(action), "red")
        head = f"{symbol(action)} {verb(action)}"
        line = describe(action).removeprefix(head)
        console.print(f"  [{style}]{head}[/{style}]{shown(line)}")
    console.print(f"\n[bold]{shown(plan.summary())}[/bold]")


_HEALTH_STYLE = {"working": "cyan", "healthy": "green", "dead": "red", "failed": "bold red",
                 "unresponsive": "yellow", "slow": "yellow", "stopping": "yellow",
                 "stopped": "dim", "recovering": "blue"}


def render_status(document: dict[str, Any]) -> None:
    """The ``status`` document as a table, a controller line, the queue and any problems."""
    workers = document["workers"]
    table = Table(title=f"pool {document['pool']}", title_justify="left")
    for column in ("worker", "health", "pid", "task", "heartbeat", "uptime", "restarts"):
        table.add_column(column, justify="right" if column in ("pid", "restarts") else "left")
    for w in workers:
        style = _HEALTH_STYLE.get(w["health"], "")
        restarts = str(w["restarts"]) + (f" ({w['recent_restarts']} recent)"
                                         if w["recent_restarts"] else "")
        table.add_row(w["id"], f"[{style}]{w['health']}[/{style}]" if style else w["health"],
                      str(w["pid"] or "-"), _task_cell(w),
                      age(w["heartbeat_age"]) + (" ago" if w["heartbeat_age"] is not None
                                                 else ""), age(w["uptime"]), restarts)
    console.print(table if workers else f"pool {document['pool']}: no workers")
    controller = document["controller"]
    if controller["enabled"] is not None:
        busy = controller.get("busy")
        state = "running" if controller["running"] else (
            "[red]down[/red]" if controller["enabled"] else "disabled (pool changes on apply)")
        if busy:
            state += f", busy for {format_duration(time.time() - busy['since'])}: " \
                     f"{escape(printable(busy['with']))}"
        console.print(f"controller: {state}")
    if document.get("deleting"):
        console.print(f"[yellow]delete {document['deleting']['state']}[/yellow] (since "
                      f"{when(document['deleting']['since'])})")
    console.print(queue_line(QueueCounts(**document["queue"])))
    left = document.get("uncommitted_work") or {}
    if left.get("committed") or left.get("kept"):
        console.print(f"uncommitted work rescued: {left['committed']} attempt(s) committed to "
                      f"their branch, {left['kept']} worktree(s) kept (worktrees.onDirty: keep)")
    if document["claiming_paused_until"]:
        console.print(f"[yellow]claiming paused until {when(document['claiming_paused_until'])}"
                      "[/yellow] (the agent hit its rate limit)")
    for problem in document["problems"]:
        console.print(f"[red]problem:[/red] {shown(problem)}")


TITLE_WIDTH = 40  # status shows a title's start; -o json and `task show` have all of it


def _task_cell(worker: dict[str, Any]) -> str:
    """``12 Fix the login bug`` (escaped, shortened) for a worker's current task."""
    if worker["current_task"] is None:
        return "-"
    title = worker.get("task_title")
    if not title:
        return str(worker["current_task"])
    short = title if len(title) <= TITLE_WIDTH else title[:TITLE_WIDTH - 1] + "…"
    return f"{worker['current_task']} {shown(short)}"


def queue_line(queue: QueueCounts) -> str:
    return (f"queue: {queue.queued} queued, {queue.running} running, "
            f"{queue.succeeded} succeeded, {queue.failed} failed, {queue.cancelled} cancelled")


def render_tasks(tasks: list[TaskRow], commits: Mapping[str, int | None] | None = None,
                 ) -> None:
    """``commits``: how many commits each branch has beyond the spec's baseRef (``-``:
    no branch, or git cannot tell)."""
    table = Table()
    for column in ("id", "status", "prio", "tries", "commits", "title", "branch",
                   "last error"):
        table.add_column(column, overflow="fold", justify="right" if column == "commits"
                         else "left")
    for t in tasks:
        count = (commits or {}).get(t.branch) if t.branch else None
        table.add_row(str(t.id), t.status, str(t.priority), str(t.attempts),
                      "-" if count is None else str(count), shown(t.title),
                      shown(t.branch or "-"), shown((t.last_error or "")[:60]))
    console.print(table if tasks else "no tasks")


def render_task(task: TaskRow, attempts: list[AttemptRow]) -> None:
    console.print(f"[bold]task {task.id}[/bold]: {shown(task.title)}")
    console.print(f"  status:   {task.status}  (priority {task.priority}, "
                  f"{task.attempts} attempt(s))")
    console.print(f"  created:  {when(task.created_at)}")
    console.print(f"  branch:   {shown(task.branch or '-')}")
    if task.last_error:
        console.print(f"  error:    {shown(task.last_error, multiline=True)}")
    for a in attempts:
        took = age(a.ended_at - a.started_at) if a.ended_at else \
            f"for {age(time.time() - a.started_at)}"
        console.print(f"  attempt {a.number} on {a.worker_id}: {a.status}"
                      f"{f' (exit {a.exit_code})' if a.exit_code is not None else ''}, {took}")
        console.print(f"    worktree: {shown(a.worktree or '-')}")
        console.print(f"    log:      {shown(a.log_path or '-')}")
        if a.phases:
            console.print("    phases:   " + ", ".join(f"{name} {age(seconds)}"
                                                     for name, seconds in a.phases.items()))
        if a.rescued:
            console.print("    uncommitted work rescued: " + (
                "committed to the branch" if a.rescued == "committed"
                else "kept in the worktree (worktrees.onDirty: keep)"))
        if a.status not in ("succeeded", "running") and a.output_tail:
            tail = "\n".join(a.output_tail.rstrip().splitlines()[-5:])
            console.print("    output tail:\n" + "\n".join("      " + shown(line)
                                                           for line in tail.splitlines()))


def render_prune(document: dict[str, Any]) -> None:
    """What ``prune --empty-branches`` deleted (or would), kept, and could not delete."""
    verb = "would delete" if document["dry_run"] else "deleted"
    for branch in document["deleted"]:
        console.print(f"{verb} refs/heads/{shown(branch)}")
    for kept in document["kept"]:
        console.print(f"[dim]kept refs/heads/{shown(kept['branch'])}: {kept['reason']}[/dim]")
    for failed in document["failed"]:
        console.print(f"[red]not deleted[/red] refs/heads/{shown(failed['branch'])}: "
                      f"{shown(failed['reason'])}")
    console.print(f"pool {shown(document['pool'])}: {verb} {len(document['deleted'])} empty "
                  f"branch(es); kept {len(document['kept'])} empty, "
                  f"{document['with_commits']} with commits untouched")


def render_history(history: list[AppliedSpec]) -> None:
    table = Table()
    for column in ("generation", "applied", "file", "git commit", "spec hash", "plan"):
        table.add_column(column, overflow="fold")
    for h in history:
        table.add_row(str(h.id), when(h.applied_at), shown(h.source_path or "-"),
                      (h.git_commit or "-")[:14], h.document_hash[:12], shown(h.summary))
    console.print(table if history else "nothing applied yet")


def render_events(events: list[EventRow], *, empty_note: bool = True) -> None:
    for e in events:
        who = " ".join(x for x in (e.worker_id or "", f"task {e.task_id}" if e.task_id else "")
                       if x)
        console.print(f"{when(e.at)}  {shown(e.kind):<22} {shown(who):<16} {shown(e.message)}")
    if not events and empty_note:
        console.print("no events")
