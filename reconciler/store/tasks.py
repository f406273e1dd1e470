"""The task queue: tasks, attempts and their leases.

Every attempt carries a lease token (DESIGN rule 6): only its holder may
update or finish it, so a worker that was presumed dead cannot overwrite
the outcome of the attempt that replaced it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from reconciler.errors import StoreError, TaskError
from reconciler.exitstatus import describe_exit
from reconciler.model import (
    FINAL_TASK_STATUSES,
    AgentReport,
    AttemptRow,
    Claim,
    DueTask,
    QueueCounts,
    ReportAttempt,
    ReportTask,
    RetryPolicy,
    TaskRow,
)
from reconciler.retry import decide_outcome, requeue_policy
from reconciler.store.base import Database, jitter

MAX_PRIORITY = 1_000_000_000

# Queries run on every controller pass; named so tests can check their plans use an index.
# tasks per status, kept by triggers (reconciler.store.schema): five rows, whatever the history
QUEUE_COUNTS_SQL = "SELECT status, n FROM task_counts"
# an ended attempt whose worktree was kept for its uncommitted work reads as "kept"
LATEST_ATTEMPT_AT_SQL = ("SELECT CASE WHEN rescued = 'kept' AND status != 'running' THEN 'kept'"
                         " ELSE status END AS status FROM attempts WHERE worktree = ?"
                         " ORDER BY id DESC LIMIT 1")
TASK_STATUSES_SQL = ("SELECT id, status FROM tasks WHERE id IN"
                     " (SELECT value FROM json_each(?))")
# the next task to run: the head of ``tasks_by_claim_order`` (not ``tasks_by_status``)
CLAIM_SQL = ("SELECT * FROM tasks WHERE status = 'queued' AND not_before <= ?"
             " ORDER BY priority DESC, id LIMIT 1")
# when the next queued task comes due: the queued range of ``tasks_by_status``, so its cost
# follows the queue, never the finished history.  (An index on (status, not_before) would
# make it one seek, but the planner then takes it for CLAIM_SQL too, and sorts every
# runnable task on each claim: tests/test_store_scale.py checks both plans.)
NEXT_DUE_SQL = "SELECT MIN(not_before) AS due FROM tasks WHERE status = 'queued'"
# runtime: pueue -- the first due tasks in claim order, each with the number its next
# attempt will have (what ``claim_task_attempt`` checks): the tasks the controller hands on
DUE_TASKS_SQL = ("SELECT id, priority, 1 + (SELECT COUNT(*) FROM attempts"
                 " WHERE attempts.task_id = tasks.id) AS next_attempt FROM tasks"
                 " WHERE status = 'queued' AND not_before <= ? ORDER BY priority DESC, id"
                 " LIMIT ?")
# ``task list``: in id order (rowid, or ``tasks_by_status`` whose entries end with it)
TASKS_SQL = "SELECT * FROM tasks ORDER BY id LIMIT ?"
TASKS_OF_STATUS_SQL = "SELECT * FROM tasks WHERE status = ? ORDER BY id LIMIT ?"
OPEN_TASK_IDS_SQL = ("SELECT id FROM tasks WHERE status IN ('queued', 'running')"
                     " ORDER BY id")
STREAM_CHUNK = 500
# what ``reconcile export`` writes: the columns a spreadsheet wants (never a prompt, an
# output tail or a lease), from a time on
EXPORTS = {
    "tasks": "SELECT id, title, status, priority, attempts, created_at, updated_at, branch,"
             " last_error FROM tasks WHERE created_at >= ? ORDER BY id",
    "attempts": "SELECT id, task_id, number, worker_id, status, started_at, ended_at,"
                " ended_at - started_at AS run_seconds, exit_code, error, branch, rescued,"
                " cost_usd, input_tokens, output_tokens, turns, session_id FROM attempts"
                " WHERE started_at >= ? ORDER BY id",
    "events": "SELECT id, at, kind, severity, worker_id, task_id, message FROM events"
              " WHERE at >= ? ORDER BY id",
}
EXPORT_COLUMNS = {  # the names of each export's columns, in order (a test holds them equal)
    "tasks": ("id", "title", "status", "priority", "attempts", "created_at", "updated_at",
              "branch", "last_error"),
    "attempts": ("id", "task_id", "number", "worker_id", "status", "started_at", "ended_at",
                 "run_seconds", "exit_code", "error", "branch", "rescued", "cost_usd",
                 "input_tokens", "output_tokens", "turns", "session_id"),
    "events": ("id", "at", "kind", "severity", "worker_id", "task_id", "message"),
}
OLDEST_QUEUED_SQL = "SELECT MIN(created_at) AS at FROM tasks WHERE status = 'queued'"
COMPLETED_SINCE_SQL = ("SELECT ended_at FROM attempts WHERE ended_at >= ?"
                       " AND status = 'succeeded'")
MEAN_RUN_SINCE_SQL = ("SELECT AVG(ended_at - started_at) AS mean FROM attempts"
                      " WHERE ended_at >= ? AND status = 'succeeded'")
SPEND_SINCE_SQL = ("SELECT COALESCE(SUM(cost_usd), 0) AS spent FROM attempts"
                   " WHERE cost_usd IS NOT NULL AND ended_at >= ?")
# the few running attempts: through the narrow index (the planner, without statistics,
# may take the wide attempts_ended, which holds every ended attempt under its own status)
RUNNING_ATTEMPTS_SQL = ("SELECT * FROM attempts INDEXED BY attempts_by_status"
                        " WHERE status = 'running' ORDER BY id")
# ``reconcile report``: the attempts that ended in the window, one range of
# ``attempts_ended`` per status (every status the schema allows is listed, as a test
# checks, so this is ``ended_at >= ?`` alone, which has no index of its own), and only the
# columns the report uses
REPORT_ATTEMPTS_SQL = (
    "SELECT id, task_id, number, worker_id, status, started_at, ended_at, phases,"
    " report_is_error, cost_usd, input_tokens, output_tokens, turns, session_id FROM attempts"
    " WHERE status IN ('running', 'succeeded', 'failed', 'lost', 'timeout', 'cancelled',"
    " 'rate_limited') AND ended_at >= ? ORDER BY id")
# the tasks created in the window (``tasks_by_creation``), and those its attempts ran (by id)
REPORT_TASKS_SINCE_SQL = "SELECT id, status, created_at, attempts FROM tasks WHERE created_at >= ?"
REPORT_TASKS_OF_SQL = ("SELECT id, status, created_at, attempts FROM tasks WHERE id IN"
                       " (SELECT value FROM json_each(?))")
REPORT_RESTARTS_SQL = "SELECT worker_id, at FROM restarts WHERE at >= ?"


def _claiming_paused(db: sqlite3.Connection, now: float) -> bool:
    """Whether claiming is paused now (a rate limit, or the day's budget spent)."""
    paused = db.execute("SELECT value FROM meta WHERE key = 'paused_until'").fetchone()
    return paused is not None and float(paused["value"]) > now


def _tasks_query(status: str | None, limit: int | None,
                 since: float | None = None) -> tuple[str, tuple[object, ...]]:
    """``TASKS_SQL`` or ``TASKS_OF_STATUS_SQL`` (each walks an index in id order and stops
    at the limit; -1 is none) with its parameters; ``since``: only tasks that changed
    from then on (``task list --since``: the walk skips the others)."""
    limit = -1 if limit is None else limit
    if since is not None:
        sql = TASKS_OF_STATUS_SQL if status else TASKS_SQL
        sql = sql.replace(" ORDER BY", (" AND" if status else " WHERE") +
                          " updated_at >= ? ORDER BY")
        return sql, ((status, since, limit) if status else (since, limit))
    return (TASKS_OF_STATUS_SQL, (status, limit)) if status else (TASKS_SQL, (limit,))


def check_task_fields(title: str, prompt: str, priority: int) -> None:
    """Refuse what no command could receive: NUL bytes, priorities SQLite cannot hold."""
    if "\x00" in title or "\x00" in prompt:
        raise TaskError("task text must not contain NUL bytes")
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise TaskError(f"priority {priority} is out of range",
                        hint=f"use a number from -{MAX_PRIORITY} to {MAX_PRIORITY}")


class TaskQueue(Database):
    def add_tasks(self, tasks: Sequence[tuple[str, str, int]], now: float | None = None,
                  ) -> list[int]:
        """Enqueue ``(title, prompt, priority)`` tuples in one transaction; return their ids."""
        now = time.time() if now is None else now
        for title, prompt, priority in tasks:
            check_task_fields(title, prompt, priority)
        ids: list[int] = []
        with self.transaction() as db:
            for title, prompt, priority in tasks:
                cur = db.execute(
                    "INSERT INTO tasks (title, prompt, priority, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, 'queued', ?, ?)", (title, prompt, priority, now, now))
                ids.append(int(cur.lastrowid or 0))
                self._event(db, now, "task.queued", None, ids[-1], f"queued: {title}",
                            {"priority": priority})
        return ids

    def task(self, task_id: int) -> TaskRow:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskError(f"no task with id {task_id}", hint="see `reconcile task list`")
        return _task(rows[0])

    def tasks(self, status: str | None = None, *, limit: int | None = None,
              since: float | None = None) -> list[TaskRow]:
        """Tasks (of ``status`` only, if given; changed since ``since``, if given) by id,
        the first ``limit`` if given."""
        return [_task(r) for r in self._query(*_tasks_query(status, limit, since))]

    def iter_tasks(self, status: str | None = None, *,
                   limit: int | None = None, since: float | None = None) -> Iterator[TaskRow]:
        """``tasks`` streamed from the cursor, ``STREAM_CHUNK`` rows at a time: memory stays
        flat however many tasks there are (``task list -o json`` of 100,000)."""
        try:
            cursor = self._db.execute(*_tasks_query(status, limit, since))
            while rows := cursor.fetchmany(STREAM_CHUNK):
                yield from map(_task, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"reading the task store {self.path} failed: {exc}") from exc

    def export_rows(self, what: str, since: float = 0.0) -> Iterator[dict[str, Any]]:
        """``reconcile export``: the rows of ``what`` (``EXPORTS``) from ``since`` on, as
        plain dicts, streamed from the cursor (memory stays flat at any size)."""
        sql = EXPORTS[what]
        try:
            cursor = self._db.execute(sql, (since,))
            names = EXPORT_COLUMNS[what]
            while rows := cursor.fetchmany(STREAM_CHUNK):
                for row in rows:
                    yield dict(zip(names, row, strict=True))
        except sqlite3.Error as exc:
            raise StoreError(f"reading the task store {self.path} failed: {exc}") from exc

    def open_task_ids(self) -> list[int]:
        """The ids of the queued and running tasks, in order: two ranges of the
        ``tasks_by_status`` index, never the finished history."""
        return [int(r["id"]) for r in self._query(OPEN_TASK_IDS_SQL)]

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued task was created (a starved queue shows here,
        not in the waits of tasks that started)."""
        rows = self._query(OLDEST_QUEUED_SQL)
        return float(rows[0]["at"]) if rows and rows[0]["at"] is not None else None

    def completed_since(self, since: float) -> list[float]:
        """When each attempt that succeeded from ``since`` on ended (the dashboard's
        sparkline), read through the index of attempts by status and end."""
        return [float(r["ended_at"]) for r in self._query(COMPLETED_SINCE_SQL, (since,))]

    def mean_run_time_since(self, since: float) -> float | None:
        """The mean run time of the attempts that succeeded from ``since`` on."""
        rows = self._query(MEAN_RUN_SINCE_SQL, (since,))
        return float(rows[0]["mean"]) if rows and rows[0]["mean"] is not None else None

    def report_rows(self, since: float) -> tuple[list[ReportAttempt], dict[int, ReportTask],
                                                 list[tuple[str, float]]]:
        """What ``reconcile report`` reads: the attempts that ended from ``since`` on (by
        id), the tasks they name or created since then (by id), and the restarts since
        then; each through an index, reading only the columns the report uses."""
        attempts = [ReportAttempt(r["id"], r["task_id"], r["number"], r["worker_id"],
                                  r["status"], r["started_at"], r["ended_at"],
                                  json.loads(r["phases"]) if r["phases"] else {}, _report(r))
                    for r in self._query(REPORT_ATTEMPTS_SQL, (since,))]
        rows = self._query(REPORT_TASKS_SINCE_SQL, (since,))
        found = {int(r["id"]): _report_task(r) for r in rows}
        named = sorted({a.task_id for a in attempts}.difference(found))
        if named:  # run in the window, created before it
            rows = self._query(REPORT_TASKS_OF_SQL, (json.dumps(named),))
            found.update((int(r["id"]), _report_task(r)) for r in rows)
        restarts = [(str(r["worker_id"]), float(r["at"])) for r in self._query(
            REPORT_RESTARTS_SQL, (since,))]
        return attempts, dict(sorted(found.items())), restarts

    def attempts(self, task_id: int | None = None) -> list[AttemptRow]:
        if task_id is None:
            rows = self._query("SELECT * FROM attempts ORDER BY id")
        else:
            rows = self._query("SELECT * FROM attempts WHERE task_id = ? ORDER BY number",
                               (task_id,))
        return [_attempt(r) for r in rows]

    def task_titles(self, task_ids: Collection[int]) -> dict[int, str]:
        """The titles of ``task_ids`` (unknown ids left out): one primary-key lookup each,
        reading no prompt."""
        found: dict[int, str] = {}
        for task_id in dict.fromkeys(task_ids):
            rows = self._query("SELECT title FROM tasks WHERE id = ?", (task_id,))
            if rows:
                found[task_id] = str(rows[0]["title"])
        return found

    def attempt_branches(self) -> dict[str, bool]:
        """Every branch an attempt recorded, and whether an attempt on it is running."""
        rows = self._query("SELECT branch, MAX(status = 'running') AS running FROM attempts"
                           " WHERE branch IS NOT NULL GROUP BY branch")
        return {str(r["branch"]): bool(r["running"]) for r in rows}

    def queue_counts(self) -> QueueCounts:
        """Tasks per status, from the ``task_counts`` table the schema's triggers keep:
        one row per status read, so a pass costs the same with 100,000 tasks as with none
        (a GROUP BY, even over an index, reads every task)."""
        counts = {r["status"]: r["n"] for r in self._query(QUEUE_COUNTS_SQL)}
        return QueueCounts(**counts)

    def retry_task(self, task_id: int, now: float | None = None) -> None:
        """Queue a failed or cancelled task again, with a fresh attempt budget."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskError(f"no task with id {task_id}", hint="see `reconcile task list`")
            if row["status"] not in ("failed", "cancelled"):
                raise TaskError(f"task {task_id} is {row['status']}; only failed or cancelled "
                                "tasks can be retried")
            db.execute("UPDATE tasks SET status = 'queued', attempts = 0, not_before = 0,"
                       " cancel_requested = 0, updated_at = ? WHERE id = ?", (now, task_id))
            self._event(db, now, "task.retried", None, task_id, "queued again by operator")

    def cancel_task(self, task_id: int, now: float | None = None) -> str:
        """Cancel a queued task at once, or ask the worker running it to stop it.

        Returns the resulting status (``cancelled``, or ``running`` while the
        worker stops it); a finished task is left alone and reported as an error.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskError(f"no task with id {task_id}", hint="see `reconcile task list`")
            status = row["status"]
            if status in FINAL_TASK_STATUSES:
                raise TaskError(f"task {task_id} is already {status}; nothing to cancel")
            if status == "queued":
                db.execute("UPDATE tasks SET status = 'cancelled', updated_at = ?,"
                           " last_error = 'cancelled by operator' WHERE id = ?", (now, task_id))
                self._event(db, now, "task.cancelled", None, task_id, "cancelled while queued")
                return "cancelled"
            db.execute("UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                       (now, task_id))
            self._event(db, now, "task.cancel_requested", None, task_id,
                        "cancel requested while running")
            return "running"

    # ------------------------------------------------------------------ attempts and leases

    def claim_task(self, worker_id: str, lease_seconds: float,
                   now: float | None = None) -> Claim | None:
        """Atomically take the highest-priority, oldest runnable task, if any."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            if _claiming_paused(db, now):
                return None  # rate limited: nobody claims until the limit resets
            row = db.execute(CLAIM_SQL, (now,)).fetchone()
            if row is None:
                return None
            return self._claim(db, row, worker_id, lease_seconds, now)

    def claim_task_attempt(self, task_id: int, number: int, worker_id: str,
                           lease_seconds: float, now: float | None = None) -> Claim | str:
        """Take attempt ``number`` of task ``task_id`` (what ``reconcile run-task`` does for
        the attempt pueue started), if it is that task's next attempt and the task is
        queued and due; else why not, in a few words."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return f"there is no task {task_id}"
            if row["status"] != "queued":
                return f"task {task_id} is {row['status']}, not queued"
            if _claiming_paused(db, now):
                return "claiming is paused (a rate limit or the day's budget)"
            if float(row["not_before"]) > now:
                return f"task {task_id} is not due yet (a retry's backoff)"
            done = db.execute("SELECT COUNT(*) FROM attempts WHERE task_id = ?",
                              (task_id,)).fetchone()[0]
            if done + 1 != number:
                return f"attempt {number} of task {task_id} is not its next (that is {done + 1})"
            return self._claim(db, row, worker_id, lease_seconds, now)

    def _claim(self, db: sqlite3.Connection, row: sqlite3.Row, worker_id: str,
               lease_seconds: float, now: float) -> Claim:
        """Start the next attempt of task ``row`` for ``worker_id``, inside ``db``'s
        transaction."""
        # ``attempts`` counts the budget used; ``number`` names this run (worktree, log)
        number = 1 + db.execute("SELECT COUNT(*) FROM attempts WHERE task_id = ?",
                                (row["id"],)).fetchone()[0]
        token = secrets.token_hex(16)
        db.execute("UPDATE tasks SET status = 'running', attempts = attempts + 1,"
                   " updated_at = ? WHERE id = ?", (now, row["id"]))
        cur = db.execute(
            "INSERT INTO attempts (task_id, number, worker_id, lease_token, lease_expires_at,"
            " status, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
            (row["id"], number, worker_id, token, now + lease_seconds, now))
        db.execute("UPDATE workers SET state = 'working', current_task = ? WHERE id = ?",
                   (row["id"], worker_id))
        self._event(db, now, "attempt.started", worker_id, row["id"],
                    f"attempt {number} started",
                    {"attempt": number, "status": "running", "task_status": "running"})
        task = _task(db.execute("SELECT * FROM tasks WHERE id = ?", (row["id"],)).fetchone())
        return Claim(task, int(cur.lastrowid or 0), number, token)

    def update_attempt(self, claim: Claim, *, branch: str, worktree: str, log_path: str) -> bool:
        """Record where an attempt runs, if ``claim`` still holds its lease."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE attempts SET branch = ?, worktree = ?, log_path = ? WHERE id = ?"
                " AND lease_token = ? AND status = 'running'",
                (branch, worktree, log_path, claim.attempt_id, claim.lease_token))
            if cur.rowcount:
                db.execute("UPDATE tasks SET branch = ? WHERE id = ?", (branch, claim.task.id))
            return cur.rowcount == 1

    def heartbeat(self, worker_id: str, claim: Claim | None, lease_seconds: float,
                  now: float | None = None,
                  last_output_at: float | None = None) -> tuple[bool, bool]:
        """Record a heartbeat and extend the held lease.

        Returns ``(drain_requested, cancel_requested)`` so the worker learns in
        the same round trip whether to stop after this task or abandon it.  A
        ``claim`` whose lease was taken away (its attempt requeued as ``lost``,
        or a token that never held it) extends nothing and reports
        ``cancel_requested``: its result would be rejected, and the task may
        already run elsewhere.  A beat that races the holder's own
        ``finish_attempt`` extends nothing and asks for nothing.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now, worker_id))
            cancel = False
            if claim is not None:
                cur = db.execute("UPDATE attempts SET lease_expires_at = ?,"
                                 " last_output_at = COALESCE(?, last_output_at) WHERE id = ?"
                                 " AND lease_token = ? AND status = 'running'",
                                 (now + lease_seconds, last_output_at, claim.attempt_id,
                                  claim.lease_token))
                row = db.execute("SELECT cancel_requested FROM tasks WHERE id = ?",
                                 (claim.task.id,)).fetchone()
                cancel = bool(row and row["cancel_requested"])
                if cur.rowcount != 1:
                    cancel = _lease_taken_away(db, claim)
            row = db.execute("SELECT drain_requested FROM workers WHERE id = ?",
                             (worker_id,)).fetchone()
        return bool(row and row["drain_requested"]), cancel

    def finish_attempt(self, claim: Claim, status: str, *, exit_code: int | None = None,
                       error: str | None = None, output_tail: str | None = None,
                       policy: RetryPolicy | None = None, resume_at: float | None = None,
                       now: float | None = None,
                       report: AgentReport | None = None) -> str | None:
        """End an attempt if ``claim`` still holds its lease; return the task's new status.

        Returns ``None`` when the lease was lost (the attempt was already ended
        by someone else): the caller's result is rejected, never recorded.
        Outcomes in ``policy.retry_on`` are retried while attempts remain; a
        ``rate_limited`` attempt uses none and pauses claiming until ``resume_at``.
        """
        policy = policy or RetryPolicy()
        now = time.time() if now is None else now
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE attempts SET status = ?, ended_at = ?, exit_code = ?, error = ?,"
                " output_tail = ?, report_is_error = ?, cost_usd = ?, input_tokens = ?,"
                " output_tokens = ?, turns = ?, session_id = ?"
                " WHERE id = ? AND lease_token = ? AND status = 'running'"
                " AND stop_signalled_at IS NULL",
                (status, now, exit_code, error, output_tail,
                 *(_report_columns(report)), claim.attempt_id, claim.lease_token))
            if cur.rowcount != 1:
                return None
            if status == "rate_limited":
                task_status = self._pause_for_rate_limit(db, claim.task.id, error,
                                                         resume_at or now, now)
            else:
                task_status = self._settle_task(db, claim.task.id, status, error, policy, now,
                                                exit_code)
            worker_id = _worker_of(db, claim.attempt_id)
            db.execute("UPDATE workers SET current_task = NULL,"
                       " state = CASE WHEN state = 'working' THEN 'idle' ELSE state END"
                       " WHERE id = ?", (worker_id,))
            self._event(db, now, f"attempt.{status}", worker_id, claim.task.id,
                        f"attempt {claim.attempt_number} {status}"
                        + (f" ({describe_exit(exit_code)})" if exit_code is not None else "")
                        + f"; task {task_status}",
                        {"attempt": claim.attempt_number, "status": status,
                         "task_status": task_status, "exit_code": exit_code})
        return task_status

    def _pause_for_rate_limit(self, db: sqlite3.Connection, task_id: int, error: str | None,
                              resume_at: float, now: float) -> str:
        """Give the attempt back, requeue the task for ``resume_at`` and stop all claiming
        until then, instead of burning every task's retries against the limit."""
        db.execute("UPDATE tasks SET status = 'queued', attempts = MAX(attempts - 1, 0),"
                   " not_before = ?, last_error = ?, updated_at = ? WHERE id = ?",
                   (resume_at, error, now, task_id))
        if _set_pause(db, resume_at, "the agent hit its rate limit", "rate_limit"):
            self._event(db, now, "pool.paused", None, task_id,
                        f"rate limited: claiming paused for {max(resume_at - now, 0):.0f}s")
        return "queued"

    def next_claim_at(self, now: float | None = None) -> float | None:
        """When a task that cannot be claimed now becomes claimable (a retry's backoff or
        a rate-limit pause ending), so an idle worker can sleep until then; None when
        nothing queued is waiting for a time."""
        now = time.time() if now is None else now
        rows = self._query(NEXT_DUE_SQL)
        due = rows[0]["due"] if rows else None
        if due is None:
            return None
        due = max(float(due), self.paused_until())
        return due if due > now else None

    def due_tasks(self, limit: int, now: float | None = None) -> list[DueTask]:
        """The first ``limit`` queued tasks that are due, in the order workers claim them,
        with the number of each one's next attempt (runtime: pueue)."""
        now = time.time() if now is None else now
        return [DueTask(int(r["id"]), int(r["priority"]), int(r["next_attempt"]))
                for r in self._query(DUE_TASKS_SQL, (now, limit))]

    def pueue_restarts(self) -> dict[tuple[int, float], int]:
        """How often the controller restarted each task added to the pueue group by hand."""
        return {(int(r["pueue_id"]), float(r["created_at"])): int(r["restarts"])
                for r in self._query("SELECT pueue_id, created_at, restarts"
                                     " FROM pueue_restarts")}

    def count_pueue_restart(self, pueue_id: int, created_at: float, message: str,
                            now: float | None = None) -> None:
        """Record that the controller restarted pueue task ``pueue_id`` (added by hand)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("INSERT INTO pueue_restarts (pueue_id, created_at, restarts, last_at)"
                       " VALUES (?, ?, 1, ?) ON CONFLICT (pueue_id, created_at) DO UPDATE"
                       " SET restarts = restarts + 1, last_at = excluded.last_at",
                       (pueue_id, created_at, now))
            self._event(db, now, "pueue.restarted", None, None, message,
                        {"pueue_id": pueue_id})

    def paused_until(self) -> float:
        """Until when workers must not claim (a rate limit, the day's budget); 0 when they
        may."""
        rows = self._query("SELECT value FROM meta WHERE key = 'paused_until'")
        return float(rows[0]["value"]) if rows else 0.0

    def paused_reason(self) -> str | None:
        """Why claiming is paused, as the pause said it; None without a reason."""
        rows = self._query("SELECT value FROM meta WHERE key = 'paused_reason'")
        return str(rows[0]["value"]) if rows else None

    def spend_since(self, since: float) -> float:
        """What the attempts that ended from ``since`` on reported they cost, in USD (an
        index of the attempts with a cost keeps it cheap over any history)."""
        rows = self._query(SPEND_SINCE_SQL, (since,))
        return float(rows[0]["spent"])

    def pause_claiming(self, until: float, reason: str, *, kind: str = "pool.paused",
                       now: float | None = None) -> bool:
        """Stop every claim until ``until`` (a pause already as long stays), saying why;
        the event ``kind`` only when the pause changed (every worker finishing over the
        budget would repeat it).  True if it changed."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            changed = _set_pause(db, until, reason,
                                 "budget" if kind == "pool.over_budget" else "other")
            if changed:
                self._event(db, now, kind, None, None, f"claiming paused: {reason}")
        return changed

    def resume_claiming(self, *, hold_until: float | None = None,
                        now: float | None = None) -> float:
        """Lift a pause now (``reconcile resume``); return until when it would have held
        (0: there was none).  ``hold_until``: when the pause lifted was the day's budget,
        it is not set again before then (a rate limit's lift holds nothing)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'paused_until'").fetchone()
            was = float(row["value"]) if row is not None else 0.0
            kind = db.execute("SELECT value FROM meta WHERE key = 'paused_kind'").fetchone()
            db.execute("DELETE FROM meta WHERE key IN ('paused_until', 'paused_reason',"
                       " 'paused_kind')")
            budget = was > now and kind is not None and kind["value"] == "budget"
            if hold_until is not None and budget:  # only a lifted budget pause holds
                db.execute("INSERT INTO meta (key, value) VALUES ('resumed_until', ?)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           (hold_until,))
            if was > now:
                self._event(db, now, "pool.resumed", None, None,
                            "claiming resumed by an operator")
        return was if was > now else 0.0

    def resumed_until(self) -> float:
        """Until when an operator's ``resume`` holds against a new budget pause."""
        rows = self._query("SELECT value FROM meta WHERE key = 'resumed_until'")
        return float(rows[0]["value"]) if rows else 0.0

    def _settle_task(self, db: sqlite3.Connection, task_id: int, status: str,
                     error: str | None, policy: RetryPolicy, now: float,
                     exit_code: int | None = None) -> str:
        """Apply ``retry.decide_outcome`` to an ended attempt's task: the decision is pure,
        this only reads its inputs and writes its result inside the caller's transaction."""
        row = db.execute("SELECT attempts, cancel_requested FROM tasks WHERE id = ?",
                         (task_id,)).fetchone()
        outcome = decide_outcome(policy, status, exit_code, int(row["attempts"]),
                                 bool(row["cancel_requested"]), now, jitter())
        db.execute("UPDATE tasks SET status = ?, not_before = ?, last_error = ?, updated_at = ?,"
                   " cancel_requested = 0 WHERE id = ?",
                   (outcome.status, outcome.not_before,
                    error if status != "succeeded" else None, now, task_id))
        return outcome.status

    def requeue_attempts_of(self, worker_id: str, reason: str, *, consume: bool,
                            policy: RetryPolicy | None = None, now: float | None = None,
                            only: Collection[int] | None = None) -> list[int]:
        """End a gone worker's running attempts as ``lost`` and settle their tasks.

        ``consume``: whether the lost attempt uses up one of ``max_attempts``
        (a crash does, so a poison task cannot kill workers forever; an
        operator's stop or a roll does not).  ``only``: just these attempts
        (the ones whose processes were seen gone), never one claimed since.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            rows = [r for r in db.execute(
                "SELECT id, task_id, number FROM attempts WHERE worker_id = ?"
                " AND status = 'running'", (worker_id,)).fetchall()
                if only is None or r["id"] in only]
            effective = requeue_policy(policy or RetryPolicy(), consume)
            for row in rows:
                db.execute("UPDATE attempts SET status = 'lost', ended_at = ?, error = ?"
                           " WHERE id = ?", (now, reason, row["id"]))
                if not consume:  # the attempt is given back to the task's budget
                    db.execute("UPDATE tasks SET attempts = MAX(attempts - 1, 0) WHERE id = ?",
                               (row["task_id"],))
                settled = self._settle_task(db, row["task_id"], "lost", reason, effective, now)
                self._event(db, now, "attempt.lost", worker_id, row["task_id"],
                            f"{reason}; task {settled}",
                            {"attempt": int(row["number"]), "status": "lost",
                             "task_status": settled, "consumed": consume})
            db.execute("UPDATE workers SET current_task = NULL WHERE id = ?", (worker_id,))
        return [int(r["task_id"]) for r in rows]

    def attempt_worktrees(self, paths: Collection[str] | None = None) -> dict[str, str]:
        """The status of the latest attempt that recorded each of ``paths`` as its worktree.

        Paths no attempt recorded are left out.  Each path is an index lookup
        (``attempts_by_worktree``), so the cost follows the worktrees on disk,
        not the attempt history.  ``None`` (the old call) reads every path ever
        recorded; callers should pass the paths they found instead.
        """
        if paths is None:
            rows = self._query("SELECT worktree, status FROM attempts WHERE worktree IS NOT NULL"
                               " ORDER BY id")
            return {str(r["worktree"]): str(r["status"]) for r in rows}
        found: dict[str, str] = {}
        for path in dict.fromkeys(paths):
            rows = self._query(LATEST_ATTEMPT_AT_SQL, (path,))
            if rows:
                found[path] = str(rows[0]["status"])
        return found

    def running_attempts(self, worker_id: str | None = None) -> list[AttemptRow]:
        """Attempts in progress (of ``worker_id`` only, if given)."""
        if worker_id is None:
            return [_attempt(r) for r in self._query(RUNNING_ATTEMPTS_SQL)]
        return [_attempt(r) for r in self._query(
            "SELECT * FROM attempts WHERE worker_id = ? AND status = 'running'", (worker_id,))]

    def task_statuses(self, task_ids: Sequence[int]) -> dict[int, str]:
        """The status of each of ``task_ids`` (ids that do not exist are left out), in one
        query whatever their number (the ids travel as one JSON array)."""
        rows = self._query(TASK_STATUSES_SQL, (json.dumps([int(i) for i in task_ids]),))
        return {int(r["id"]): str(r["status"]) for r in rows}

    def rescued_counts(self) -> dict[str, int]:
        """How many attempts left uncommitted work, by what became of it (a partial
        index: the cost follows those attempts, not the whole history)."""
        rows = self._query("SELECT rescued, COUNT(*) AS n FROM attempts"
                           " WHERE rescued IS NOT NULL GROUP BY rescued")
        return {str(r["rescued"]): int(r["n"]) for r in rows}

    def set_attempt_phases(self, claim: Claim, phases: Mapping[str, float]) -> bool:
        """Record how long each phase of an attempt took (seconds), fenced by the lease."""
        with self.transaction() as db:
            cur = db.execute("UPDATE attempts SET phases = ? WHERE id = ? AND lease_token = ?"
                             " AND status = 'running'",
                             (json.dumps({k: round(v, 3) for k, v in phases.items()}),
                              claim.attempt_id, claim.lease_token))
            return cur.rowcount == 1

    def set_attempt_rescued(self, claim: Claim, how: str) -> bool:
        """Record what became of the uncommitted work an attempt left: ``committed`` to its
        branch, or ``kept`` in its worktree (which then stays).  Fenced by the lease."""
        with self.transaction() as db:
            cur = db.execute("UPDATE attempts SET rescued = ? WHERE id = ? AND lease_token = ?"
                             " AND status = 'running'", (how, claim.attempt_id,
                                                         claim.lease_token))
            return cur.rowcount == 1

    def mark_attempts_signalled(self, attempt_ids: Collection[int],
                                now: float | None = None) -> None:
        """Record that the processes of running attempts were sent SIGTERM (the first
        time only), so a later pass knows when ``stopGrace`` is over.  It is also a
        fence: the worker of such an attempt can no longer record its result."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            for attempt_id in attempt_ids:
                cur = db.execute("UPDATE attempts SET stop_signalled_at = ? WHERE id = ?"
                                 " AND status = 'running' AND stop_signalled_at IS NULL",
                                 (now, attempt_id))
                if cur.rowcount != 1:
                    continue
                row = db.execute("SELECT task_id, number, worker_id FROM attempts"
                                 " WHERE id = ?", (attempt_id,)).fetchone()
                self._event(db, now, "attempt.stopping", row["worker_id"], row["task_id"],
                            f"attempt {row['number']}: its processes were sent SIGTERM "
                            "(SIGKILL once stopGrace is over); requeued once they are gone",
                            {"attempt": int(row["number"]), "signal": "SIGTERM"})

    def set_attempt_pid(self, claim: Claim, pid: int, create_time: float | None) -> bool:
        """Record the task command's pid (its process group) and start time, so it can
        be killed later without hitting a recycled pid.

        Returns False, changing nothing, when ``claim`` no longer holds its lease.
        """
        with self.transaction() as db:
            cur = db.execute("UPDATE attempts SET pid = ?, pid_create_time = ? WHERE id = ?"
                             " AND lease_token = ? AND status = 'running'",
                             (pid, create_time, claim.attempt_id, claim.lease_token))
            return cur.rowcount == 1


