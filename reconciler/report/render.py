"""Human renderings of plans, status, tasks and history: plain text (``term``).

Each read command builds plain data first; ``-o json`` prints that data and the
text form is drawn from the same data, so the two never disagree.  Outside text
(titles, errors, output, messages) is made visible before it is printed: see
``term.say`` and ``term.cell_text``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.durations import format_duration
from reconciler.exitstatus import describe_exit
from reconciler.model import (
    AgentReport,
    AppliedSpec,
    AttemptRow,
    EventRow,
    QueueCounts,
    TaskRow,
)
from reconciler.report.documents import printable
from reconciler.report.term import HEALTH_STYLE, cell_text, columns, fit, paint, say

if TYPE_CHECKING:
    from reconciler.actions import Plan

__all__ = ["printable", "say"]  # re-exported for the commands that print

_STYLE = {"start": "green", "restart": "yellow", "reset": "yellow", "create": "green",
          "set": "yellow", "queue": "green"}  # any other verb: red


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def render_plan(plan: Plan, *, title: str) -> None:
    from reconciler.actions import verb  # the actions' 15 classes: only plans need them
    from reconciler.report.plan import describe, lead

    if plan.steps:
        say("Health transitions this pass records:")
        for step in plan.steps:
            say(f"  {step.describe()}", "dim")
        say()
    if plan.in_sync:
        say(plan.summary(), "green")
        return
    say(f"{title}\n")
    for change in plan.spec_changes:
        line = cell_text(change.describe())
        print(f"  {paint(line[0], _STYLE.get('restart', 'yellow'))}{line[1:]}")
    for action in plan.actions:
        head = lead(action)
        line = cell_text(describe(action).removeprefix(head))
        print(f"  {paint(head, _STYLE.get(verb(action), 'red'))}{line}")
    say()
    say(plan.summary(), "bold")


_TASK_STYLE = {"running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "dim"}


def render_status(document: dict[str, Any]) -> None:
    """The ``status`` document as a table, a controller line, the queue and any problems."""
    workers = document["workers"]
    say(f"pool {document['pool']}" + ("" if workers else ": no workers"))
    rows = []
    for w in workers:
        restarts = str(w["restarts"]) + (f" ({w['recent_restarts']} recent)"
                                         if w["recent_restarts"] else "")
        rows.append([w["id"], (w["health"], HEALTH_STYLE.get(w["health"], "")),
                     str(w["pid"] or "-"), _task_cell(w),
                     age(w["heartbeat_age"]) + (" ago" if w["heartbeat_age"] is not None
                                                else ""), age(w["uptime"]), restarts])
    if workers:
        for line in columns(("worker", "health", "pid", "task", "heartbeat", "uptime",
                             "restarts"), rows, right=("pid", "restarts")):
            print(line)
    controller = document["controller"]
    if controller["enabled"] is not None:
        busy = controller.get("busy")
        state = _controller_running(controller) if controller["running"] else (
            "stopped (the pool was deleted)" if document.get("deleted_at")
            else paint("down", "red") if controller["enabled"]
            else "disabled (pool changes on apply)")
        if busy:
            state += f", busy for {format_duration(time.time() - busy['since'])}: " \
                     f"{cell_text(busy['with'])}"
        if controller.get("endpoint"):
            state += f", serving {cell_text(controller['endpoint'])}"
        print(f"controller: {state}")
    if document.get("pueue"):
        say(pueue_line(document["pueue"]))
    if document.get("sync"):
        for line in sync_lines(document["sync"]):
            print(line)
    if document.get("deleting"):
        print(f"{paint('delete ' + document['deleting']['state'], 'yellow')} (since "
              f"{when(document['deleting']['since'])})")
    elif document.get("deleted_at"):
        print(f"{paint('deleted', 'yellow')} at {when(document['deleted_at'])}: its queue, "
              "logs and history are kept; `reconcile apply` brings it back")
    say(queue_line(QueueCounts(**document["queue"])))
    left = document.get("uncommitted_work") or {}
    if left.get("committed") or left.get("kept"):
        say(f"uncommitted work rescued: {left['committed']} attempt(s) committed to "
            f"their branch, {left['kept']} worktree(s) kept (worktrees.onDirty: keep)")
    budget = document.get("budget_per_day_usd")
    if budget is not None or document.get("spend_today_usd"):
        say(f"spent today: ${document.get('spend_today_usd', 0):.2f}"
            + (f" of budget.perDayUsd ${budget:.2f}" if budget is not None else ""))
    if document["claiming_paused_until"]:
        reason = document.get("claiming_paused_reason") or "the agent hit its rate limit"
        print(paint(f"claiming paused until {when(document['claiming_paused_until'])}",
                    "yellow") + f": {cell_text(reason)} (`reconcile resume` lifts it)")
    for problem in document["problems"]:
        print(f"{paint('problem:', 'red')} {printable(problem, multiline=True)}")


def sync_lines(sync: dict[str, Any]) -> list[str]:
    """``sync: origin/main:workers.yaml at 1a2b3c4d5e6f (fetched 12s ago); runs it
    (generation 3)``, and the last error, if any."""
    fetched = sync.get("fetched_commit")
    line = f"sync: {cell_text(sync['ref'])}:{cell_text(sync['path'] or '?')} "
    line += (f"at {fetched[:12]} (fetched {_ago(sync.get('fetched_at'))})" if fetched
             else "not fetched yet")
    running, generation = sync.get("running_commit"), sync.get("running_generation")
    if fetched and sync.get("synced_commit") == fetched \
            and sync.get("synced_generation") == generation:
        line += f"; runs it (generation {generation})"
    elif generation is not None:
        line += f"; runs generation {generation}" + (
            f" (commit {str(running)[:12]})" if running else "")
    lines = [line]
    if sync.get("error"):
        lines.append(f"{paint('sync error', 'red')} (since {_ago(sync.get('error_at'))}): "
                     f"{printable(sync['error'])}")
    return lines


def _ago(ts: float | None) -> str:
    return f"{format_duration(time.time() - ts)} ago" if ts else "never"


def pueue_line(pueue: dict[str, Any]) -> str:
    """``pueue 4.x: group agents running, parallel 4; ours 2 running, 3 queued; 1 added
    by hand (1 running)``, or that the daemon is down."""
    if not pueue["daemon_up"]:
        return f"pueue: daemon down (group {pueue['group']})"
    version = f" {pueue['version']}" if pueue.get("version") else ""
    if pueue["group_status"] is None:
        group = f"group {pueue['group']} missing"
    else:
        group = f"group {pueue['group']} {pueue['group_status']}, parallel {pueue['parallel']}"
    ours = pueue["ours"]
    line = f"pueue{version}: {group}; ours {ours['running']} running, {ours['queued']} queued"
    by_hand = pueue["added_by_hand"]
    if by_hand:
        states = Counter(t["state"] for t in by_hand)
        line += f"; {len(by_hand)} added by hand (" + ", ".join(
            f"{n} {state}" for state, n in sorted(states.items())) + ")"
        if pueue["supervise"] != "all":
            line += ", not supervised (pueue.supervise: ours)"
    return line


TITLE_WIDTH = 40  # status shows a title's start; -o json and `task show` have all of it
LIST_TITLE_WIDTH = 60  # `task list` too: one long title would push every row's branch out
ERROR_WIDTH = 60  # and its last error (all of each when piped: see term.fit)


def _task_cell(worker: dict[str, Any]) -> str:
    """``12 Fix the login bug`` (escaped, shortened) for a worker's current task."""
    if worker["current_task"] is None:
        return "-"
    title = worker.get("task_title")
    if not title:
        return str(worker["current_task"])
    return f"{worker['current_task']} {fit(cell_text(title), TITLE_WIDTH)}"


