"""``reconcile``: parse arguments, call one operation, render, return an exit code.

Exit codes: 0 success (``diff``: in sync), 2 changes pending (``diff`` only),
1 any error, which is printed as one line: what, where, how to fix.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from reconciler import __version__
from reconciler.errors import PreflightError, ReconcilerError
from reconciler.log import warnings_to_stderr
from reconciler.paths import check_state_dir, default_state_dir
from reconciler.pruneplan import BRANCH_POLICIES, DEFAULT_OLDER_THAN
from reconciler.report.documents import printable

EPILOG = """\
exit codes: 0 success (diff: in sync), 2 diff found changes pending (run-task: the
attempt was not its to run), 3 status found a failed worker or a controller that is
down, 1 error.
state: --state-dir, else $RECONCILER_STATE_DIR, else $XDG_STATE_HOME/reconciler
(~/.local/state/reconciler).  Pool commands take -f workers.yaml or --pool NAME;
with exactly one pool in the state directory it is the default.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {_with_suggestion(message)} (see `{self.prog} --help`)\n")


HIDDEN_COMMANDS = ("worker",)  # started by the executor, never by hand
_INVALID_CHOICE = re.compile(r"(.*)invalid choice: '(.*)' \(choose from (.*)\)", re.DOTALL)


def _with_suggestion(message: str) -> str:
    """argparse's "invalid choice" with the closest choice offered (``did you mean
    `status`?``), and the hidden commands left out of the choices it lists."""
    match = _INVALID_CHOICE.fullmatch(message)
    if match is None:
        return message
    import difflib

    before, given, listed = match.groups()
    choices = [c for c in re.findall(r"'([^']*)'", listed) if c not in HIDDEN_COMMANDS]
    close = difflib.get_close_matches(given, choices, n=1)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"{before}invalid choice: {given!r}{hint} (choose from {', '.join(choices)})"


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


SQLITE_MAX_INT = 2**63 - 1  # task ids and priorities are SQLite INTEGERs


def _task_id(text: str) -> int:
    """An argparse type: a task id, a whole number that fits SQLite's 64-bit integers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a task id (a whole number), got {text!r}"
                                         ) from None
    if not 1 <= value <= SQLITE_MAX_INT:
        raise argparse.ArgumentTypeError(
            f"task id {text} is out of range: ids run from 1 to {SQLITE_MAX_INT}")
    return value


_EVENT_KIND = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_WORKER_ID = re.compile(r"w-[1-9][0-9]{0,5}")


def _event_kind(text: str) -> str:
    """An argparse type: the start of an event kind (``attempt``, ``worker.health``)."""
    if not _EVENT_KIND.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected the start of an event kind (lowercase letters, digits, '.' or '_', "
            f"e.g. attempt or worker.health), got {text!r}")
    return text


def _worker_id(text: str) -> str:
    """An argparse type: a worker id, ``w-N``."""
    if not _WORKER_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a worker id like w-2, got {text!r}")
    return text


def _priority(text: str) -> int:
    """An argparse type: a task priority, a whole number that fits 64 bits."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not -SQLITE_MAX_INT <= value <= SQLITE_MAX_INT:
        raise argparse.ArgumentTypeError(
            f"priority {text} is out of range: use {-SQLITE_MAX_INT} to {SQLITE_MAX_INT}")
    return value


def _state_dir(text: str) -> Path:
    """An argparse type: a state directory that can be one (see ``check_state_dir``)."""
    try:
        return check_state_dir(Path(text))
    except ReconcilerError as exc:
        raise argparse.ArgumentTypeError(exc.one_line()) from None


