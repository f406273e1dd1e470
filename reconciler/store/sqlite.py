"""The embedded SQLite store of one pool: tasks, attempts, workers, specs, events.

Rules (DESIGN.md rule 5 and 6): WAL journal, a ``busy_timeout`` so concurrent
workers wait instead of failing, ``BEGIN IMMEDIATE`` for every read-then-write,
and every attempt carries a lease token that fences the writes finishing it.
The file and its ``-wal``/``-shm`` companions are 0600.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.errors import StoreError, TaskError
from reconciler.model import (
    FINAL_TASK_STATUSES,
    AppliedSpec,
    AttemptRow,
    Claim,
    EventRow,
    QueueCounts,
    TaskRow,
    WorkerRow,
    worker_sort_key,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 15_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied_specs (
    id INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL,
    source_path TEXT,
    source_sha256 TEXT NOT NULL,
    git_commit TEXT,
    document_hash TEXT NOT NULL,
    document TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    prompt TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    branch TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_claim_order ON tasks (status, priority DESC, id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    number INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    lease_token TEXT NOT NULL,
    lease_expires_at REAL NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'lost', 'timeout', 'cancelled')),
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    branch TEXT,
    worktree TEXT,
    log_path TEXT,
    error TEXT,
    output_tail TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (task_id, number);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    runtime TEXT NOT NULL,
    pid INTEGER,
    pid_create_time REAL,
    spec_id INTEGER REFERENCES applied_specs (id),
    template_hash TEXT,
    template_digests TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'starting',
    current_task INTEGER,
    started_at REAL,
    heartbeat_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    drain_requested INTEGER NOT NULL DEFAULT 0,
    exited_at REAL,
    exit_code INTEGER,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    worker_id TEXT,
    task_id INTEGER,
    message TEXT NOT NULL
);
"""