def _controller_running(controller: dict[str, Any]) -> str:
    """``running (pid 42, started by apply)``, or ``in the foreground`` for one an
    operator (or systemd) runs, which takes over from apply's."""
    details = [f"pid {controller['pid']}"] if controller.get("pid") else []
    if controller.get("detached") is not None:
        details.append("started by apply" if controller["detached"] else "in the foreground")
    return "running" + (f" ({', '.join(details)})" if details else "")


def queue_line(queue: QueueCounts) -> str:
    return (f"queue: {queue.queued} queued, {queue.running} running, "
            f"{queue.succeeded} succeeded, {queue.failed} failed, {queue.cancelled} cancelled")


def render_tasks(tasks: list[TaskRow], commits: Mapping[str, int | None] | None = None,
                 ) -> None:
    """``commits``: how many commits each branch has beyond the spec's baseRef (``-``:
    no branch, or git cannot tell)."""
    if not tasks:
        say("no tasks")
        return
    rows: list[list[str | tuple[str, str]]] = []
    for t in tasks:
        count = (commits or {}).get(t.branch) if t.branch else None
        rows.append([str(t.id), (t.status, _TASK_STYLE.get(t.status, "")), str(t.priority),
                     str(t.attempts), "-" if count is None else str(count),
                     fit(cell_text(t.title), LIST_TITLE_WIDTH), cell_text(t.branch or "-"),
                     fit(cell_text(t.last_error or ""), ERROR_WIDTH) or "-"])
    for line in columns(("id", "status", "prio", "tries", "commits", "title", "branch",
                         "last error"), rows, right=("id", "commits")):
        print(line)