def _pool_options(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument("-f", "--file", metavar="WORKERS_YAML", help="the pool spec file")
    p.add_argument("--pool", metavar="NAME", help="a pool by name (instead of -f)")
    if output:
        p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                       help="output format (json for scripts)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reconcile", description=(
        "Keep a pool of workers (AI coding agents or any command) alive and draining a task "
        "queue, each task in its own git worktree. Describe the pool in workers.yaml; `diff` "
        "shows what would change, `apply` makes it so."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"reconcile {__version__}")
    parser.add_argument("--state-dir", type=_state_dir, default=None,
                        help="state directory (default: see below)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("validate", help="check a spec against the schema",
                       description="Validate workers.yaml; every problem is printed as "
                       "file:line:col: path: what (how to fix). Exit 1 if invalid.")
    p.add_argument("-f", "--file", required=True, metavar="WORKERS_YAML",
                   help="the pool spec file")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="output format (json for scripts)")

    p = sub.add_parser("diff", help="show what apply would change (changes nothing)",
                       description="Observe the host and print the plan: + start, - stop, "
                       "~ restart, each with its reason. Exit 0 in sync, 2 changes pending, "
                       "1 error.")
    p.add_argument("-f", "--file", required=True, metavar="WORKERS_YAML",
                   help="the pool spec file")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="output format (json for scripts)")

    p = sub.add_parser("apply", help="converge the pool to the spec",
                       description="Execute the same plan diff shows: start missing workers, "
                       "restart dead ones, roll changed ones and stop surplus ones after their "
                       "current task. One apply per pool runs at a time.")
    p.add_argument("-f", "--file", required=True, metavar="WORKERS_YAML",
                   help="the pool spec file")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="output format (json for scripts)")
    p.add_argument("--wait", action="store_true",
                   help="wait until every worker heartbeats, showing progress")
    p.add_argument("--timeout", default="60s", help="limit for --wait (default 60s)")
    p.add_argument("--lock-timeout", default="10s",
                   help="how long to wait for another apply to finish (default 10s)")
    p.add_argument("--force", action="store_true",
                   help="apply even if the agent, a setup step or a hook cannot be found "
                   "on this host, worktrees.dir is inside the repository unignored, or "
                   "tmux.socket is a server reconciler did not start")

    p = sub.add_parser("delete", help="stop the pool's workers; keep queue and history "
                       "(--purge: drop them too)",
                       description="Stop the controller and every worker after its current "
                       "task (or at once with --force, requeueing its task). The queue, logs "
                       "and history stay (their paths are printed) for `apply` to bring the "
                       "pool back; --purge removes them too, once every worker has stopped, "
                       "so the pool is gone and its spec starts fresh. Task branches stay "
                       "either way (they hold the agents' work); purge refuses while the "
                       "pool still has worktrees: `reconcile prune` first.")
    _pool_options(p, output=False)
    p.add_argument("--force", action="store_true", help="kill workers now; requeue their tasks")
    p.add_argument("--purge", action="store_true",
                   help="also remove the pool's store (queue, attempts, history, events), "
                   "logs and prompts; branches stay")
    p.add_argument("--lock-timeout", default="10s",
                   help="how long to wait for another apply or delete (default 10s)")

    p = sub.add_parser("status", help="workers and queue counts")
    _pool_options(p)
    p.add_argument("--watch", action="store_true",
                   help="print it again every --interval until Ctrl-C (a lighter dashboard)")
    p.add_argument("--interval", default="2s", metavar="DURATION",
                   help="how often --watch prints (default 2s)")
    p = sub.add_parser("dashboard", help="a full-screen live view of the pool (q quits)",
                       description="Workers (health, task, how long it runs, time since its "
                       "last output, heartbeat, restarts, CPU and memory of its process "
                       "tree), the queue, tasks completed over the last hour, the time to "
                       "drain the queue, today's spend, the controller and the latest "
                       "events, refreshed every second. Needs a terminal; works over ssh "
                       "and inside tmux.")
    _pool_options(p, output=False)
    p.add_argument("--interval", default="1s", metavar="DURATION",
                   help="how often it refreshes (default 1s)")

    p = sub.add_parser("logs", help="a task's log, a worker's or the controller's",
                       description="Print the log of a task (its latest attempt, or "
                       "--attempt N), of a worker (w-N) or of the controller; -f follows it, "
                       "and for a task ends when its attempt ends.")
    p.add_argument("target", metavar="TASK|w-N|controller",
                   help="a task id, a worker id, or controller")
    p.add_argument("-f", "--follow", action="store_true",
                   help="print what is added until the attempt ends (Ctrl-C for a worker)")
    p.add_argument("--tail", type=_positive_int, metavar="N", help="only the last N lines")
    p.add_argument("--attempt", type=_positive_int, metavar="N",
                   help="a task's attempt N (default: its latest)")
    p.add_argument("--pool", metavar="NAME", help="a pool by name")
    p.add_argument("--spec", dest="file", metavar="WORKERS_YAML",
                   help="the pool spec file (-f here means --follow)")

    p = sub.add_parser("pools", help="every pool in the state directory, one line each",
                       description="Every pool of the state directory: its spec file, "
                       "generation, workers up of wanted, controller and queue, read from "
                       "each pool's store.")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="output format (json for scripts)")

    p = sub.add_parser("history", help="which specs were applied when")
    _pool_options(p)
    p = sub.add_parser("events", help="the pool's event log (health transitions, restarts...)")
    _pool_options(p)
    p.add_argument("--limit", type=_positive_int, default=50,
                   help="show the last N events (default 50)")
    p.add_argument("--follow", action="store_true", help="keep printing new events (Ctrl-C ends)")
    p.add_argument("--kind", type=_event_kind, metavar="KIND",
                   help="only events whose kind starts with KIND (e.g. attempt, worker.health)")
    p.add_argument("--worker", type=_worker_id, metavar="WORKER",
                   help="only events of this worker, e.g. w-2")
    p.add_argument("--task", type=_task_id, metavar="ID", help="only events of this task")
    p.add_argument("--severity", choices=("warning", "critical"),
                   help="only alerts: warning (warning and critical) or critical")

    p = sub.add_parser("backup", help="copy the pool's store to a file, safely while it runs",
                       description="Write a consistent copy of the pool's task store "
                       "(tasks, attempts, history, events) to DEST with SQLite's online "
                       "backup API, while workers and the controller keep running. DEST is "
                       "created with mode 0600; an existing file is refused unless --force, "
                       "and so is any path inside the pool's own state directory. To "
                       "restore, see the README (`reconcile delete` the pool, put the copy in "
                       "place of store.db, remove store.db-wal and store.db-shm, apply).")
    p.add_argument("dest", type=Path, metavar="DEST", help="the file to write")
    _pool_options(p)
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")

    p = sub.add_parser("prune", help="remove what ended attempts left: worktrees, "
                       "branches, old logs",
                       description="Remove what ended attempts of the pool left behind: "
                       "their worktrees (never one of a running attempt or of a queued or "
                       "running task; one holding uncommitted work only with "
                       "--dirty-worktrees, which commits that work to its branch first; a "
                       "worker's own perWorker worktree only once the pool is deleted), the "
                       "branches of tasks that ended failed or cancelled (--branches), and "
                       "the logs of attempts that ended more than --older-than ago. Only "
                       "what the pool's attempts recorded and its naming fits is touched. "
                       "It asks nothing: every path and ref removed is printed, and every "
                       "one kept with the reason (--dry-run: what would be removed); a "
                       "deleted branch with the commit it pointed at, which `git branch NAME "
                       "COMMIT` brings back. Exit 1 if something could not be removed "
                       "(listed). With --empty-branches it "
                       "only deletes the task branches that have no commit beyond baseRef. "
                       "Works on a deleted pool too.")
    _pool_options(p)
    p.add_argument("--empty-branches", action="store_true",
                   help="only delete task branches with no commits beyond baseRef")
    p.add_argument("--dry-run", action="store_true",
                   help="only print what would be removed")
    p.add_argument("--branches", choices=BRANCH_POLICIES, default=None,
                   help="whose branches go: unsucceeded (default) those of failed and "
                   "cancelled tasks, all those of succeeded tasks too, none no branch")
    p.add_argument("--older-than", metavar="DURATION", default=None,
                   help=f"remove the logs of attempts that ended at least this long ago "
                   f"(default {DEFAULT_OLDER_THAN}, a week)")
    p.add_argument("--dirty-worktrees", action="store_true",
                   help="also remove worktrees holding uncommitted work (kept by "
                   "worktrees.onDirty: keep), committing that work to their branch first")

    p = sub.add_parser("controller", help="run the pool's controller in the foreground",
                       description="Keep the pool converged: observe, plan and act on every "
                       "change and at least every controller.interval. With -f, apply that "
                       "file first. One controller runs per pool; `apply` starts one in the "
                       "background unless spec.controller.enabled is false; a controller "
                       "run here takes over from that one (it is asked to stop, and exits "
                       "after its pass), but never from another foreground one (exit 1). "
                       "For systemd, see examples/reconciler-controller.service. With --sync "
                       "(or a spec.sync section), it also follows a git ref: it fetches the "
                       "ref from the spec file's repository every --sync-interval and applies "
                       "the spec committed there when it differs from what runs.")
    _pool_options(p, output=False)
    p.add_argument("--detached", action="store_true",
                   help="what apply passes to the controller it starts in the background: "
                   "it yields to a foreground controller and exits quietly when one runs")
    p.add_argument("--sync", action="store_true",
                   help="follow a git ref (GitOps) even if the spec has no sync section; "
                   "default ref origin/main, every 1m")
    p.add_argument("--sync-ref", metavar="REMOTE/BRANCH",
                   help="the ref to follow, e.g. origin/main (implies --sync; overrides "
                   "spec.sync.ref)")
    p.add_argument("--sync-path", metavar="PATH",
                   help="the spec file in that commit, relative to the repository's root "
                   "(implies --sync; default: the applied spec file's own path)")
    p.add_argument("--sync-interval", metavar="DURATION",
                   help="how often to fetch, e.g. 30s (implies --sync; default "
                   "spec.sync.interval, else 1m)")

    p = sub.add_parser("restart", help="restart a worker and give it a fresh restart budget",
                       description="Clear a worker's restart count (e.g. one that is `failed` "
                       "after too many restarts) and have it restarted on the next pass.")
    p.add_argument("worker", metavar="WORKER", help="worker id, e.g. w-2")
    _pool_options(p, output=False)

    p = sub.add_parser("report", help="how productive the pool was, and what would help",
                       description="Tasks completed and failed, success and retry rates, "
                       "run time and queue wait (p50/p90/p99, mean), cost and tokens, each "
                       "worker's efficiency, throughput per hour and its trend, bottlenecks "
                       "with their evidence, and how many workers keep the queue wait under "
                       "a target (an M/M/c estimate, its arithmetic shown).")
    _pool_options(p, output=False)
    p.add_argument("-o", "--output", choices=("text", "json", "markdown"), default="text",
                   help="output format")
    p.add_argument("--since", default="24h", metavar="DURATION",
                   help="the window: the last DURATION (default 24h)")
    p.add_argument("--target-wait", default="5m", metavar="DURATION",
                   help="the queue wait the scaling advice aims under (default 5m)")
    p.add_argument("--html", metavar="FILE",
                   help="also write the report as one self-contained HTML page with charts "
                   "(worker timeline, throughput, run times, cost) to FILE, under 1 MB; "
                   "standard output is unchanged. Needs matplotlib: "
                   "pip install 'reconciler[html]'")

    p = sub.add_parser("export", help="tasks, attempts or events as CSV or JSON lines",
                       description="Write the pool's tasks, attempts (with run time, cost "
                       "and tokens) or events to standard output, for spreadsheets and "
                       "other tools: CSV with a header row, or one JSON object per line. "
                       "Streamed: any number of rows in flat memory. Prompts and agent "
                       "output are never exported.")
    _pool_options(p, output=False)
    p.add_argument("--what", choices=("tasks", "attempts", "events"), required=True,
                   help="which rows")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                   help="csv (default) or jsonl")
    p.add_argument("--since", metavar="DURATION",
                   help="only rows from the last DURATION (tasks by creation, attempts by "
                   "start, events by time); default: all")

    p = sub.add_parser("metrics", help="print the pool's Prometheus metrics once",
                       description="Print the metrics the controller serves at /metrics "
                       "(spec.metrics.listen), read from the store, in Prometheus's text "
                       "format: tasks by status, attempts by outcome, run time and queue "
                       "wait histograms, workers by health, restarts, cost, tokens. The "
                       "controller's pass durations live in its memory: only its endpoint "
                       "serves them. For a textfile collector or a quick look; read-only.")
    _pool_options(p, output=False)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="text: the exposition; json: each family with its samples")
    p.add_argument("--openmetrics", action="store_true",
                   help="the OpenMetrics text format instead of Prometheus's")

    p = sub.add_parser("resume", help="lift a pause of claiming (rate limit, day's budget)",
                       description="Let workers claim tasks again now, where the pool paused "
                       "because its agent hit a rate limit or the day's budget "
                       "(budget.perDayUsd) was spent; after a budget pause, the budget is "
                       "not enforced again before midnight.")
    _pool_options(p)

    p = sub.add_parser("scale", help="set replicas in the spec file and apply it",
                       description="Rewrite `replicas` in workers.yaml (keeping its comments "
                       "and layout), then apply, so the file stays the source of truth.")
    p.add_argument("replicas", type=int, metavar="N", help="how many workers to keep")
    p.add_argument("-f", "--file", required=True, metavar="WORKERS_YAML",
                   help="the pool spec file (its replicas line is rewritten)")
    p.add_argument("--wait", action="store_true", help="wait until the pool has converged")
    p.add_argument("--timeout", default="60s", help="limit for --wait (default 60s)")

    _task_parsers(sub)

    p = sub.add_parser("demo", help="run the demo pool end to end in a throwaway repository",
                       description="Create a throwaway git repository, apply the demo spec, "
                       "enqueue sample tasks for the simulated agent, show progress until the "
                       "queue drains, and print a summary. Uses its own state directory and "
                       "tmux socket, never yours.")
    p.add_argument("-f", "--file", default=None, metavar="WORKERS_YAML",
                   help="the demo's spec (default: the one shipped in the package, "
                   "a copy of specs/workers.yaml)")
    p.add_argument("--tasks", type=int, default=12, help="how many sample tasks (default 12)")
    p.add_argument("--dir", type=Path, default=None,
                   help="where to put the throwaway repo and state (default: a new temp dir)")
    p.add_argument("--teardown", action="store_true",
                   help="delete the pool at the end instead of leaving it up to look around")
    p.add_argument("--no-kill", dest="kill_one", action="store_false",
                   help="do not SIGKILL a busy worker part-way (shown by default: the "
                   "controller replaces it and its task is requeued)")

    p = sub.add_parser("run-task", help="run one attempt of a task in the foreground",
                       description="Run attempt N of a queued task now, in this process, as "
                       "a worker would: its worktree and branch, setup, worker.command, "
                       "hooks, heartbeats, and its recorded result (retried later by the "
                       "spec's policy). It runs only if N is the task's next attempt and "
                       "the task is queued and due. This is what the pueue runtime hands to "
                       "pueue for each task. Exit 0: the attempt succeeded; 1: it did not; "
                       "2: the attempt was not this command's to run.")
    p.add_argument("--pool", required=True, metavar="NAME", help="the pool, by name")
    p.add_argument("--task", required=True, type=_task_id, metavar="ID", help="the task")
    p.add_argument("--attempt", required=True, type=_positive_int, metavar="N",
                   help="which attempt (the task's next one)")

    # internal: how the executor starts a worker process; hidden from --help
    p = sub.add_parser("worker")
    p.add_argument("--pool", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--spec-id", type=int, required=True)
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "worker"]
    _state_dir_everywhere(parser)
    return parser