def _lease_taken_away(db: sqlite3.Connection, claim: Claim) -> bool:
    """Whether ``claim``'s attempt was ended by someone else (requeued as ``lost``) or
    never belonged to its token, rather than finished by the holder itself."""
    row = db.execute("SELECT status FROM attempts WHERE id = ? AND lease_token = ?",
                     (claim.attempt_id, claim.lease_token)).fetchone()
    return row is None or row["status"] == "lost"


def _worker_of(db: sqlite3.Connection, attempt_id: int) -> str | None:
    row = db.execute("SELECT worker_id FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
    return str(row["worker_id"]) if row else None


def _task(r: sqlite3.Row) -> TaskRow:
    return TaskRow(r["id"], r["title"], r["prompt"], r["priority"], r["status"], r["created_at"],
                   r["updated_at"], r["attempts"], bool(r["cancel_requested"]), r["not_before"],
                   r["last_error"], r["branch"])


def _report_task(r: sqlite3.Row) -> ReportTask:
    return ReportTask(r["id"], r["status"], r["created_at"], r["attempts"])


def _attempt(r: sqlite3.Row) -> AttemptRow:
    return AttemptRow(r["id"], r["task_id"], r["number"], r["worker_id"], r["status"],
                      r["started_at"], r["ended_at"], r["exit_code"], r["branch"], r["worktree"],
                      r["log_path"], r["error"], r["output_tail"], r["lease_expires_at"],
                      r["pid"], r["last_output_at"], r["pid_create_time"],
                      r["stop_signalled_at"], r["rescued"],
                      json.loads(r["phases"]) if r["phases"] else {}, _report(r))


def _report(r: sqlite3.Row) -> AgentReport | None:
    if r["report_is_error"] is None:
        return None
    return AgentReport(bool(r["report_is_error"]), r["cost_usd"], r["input_tokens"],
                       r["output_tokens"], r["turns"], r["session_id"])


def _report_columns(report: AgentReport | None) -> tuple[object, ...]:
    if report is None:
        return (None,) * 6
    return (int(report.is_error), report.cost_usd, report.input_tokens, report.output_tokens,
            report.turns, report.session_id)


def _set_pause(db: sqlite3.Connection, until: float, reason: str, kind: str) -> bool:
    """Pause claiming until ``until`` for ``kind`` (``budget`` or ``rate_limit``); a pause
    that already lasts as long keeps its end, reason and kind.  True if it changed."""
    row = db.execute("SELECT value FROM meta WHERE key = 'paused_until'").fetchone()
    if row is not None and float(row["value"]) >= until:
        return False
    for key, value in (("paused_until", str(until)), ("paused_reason", reason),
                       ("paused_kind", kind)):
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                   " DO UPDATE SET value = excluded.value", (key, value))
    return True