PROMPT_SHOWN = 500  # characters of the prompt `task show` prints; --full: all of it


def render_task(task: TaskRow, attempts: list[AttemptRow], *, full: bool = False) -> None:
    print(f"{paint(f'task {task.id}', 'bold')}: {cell_text(task.title)}")
    tries = f"{task.attempts} tr{'y' if task.attempts == 1 else 'ies'} used"
    if len(attempts) != task.attempts:  # lost ones that were not the task's fault
        tries += f", {len(attempts)} attempt(s)"
    say(f"  status:   {task.status}  (priority {task.priority}, {tries})")
    say(f"  created:  {when(task.created_at)}")
    say(f"  branch:   {cell_text(task.branch or '-')}")
    if task.last_error:
        say(f"  error:    {cell_text(task.last_error)}")
    prompt = task.prompt if full or len(task.prompt) <= PROMPT_SHOWN else \
        task.prompt[:PROMPT_SHOWN]
    say("  prompt:")
    for line in prompt.splitlines() or [""]:
        say("    " + cell_text(line))
    if len(prompt) < len(task.prompt):
        say(f"    ... ({len(task.prompt) - len(prompt)} more characters; --full shows all)")
    for a in attempts:
        took = age(a.ended_at - a.started_at) if a.ended_at else \
            f"for {age(time.time() - a.started_at)}"
        say(f"  attempt {a.number} on {a.worker_id}: {a.status}"
            f"{f' ({describe_exit(a.exit_code)})' if a.exit_code is not None else ''}, {took}")
        if a.error and a.status != "succeeded":  # why it ended so: lost ones included
            say(f"    reason:   {cell_text(a.error)}")
        say(f"    worktree: {cell_text(a.worktree or '-')}")
        say(f"    log:      {cell_text(a.log_path or '-')}")
        if a.phases:
            say("    phases:   " + ", ".join(f"{name} {age(seconds)}"
                                            for name, seconds in a.phases.items()))
        if a.report is not None:
            say(f"    reported: {report_line(a.report)}")
        if a.rescued:
            say("    uncommitted work rescued: " + (
                "committed to the branch" if a.rescued == "committed"
                else "kept in the worktree (worktrees.onDirty: keep)"))
        if a.status not in ("succeeded", "running") and a.output_tail:
            tail = a.output_tail.rstrip().splitlines()[-5:]
            say("    output tail:")
            for line in tail:
                say("      " + cell_text(line))


def report_line(report: AgentReport) -> str:
    """``cost $0.07, 48,002 tokens in, 1,230 out, 4 turns, session 5f0c…`` (what is known)."""
    parts = ["an error" if report.is_error else "success"]
    if report.cost_usd is not None:
        parts.append(f"cost ${report.cost_usd:.4f}")
    if report.input_tokens is not None or report.output_tokens is not None:
        def count(n: int | None) -> str:
            return "?" if n is None else f"{n:,}"

        parts.append(f"{count(report.input_tokens)} tokens in, "
                     f"{count(report.output_tokens)} out")
    if report.turns is not None:
        parts.append(f"{report.turns} turns")
    if report.session_id:
        parts.append(f"session {cell_text(report.session_id)}")
    return ", ".join(parts)


def render_prune(document: dict[str, Any]) -> None:
    """What ``prune --empty-branches`` deleted (or would), kept, and could not delete."""
    verb = "would delete" if document["dry_run"] else "deleted"
    for branch in document["deleted"]:
        say(f"{verb} refs/heads/{cell_text(branch)}")
    for kept in document["kept"]:
        say(f"kept refs/heads/{cell_text(kept['branch'])}: {kept['reason']}", "dim")
    for failed in document["failed"]:
        print(f"{paint('not deleted', 'red')} refs/heads/{cell_text(failed['branch'])}: "
              f"{cell_text(failed['reason'])}")
    say(f"pool {cell_text(document['pool'])}: {verb} {len(document['deleted'])} empty "
        f"branch(es); kept {len(document['kept'])} empty, "
        f"{document['with_commits']} with commits untouched")