def _state_dir_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--state-dir`` after the subcommand too (``reconcile status --state-dir D``), as
    kubectl takes its global flags anywhere; given in neither place, the default."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            if "--state-dir" not in sub._option_string_actions:
                sub.add_argument("--state-dir", type=_state_dir, default=argparse.SUPPRESS,
                                 help="state directory (also before the command)")
            _state_dir_everywhere(sub)


def _task_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    task = sub.add_parser("task", help="add, import, list, show, cancel and wait for tasks")
    tsub = task.add_subparsers(dest="task_command", metavar="TASK_COMMAND",
                               parser_class=_Parser)
    p = tsub.add_parser("add", help="enqueue one task and print its id")
    _pool_options(p)
    p.add_argument("--title", required=True, help="a short name for the task (its branch "
                   "is named after it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="the prompt text (default: the title)")
    group.add_argument("--prompt-file", type=Path,
                       help="read the prompt from a UTF-8 file, its bytes exactly (CR and "
                       "CRLF kept); - reads it from stdin")
    p.add_argument("--priority", type=_priority, default=0, help="higher runs first (default 0)")

    p = tsub.add_parser("import", help="enqueue every task of a YAML list")
    p.add_argument("tasks_file", type=Path, metavar="TASKS_YAML",
                   help="a YAML list of {title, prompt, priority}")
    p.add_argument("--allow-outside", action="store_true",
                   help="let promptFile name files outside the task file's directory")
    _pool_options(p)

    p = tsub.add_parser("list", help="list tasks (a page of 50; -o json: all of them)")
    _pool_options(p)
    p.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"),
                   help="only tasks in this state")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--limit", type=_positive_int, metavar="N",
                       help="show the first N tasks (default: 50 as text, all with -o json)")
    group.add_argument("--all", action="store_true", help="show every task")
    p.add_argument("--since", metavar="DURATION",
                   help="only tasks that changed in the last DURATION (e.g. 2h)")

    p = tsub.add_parser("show", help="one task: its prompt and every attempt, with why "
                        "each ended")
    p.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id")
    p.add_argument("--full", action="store_true",
                   help="the whole prompt (else its first 500 characters)")
    _pool_options(p)

    p = tsub.add_parser("retry", help="queue failed or cancelled tasks again",
                        description="Queue tasks again with a fresh attempt budget: the ids "
                        "given, or with --failed every failed task (asked to confirm unless "
                        "--yes). Prints what each became.")
    p.add_argument("task_ids", type=_task_id, nargs="*", metavar="ID", help="the tasks' ids")
    p.add_argument("--failed", action="store_true", help="every failed task")
    p.add_argument("--yes", action="store_true", help="do not ask to confirm --failed")
    _pool_options(p)

    p = tsub.add_parser("cancel", help="cancel queued tasks, or stop running ones",
                        description="Cancel the tasks given (a running one is stopped by its "
                        "worker within a heartbeat), or with --queued every queued task "
                        "(asked to confirm unless --yes). Prints what each became.")
    p.add_argument("task_ids", type=_task_id, nargs="*", metavar="ID", help="the tasks' ids")
    p.add_argument("--queued", action="store_true", help="every queued task")
    p.add_argument("--yes", action="store_true", help="do not ask to confirm --queued")
    _pool_options(p)

    p = tsub.add_parser("wait", help="show progress until tasks finish")
    p.add_argument("task_ids", type=_task_id, nargs="*", metavar="ID",
                   help="tasks to wait for (default: every unfinished task)")
    _pool_options(p)
    p.add_argument("--timeout", default=None, help="give up after this long (exit 1)")


