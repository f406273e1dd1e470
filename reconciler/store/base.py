"""The SQLite plumbing shared by every part of a pool's store.

Rules (DESIGN.md rules 4-6): WAL journal, a ``busy_timeout`` so concurrent
workers wait instead of failing, ``BEGIN IMMEDIATE`` for every read-then-write,
files 0600 (SQLite gives ``-wal`` and ``-shm`` the database file's mode).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from reconciler.errors import StoreError

SCHEMA_VERSION = 2
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
        CHECK (status IN ('running', 'succeeded', 'failed', 'lost', 'timeout', 'cancelled',
                          'rate_limited')),
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    branch TEXT,
    worktree TEXT,
    log_path TEXT,
    error TEXT,
    output_tail TEXT,
    pid INTEGER,
    pid_create_time REAL,
    last_output_at REAL
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (task_id, number);
CREATE INDEX IF NOT EXISTS attempts_by_worktree ON attempts (worktree, id);
CREATE INDEX IF NOT EXISTS attempts_by_status ON attempts (status, worker_id);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    runtime TEXT NOT NULL,
    tmux_socket TEXT,
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
    drain_requested_at REAL,
    exited_at REAL,
    exit_code INTEGER,
    removed INTEGER NOT NULL DEFAULT 0,
    health TEXT NOT NULL DEFAULT 'recovering',
    health_since REAL,
    restart_epoch REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS restarts (
    id INTEGER PRIMARY KEY,
    worker_id TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS restarts_by_worker ON restarts (worker_id, at);
CREATE TABLE IF NOT EXISTS controller (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER,
    pid_create_time REAL,
    started_at REAL,
    heartbeat_at REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    worker_id TEXT,
    task_id INTEGER,
    message TEXT NOT NULL,
    fields TEXT
);
"""

# Schema version -> the columns a store of the version before it lacks: (table, column, decl).
_MIGRATIONS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (("events", "fields", "TEXT"),),
}

def _add_column(db: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` unless the column is there already (a store
    whose schema was created after the column was introduced)."""
    columns = {str(r["name"]) for r in db.execute(f"PRAGMA table_info({table})")}
    if column not in columns:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"cannot open the task store {path}: {exc}",
                      hint="check the state directory's permissions and free space")


def _create_private(path: Path) -> bool:
    """Create ``path`` as an empty 0600 file if it does not exist yet; True if it did.

    An existing file is never opened here: closing any descriptor of a
    database drops every POSIX lock this process holds on it, which would let
    another process delete the WAL under a live connection.  SQLite gives the
    ``-wal`` and ``-shm`` files the database file's permissions.
    """
    if path.exists():
        return False
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class Database:
    """A connection to one pool's store.  Each thread or process opens its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._created = _create_private(path)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._refuse_a_lost_store()  # before WAL mode writes the file's header
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema()
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()  # a store that cannot be used must not hold a connection
            if isinstance(exc, StoreError):
                raise
            raise _open_error(path, exc) from exc
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.chmod(0o600)

    def _ensure_schema(self) -> None:
        """Create or migrate the schema, writing nothing when it is already current.

        Any write (even of an unchanged ``user_version``) bumps ``PRAGMA
        data_version`` and so wakes every controller watching the store.  The
        version is read again under the write lock: of two processes opening an
        old store at once, only the first migrates it.
        """
        if self._user_version() == SCHEMA_VERSION:
            return
        with self.transaction() as db:
            version = self._user_version()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer reconciler"
                                 f" (schema {version})", hint="upgrade reconciler")
            if version == SCHEMA_VERSION:
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for table, column, decl in _MIGRATIONS.get(step, ()):
                    _add_column(db, table, column, decl)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _refuse_a_lost_store(self) -> None:
        """An empty store beside a pool's logs or prompts was truncated or replaced:
        starting afresh would silently lose every task and the history."""
        if self._created or self._user_version() != 0 or \
                self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            return
        evidence = [d.name for d in (self.path.parent / "logs", self.path.parent / "prompts")
                    if d.is_dir() and any(d.iterdir())]
        if evidence:
            raise StoreError(
                f"{self.path} is empty, but the pool has {' and '.join(evidence)}: the store "
                "was truncated or replaced, and opening it would lose every task and the "
                "history", hint="restore store.db from a backup, or move the pool directory "
                f"{self.path.parent} away to start the pool afresh")

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close the connection however the block ends; exceptions propagate."""
        self.close()

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
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"task store {self.path}: commit failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the task store {self.path} failed: {exc}") from exc

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "something happened"."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @staticmethod
    def _event(db: sqlite3.Connection, now: float, kind: str, worker_id: str | None,
               task_id: int | None, message: str,
               fields: Mapping[str, Any] | None = None) -> None:
        """Log an event; ``fields`` keeps its facts machine-readable (NULL when none)."""
        encoded = json.dumps(dict(fields), sort_keys=True) if fields else None
        db.execute("INSERT INTO events (at, kind, worker_id, task_id, message, fields)"
                   " VALUES (?, ?, ?, ?, ?, ?)", (now, kind, worker_id, task_id, message, encoded))


def jitter() -> float:
    """A factor in [0.8, 1.2] so retries and restarts do not fall into lockstep."""
    return 0.8 + 0.4 * secrets.randbelow(1_000_001) / 1_000_000