def render_prune_leftovers(document: dict[str, Any]) -> None:
    """What ``prune`` removed of what ended attempts left (or would), what it kept and
    why, and what it could not remove: one line per path or ref."""
    dry = document["dry_run"]
    verbs = {"branch": "would delete" if dry else "deleted",
             "worktree": "would remove" if dry else "removed",
             "log": "would remove" if dry else "removed"}

    def named(item: dict[str, Any]) -> str:
        name = cell_text(item["name"])
        return f"{item['kind']} refs/heads/{name}" if item["kind"] == "branch" \
            else f"{item['kind']} {name}"
    for item in document["removed"]:
        was = f" (was {item['commit'][:12]})" if item.get("commit") else ""
        say(f"{verbs[item['kind']]} {named(item)}{was}: {cell_text(item['reason'])}")
    for item in document["kept"]:
        say(f"kept {named(item)}: {cell_text(item['reason'])}", "dim")
    for item in document["failed"]:
        print(f"{paint('not removed', 'red')} {named(item)}: {cell_text(item['reason'])}")

    def count(items: list[dict[str, Any]], kind: str) -> int:
        return sum(item["kind"] == kind for item in items)
    removed, kept = document["removed"], document["kept"]
    say(f"pool {cell_text(document['pool'])}: {verbs['worktree']} "
        f"{count(removed, 'worktree')} worktree(s), {count(removed, 'log')} log(s), "
        f"{verbs['branch']} {count(removed, 'branch')} branch(es) (--branches "
        f"{document['branches']}); kept {count(kept, 'worktree')} worktree(s), "
        f"{count(kept, 'branch')} branch(es), {document['recent_logs']} log(s) of attempts "
        f"that ended less than {document['older_than']} ago or still run")
    if any(item.get("commit") for item in removed) and not dry:
        say("a deleted branch comes back with: git branch NAME COMMIT (the commit shown)",
            "dim")


def render_history(history: list[AppliedSpec]) -> None:
    if not history:
        say("nothing applied yet")
        return
    rows = [[str(h.id), when(h.applied_at), cell_text(h.source_path or "-"),
             cell_text(short_commit(h.git_commit)), h.document_hash[:12],
             cell_text(h.summary)] for h in history]
    for line in columns(("generation", "applied", "file", "git commit", "spec hash", "plan"),
                        rows, right=("generation",)):
        print(line)


def render_pools(rows: list[dict[str, Any]], state_dir: object) -> None:
    """``reconcile pools``: one line per pool of the state directory."""
    if not rows:
        say(f"no pools in {state_dir} (apply a spec: reconcile apply -f workers.yaml)")
        return
    table = []
    for row in rows:
        if "problem" in row:
            table.append([cell_text(row["pool"]), "-", "-", "-", "-", "-",
                          cell_text(row["problem"])])
            continue
        q = row["queue"]
        table.append([cell_text(row["pool"]), str(row["generation"] or "-"),
                      f"{row['workers_up']}/{row['workers_wanted']}", row["controller"],
                      f"{q['queued']} queued, {q['running']} running, {q['succeeded']} "
                      f"succeeded, {q['failed']} failed",
                      row["runtime"] or "-", cell_text(row["spec_file"] or "-")])
    for line in columns(("pool", "generation", "workers", "controller", "queue", "runtime",
                         "spec file"), table):
        print(line)


def short_commit(commit: str | None) -> str:
    """A commit shortened to 12 characters, keeping its ``+dirty`` mark (the spec file
    had changes not committed when it was applied)."""
    if not commit:
        return "-"
    sha, dirty, _ = commit.partition("+dirty")
    return sha[:12] + ("+dirty" if dirty else "")


def render_events(events: list[EventRow], *, empty_note: bool = True) -> None:
    for e in events:
        who = " ".join(x for x in (e.worker_id or "", f"task {e.task_id}" if e.task_id else "")
                       if x)
        mark = {"critical": "CRITICAL ", "warning": "WARNING "}.get(e.severity or "", "")
        line = f"{when(e.at)}  {cell_text(e.kind):<22} {cell_text(who):<16} "
        print(line + paint(mark, "red" if e.severity == "critical" else "yellow")
              + cell_text(e.message))
    if not events and empty_note:
        say("no events")