def _create_private(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if it does not exist yet.

    An existing file is never opened here: closing any descriptor of a
    database drops every POSIX lock this process holds on it, which would let
    another process delete the WAL under a live connection.  SQLite gives the
    ``-wal`` and ``-shm`` files the database file's permissions.
    """
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Store:
    """One pool's store.  Each thread or process opens its own ``Store``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            _create_private(path)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the task store {path}: {exc}",
                             hint="check the state directory's permissions and free space") from exc
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock before reading."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"task store {self.path} is busy or unreadable: {exc}") from exc
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the task store {self.path} failed: {exc}") from exc

    # ------------------------------------------------------------------ tasks

    def add_tasks(self, tasks: Sequence[tuple[str, str, int]], now: float | None = None,
                  ) -> list[int]:
        """Enqueue ``(title, prompt, priority)`` tuples in one transaction; return their ids."""
        now = time.time() if now is None else now
        ids: list[int] = []
        with self.transaction() as db:
            for title, prompt, priority in tasks:
                cur = db.execute(
                    "INSERT INTO tasks (title, prompt, priority, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, 'queued', ?, ?)", (title, prompt, priority, now, now))
                ids.append(int(cur.lastrowid or 0))
                db.execute("INSERT INTO events (at, kind, task_id, message) VALUES (?,?,?,?)",
                           (now, "task.queued", cur.lastrowid, f"queued: {title}"))
        return ids

    def task(self, task_id: int) -> TaskRow:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskError(f"no task with id {task_id}", hint="see `reconcile task list`")
        return _task(rows[0])

    def tasks(self, status: str | None = None) -> list[TaskRow]:
        if status:
            return [_task(r) for r in self._query(
                "SELECT * FROM tasks WHERE status = ? ORDER BY id", (status,))]
        return [_task(r) for r in self._query("SELECT * FROM tasks ORDER BY id")]

    def attempts(self, task_id: int | None = None) -> list[AttemptRow]:
        if task_id is None:
            rows = self._query("SELECT * FROM attempts ORDER BY id")
        else:
            rows = self._query("SELECT * FROM attempts WHERE task_id = ? ORDER BY number",
                               (task_id,))
        return [_attempt(r) for r in rows]

    def queue_counts(self) -> QueueCounts:
        counts = {r["status"]: r["n"] for r in self._query(
            "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")}
        return QueueCounts(**counts)

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
            row = db.execute(
                "SELECT * FROM tasks WHERE status = 'queued' AND not_before <= ?"
                " ORDER BY priority DESC, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            number = int(row["attempts"]) + 1
            token = secrets.token_hex(16)
            db.execute("UPDATE tasks SET status = 'running', attempts = ?, updated_at = ?"
                       " WHERE id = ?", (number, now, row["id"]))
            cur = db.execute(
                "INSERT INTO attempts (task_id, number, worker_id, lease_token, lease_expires_at,"
                " status, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (row["id"], number, worker_id, token, now + lease_seconds, now))
            db.execute("UPDATE workers SET state = 'working', current_task = ? WHERE id = ?",
                       (row["id"], worker_id))
            self._event(db, now, "attempt.started", worker_id, row["id"],
                        f"attempt {number} started")
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
                  now: float | None = None) -> tuple[bool, bool]:
        """Record a heartbeat and extend the held lease.

        Returns ``(drain_requested, cancel_requested)`` so the worker learns in
        the same round trip whether to stop after this task or abandon it.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now, worker_id))
            cancel = False
            if claim is not None:
                db.execute("UPDATE attempts SET lease_expires_at = ? WHERE id = ?"
                           " AND lease_token = ? AND status = 'running'",
                           (now + lease_seconds, claim.attempt_id, claim.lease_token))
                row = db.execute("SELECT cancel_requested FROM tasks WHERE id = ?",
                                 (claim.task.id,)).fetchone()
                cancel = bool(row and row["cancel_requested"])
            row = db.execute("SELECT drain_requested FROM workers WHERE id = ?",
                             (worker_id,)).fetchone()
        return bool(row and row["drain_requested"]), cancel

    def finish_attempt(self, claim: Claim, status: str, *, exit_code: int | None = None,
                       error: str | None = None, output_tail: str | None = None,
                       max_attempts: int = 1, retry_backoff: float = 0.0,
                       now: float | None = None) -> str | None:
        """End an attempt if ``claim`` still holds its lease; return the task's new status.

        Returns ``None`` when the lease was lost (the attempt was already ended
        by someone else): the caller's result is rejected, never recorded.
        ``failed`` and ``timeout`` attempts are retried while attempts remain.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE attempts SET status = ?, ended_at = ?, exit_code = ?, error = ?,"
                " output_tail = ? WHERE id = ? AND lease_token = ? AND status = 'running'",
                (status, now, exit_code, error, output_tail, claim.attempt_id, claim.lease_token))
            if cur.rowcount != 1:
                return None
            task_status = self._settle_task(db, claim.task.id, claim.attempt_number, status,
                                            error, max_attempts, retry_backoff, now)
            worker_id = _worker_of(db, claim.attempt_id)
            db.execute("UPDATE workers SET current_task = NULL,"
                       " state = CASE WHEN state = 'working' THEN 'idle' ELSE state END"
                       " WHERE id = ?", (worker_id,))
            self._event(db, now, f"attempt.{status}", worker_id, claim.task.id,
                        f"attempt {claim.attempt_number} {status}"
                        + (f" (exit {exit_code})" if exit_code is not None else "")
                        + f"; task {task_status}")
        return task_status

    def _settle_task(self, db: sqlite3.Connection, task_id: int, number: int, status: str,
                     error: str | None, max_attempts: int, retry_backoff: float,
                     now: float) -> str:
        if status == "succeeded":
            new, not_before = "succeeded", 0.0
        elif status == "cancelled":
            new, not_before = "cancelled", 0.0
        elif number < max_attempts:
            new = "queued"
            not_before = now + retry_backoff * (2 ** (number - 1)) * (0.8 + 0.4 * _jitter())
        else:
            new, not_before = "failed", 0.0
        db.execute("UPDATE tasks SET status = ?, not_before = ?, last_error = ?, updated_at = ?,"
                   " cancel_requested = 0 WHERE id = ?",
                   (new, not_before, error if status != "succeeded" else None, now, task_id))
        return new

    def requeue_attempts_of(self, worker_id: str, reason: str,
                            now: float | None = None) -> list[int]:
        """End a gone worker's running attempts as ``lost`` and requeue their tasks."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            rows = db.execute("SELECT id, task_id FROM attempts WHERE worker_id = ?"
                              " AND status = 'running'", (worker_id,)).fetchall()
            for row in rows:
                db.execute("UPDATE attempts SET status = 'lost', ended_at = ?, error = ?"
                           " WHERE id = ?", (now, reason, row["id"]))
                db.execute("UPDATE tasks SET status = CASE WHEN cancel_requested = 1"
                           " THEN 'cancelled' ELSE 'queued' END, updated_at = ?, last_error = ?"
                           " WHERE id = ? AND status = 'running'", (now, reason, row["task_id"]))
                self._event(db, now, "attempt.lost", worker_id, row["task_id"], reason)
            db.execute("UPDATE workers SET current_task = NULL WHERE id = ?", (worker_id,))
        return [int(r["task_id"]) for r in rows]

    # ------------------------------------------------------------------ workers

    def register_worker(self, worker_id: str, *, runtime: str, pid: int | None,
                        pid_create_time: float | None, spec_id: int, template_hash: str,
                        template_digests: dict[str, str], restarted: bool,
                        now: float | None = None) -> None:
        """Record that the executor started ``worker_id`` (a fresh or replacement process)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO workers (id, runtime, pid, pid_create_time, spec_id, template_hash,"
                " template_digests, state, started_at, heartbeat_at, restarts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'starting', ?, NULL, 0)"
                " ON CONFLICT (id) DO UPDATE SET runtime = excluded.runtime, pid = excluded.pid,"
                " pid_create_time = excluded.pid_create_time, spec_id = excluded.spec_id,"
                " template_hash = excluded.template_hash,"
                " template_digests = excluded.template_digests, state = 'starting',"
                " current_task = NULL, started_at = excluded.started_at, heartbeat_at = NULL,"
                " drain_requested = 0, exited_at = NULL, exit_code = NULL, removed = 0,"
                " restarts = restarts + ?",
                (worker_id, runtime, pid, pid_create_time, spec_id, template_hash,
                 json.dumps(template_digests, sort_keys=True), now, 1 if restarted else 0))
            self._event(db, now, "worker.restarted" if restarted else "worker.started",
                        worker_id, None, f"{runtime} pid {pid}")

    def set_worker_state(self, worker_id: str, state: str, *, pid: int | None = None,
                         now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            if pid is not None:
                db.execute("UPDATE workers SET state = ?, pid = ?, heartbeat_at = ? WHERE id = ?",
                           (state, pid, now, worker_id))
            else:
                db.execute("UPDATE workers SET state = ?, heartbeat_at = ? WHERE id = ?",
                           (state, now, worker_id))

    def request_drain(self, worker_id: str, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET drain_requested = 1 WHERE id = ?", (worker_id,))
            self._event(db, now, "worker.draining", worker_id, None, reason)

    def mark_worker_exited(self, worker_id: str, exit_code: int | None,
                           now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET state = 'exited', exited_at = ?, exit_code = ?,"
                       " current_task = NULL WHERE id = ?", (now, exit_code, worker_id))
            self._event(db, now, "worker.exited", worker_id, None,
                        f"exited ({'exit ' + str(exit_code) if exit_code is not None else '?'})")

    def mark_worker_removed(self, worker_id: str, reason: str,
                            now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET removed = 1, state = 'stopped', current_task = NULL,"
                       " pid = NULL WHERE id = ?", (worker_id,))
            self._event(db, now, "worker.stopped", worker_id, None, reason)

    def workers(self, include_removed: bool = False) -> list[WorkerRow]:
        rows = [_worker(r) for r in self._query(
            "SELECT * FROM workers WHERE removed = 0 OR ?", (int(include_removed),))]
        return sorted(rows, key=lambda w: worker_sort_key(w.id))

    # ------------------------------------------------------------------ specs and events

    def record_applied_spec(self, *, source_path: str | None, source_sha256: str,
                            git_commit: str | None, document_hash: str, document: str,
                            summary: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO applied_specs (applied_at, source_path, source_sha256, git_commit,"
                " document_hash, document, summary) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, source_path, source_sha256, git_commit, document_hash, document, summary))
            self._event(db, now, "spec.applied", None, None, summary)
            return int(cur.lastrowid or 0)

    def latest_spec_id(self, document_hash: str) -> int | None:
        rows = self._query("SELECT id FROM applied_specs WHERE document_hash = ?"
                           " ORDER BY id DESC LIMIT 1", (document_hash,))
        return int(rows[0]["id"]) if rows else None

    def spec_document(self, spec_id: int) -> dict[str, Any]:
        rows = self._query("SELECT document FROM applied_specs WHERE id = ?", (spec_id,))
        if not rows:
            raise StoreError(f"applied spec #{spec_id} is missing from {self.path}")
        document: dict[str, Any] = json.loads(rows[0]["document"])
        return document

    def history(self) -> list[AppliedSpec]:
        return [AppliedSpec(r["id"], r["applied_at"], r["source_path"], r["source_sha256"],
                            r["git_commit"], r["document_hash"], r["summary"])
                for r in self._query("SELECT * FROM applied_specs ORDER BY id")]

    def add_event(self, kind: str, message: str, *, worker_id: str | None = None,
                  task_id: int | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            self._event(db, now, kind, worker_id, task_id, message)

    def events(self, after_id: int = 0, last: int | None = None) -> list[EventRow]:
        """Events after ``after_id`` in order; only the ``last`` N of them if given."""
        rows = self._query("SELECT * FROM (SELECT * FROM events WHERE id > ? ORDER BY id DESC"
                           " LIMIT ?) ORDER BY id", (after_id, -1 if last is None else last))
        return [EventRow(r["id"], r["at"], r["kind"], r["worker_id"], r["task_id"], r["message"])
                for r in rows]

    @staticmethod
    def _event(db: sqlite3.Connection, now: float, kind: str, worker_id: str | None,
               task_id: int | None, message: str) -> None:
        db.execute("INSERT INTO events (at, kind, worker_id, task_id, message)"
                   " VALUES (?, ?, ?, ?, ?)", (now, kind, worker_id, task_id, message))


# ---------------------------------------------------------------------- row mapping


def _jitter() -> float:
    return secrets.randbelow(1_000_001) / 1_000_000


def _worker_of(db: sqlite3.Connection, attempt_id: int) -> str | None:
    row = db.execute("SELECT worker_id FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
    return str(row["worker_id"]) if row else None


def _task(r: sqlite3.Row) -> TaskRow:
    return TaskRow(r["id"], r["title"], r["prompt"], r["priority"], r["status"], r["created_at"],
                   r["updated_at"], r["attempts"], bool(r["cancel_requested"]), r["not_before"],
                   r["last_error"], r["branch"])


def _attempt(r: sqlite3.Row) -> AttemptRow:
    return AttemptRow(r["id"], r["task_id"], r["number"], r["worker_id"], r["status"],
                      r["started_at"], r["ended_at"], r["exit_code"], r["branch"], r["worktree"],
                      r["log_path"], r["error"], r["output_tail"], r["lease_expires_at"])


def _worker(r: sqlite3.Row) -> WorkerRow:
    return WorkerRow(r["id"], r["runtime"], r["pid"], r["pid_create_time"], r["spec_id"],
                     r["template_hash"], json.loads(r["template_digests"] or "{}"), r["state"],
                     r["current_task"], r["started_at"], r["heartbeat_at"], r["restarts"],
                     bool(r["drain_requested"]), r["exited_at"], r["exit_code"], bool(r["removed"]))