def _run_worker(args: argparse.Namespace) -> int:
    """``reconcile worker``, without the rest of the CLI: a worker process loads only
    what it runs (no rich, jsonschema, planner...: issue 9, lean processes)."""
    from reconciler import worker
    from reconciler.errors import PoolError
    from reconciler.paths import pool_paths

    paths = pool_paths(args.state_dir, args.pool)
    if not paths.exists():
        raise PoolError(f"pool {args.pool!r} has no store in {args.state_dir}")
    return worker.main(paths, args.id, args.spec_id)


def _run_task(args: argparse.Namespace) -> int:
    """``reconcile run-task``, without the rest of the CLI (pueue starts one per task)."""
    from reconciler.errors import PoolError
    from reconciler.log import log_to
    from reconciler.paths import pool_paths
    from reconciler.runtask import run_task

    paths = pool_paths(args.state_dir, args.pool)
    if not paths.exists():
        raise PoolError(f"pool {args.pool!r} has no store in {args.state_dir}",
                        hint="apply its spec first: reconcile apply -f workers.yaml")
    log_to(sys.stderr, "{time} run-task {level} {message}", level="INFO", replace=True)
    return run_task(paths, args.task, args.attempt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # point to the help of the command that was given them
        command = " ".join(c for c in (getattr(args, "command", None),
                                       getattr(args, "task_command", None)) if c)
        parser.exit(1, f"error: unrecognized arguments: {' '.join(unknown)} (see "
                       f"`reconcile {command + ' ' if command else ''}--help`)\n")
    if args.command is None:
        parser.print_help()
        return 1
    if args.command == "task" and args.task_command is None:
        parser.parse_args(["task", "--help"])
    if args.state_dir is None:
        args.state_dir = default_state_dir()
    # Library warnings (e.g. a store write waiting out a full disk) as short lines;
    # the controller and workers set up their own logs.
    warnings_to_stderr()
    try:
        if args.command == "worker":
            return _run_worker(args)
        if args.command == "run-task":
            return _run_task(args)
        from reconciler import commands

        code = commands.dispatch(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except ReconcilerError as exc:
        # made visible: an error may quote git's or tmux's output, or a task's text;
        # preflight names every problem it found, one line each
        lines = exc.problems if isinstance(exc, PreflightError) else (exc.one_line(),)
        for line in lines:
            print(f"error: {printable(line)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `reconcile status | head`: the reader has all it wanted
        # stdout is dead: point it at /dev/null so the interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