def render_report(document: dict[str, Any], *, markdown: bool = False) -> None:
    """``reconcile report`` as text, or as markdown (``-o markdown``) for a wiki or a PR."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def usd(value: float | None) -> str:
        return "-" if value is None else f"${value:.4f}"

    def heading(text: str) -> None:
        print(f"\n## {text}\n" if markdown else f"\n{paint(text, 'bold')}")

    def table(headers: tuple[str, ...], rows: list[list[str]]) -> None:
        if markdown:
            print("| " + " | ".join(headers) + " |")
            print("|" + " --- |" * len(headers))
            for row in rows:
                print("| " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
        else:
            for line in columns(headers, rows):
                print(line)

    t, a, c, sc = document["tasks"], document["attempts"], document["cost"], document["scaling"]
    title = (f"pool {document['pool']}: the last {age(document['until'] - document['since'])}"
             f" ({when(document['since'])} to {when(document['until'])})")
    print(f"# {cell_text(title)}" if markdown else paint(cell_text(title), "bold"))
    heading("Tasks")
    table(("what", "value"), [
        ["completed", str(t["completed"])], ["failed", str(t["failed"])],
        ["success rate", pct(t["success_rate"])],
        ["attempts per task", "-" if t["attempts_per_task"] is None
         else f"{t['attempts_per_task']:.2f}"],
        ["retried", pct(t["retry_rate"])], ["timeouts", pct(a["timeout_rate"])],
        ["rate limited", pct(a["rate_limit_rate"])],
        ["queued now", str(t["queued_now"])], ["running now", str(t["running_now"])],
        ["oldest queued", age(t.get("oldest_queued_seconds"))]])
    heading("Time")
    rows = []
    for name, key in (("run time", "run_time_seconds"), ("queue wait", "queue_wait_seconds")):
        s = document[key]
        rows.append([name, str(s["count"]), *(age(s[k]) for k in ("p50", "p90", "p99", "mean"))])
    table(("what", "n", "p50", "p90", "p99", "mean"), rows)
    heading("Cost")
    table(("what", "value"), [
        ["total", usd(c["total_usd"]) if c["reported_attempts"] else "- (no agent reported)"],
        ["per task", usd(c["per_task_usd"])],
        ["per completed task", usd(c["per_completed_task_usd"])],
        ["per hour", usd(c["per_hour_usd"])],
        ["tokens in / out", f"{c['input_tokens']:,} / {c['output_tokens']:,}"]])
    heading("Workers")
    table(("worker", "completed", "failed attempts", "efficiency", "up", "restarts"),
          [[w["worker"], str(w["completed"]), str(w["failed"]), pct(w["efficiency"]),
            format_duration(w["up_seconds"]), str(w["restarts"])]
           for w in document["workers"]] or [["-", "0", "0", "-", "-", "0"]])
    heading("Throughput")
    hourly = document["throughput_per_hour"]
    trend = f" ({document['trend']})" if document["trend"] else ""
    if len(hourly) > 48:  # a week's 168 numbers on one line read as noise: per day
        days = [sum(hourly[i:i + 24]) for i in range(0, len(hourly), 24)]
        print(f"tasks completed per day: {' '.join(str(n) for n in days)}{trend} "
              "(-o json has each hour)")
    else:
        print(f"tasks completed per hour: {' '.join(str(n) for n in hourly)}{trend}")
    if document.get("pueue"):
        p = document["pueue"]
        heading("pueue")
        now_held = ", ".join(f"{n} {what}" for what, n in p["hand_added_now"].items())
        table(("what", "value"), [
            ["daemon restarted", str(p["daemon_down"])],
            ["kills of our tasks past tasks.timeout", str(p["ours_killed_past_timeout"])],
            ["kills of tasks added by hand past tasks.timeout",
             str(p["hand_added_killed_past_timeout"])],
            ["tasks added by hand: restarted", str(p["hand_added_restarted"])],
            ["tasks added by hand now", now_held or "none"]])
    heading("Bottlenecks")
    for line in document["bottlenecks"] or ["none found"]:
        print(f"- {cell_text(line)}")
    heading("Scaling")
    if sc["recommended"] is None:
        print(sc["why"])
    else:
        print(f"workers: {sc['workers_now']} now; {sc['recommended']} recommended to keep "
              f"the queue wait under {age(sc['target_wait_seconds'])}"
              + (f" (capped by {sc['capped_by']}: {sc['needed']} would be needed)"
                 if sc["capped_by"] else ""))
        print(sc["arithmetic"])
    if document["tasks"]["queued_now"] + document["tasks"]["running_now"] == 0:
        print("the queue is empty")
    elif document["eta_seconds"] is not None:
        print(f"the current queue drains in about {age(document['eta_seconds'])}")
