"""The store's schema: its tables, indexes and triggers, and how an older store is upgraded.

Every query a controller pass or a read command makes at scale has an index
(``tests/test_store_scale.py`` checks their plans), so the cost of a pass does not
grow with the history: 100,000 tasks, attempts and a million events (issue 9).

Upgrading runs in one transaction (``Database._ensure_schema``): tables first, then
the columns later versions added to them, then every index and trigger (an index
may name such a column), then each version's data step (``_DATA_STEPS``).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 9  # 9: pueue_restarts (runtime: pueue, supervise: all)

SCHEMA = """
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
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_by_creation ON tasks (created_at);
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
    last_output_at REAL,
    stop_signalled_at REAL,
    rescued TEXT,
    phases TEXT,
    report_is_error INTEGER,  -- the agent's report (worker.result): NULL when none was read
    cost_usd REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    turns INTEGER,
    session_id TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (task_id, number);
CREATE INDEX IF NOT EXISTS attempts_by_worktree ON attempts (worktree, id);
CREATE INDEX IF NOT EXISTS attempts_by_status ON attempts (status, worker_id);
CREATE INDEX IF NOT EXISTS attempts_rescued ON attempts (rescued) WHERE rescued IS NOT NULL;
CREATE INDEX IF NOT EXISTS attempts_cost_by_end ON attempts (ended_at, cost_usd)
    WHERE cost_usd IS NOT NULL;
-- by status and end, covering what the report's window and the metrics' totals read
CREATE INDEX IF NOT EXISTS attempts_ended ON attempts (status, ended_at, started_at, number,
    task_id, cost_usd, input_tokens, output_tokens);
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
-- runtime: pueue with supervise: all -- how often the controller restarted each task that
-- people added to the group by hand (pueue keeps no count); one task is its pueue id and
-- its created_at (ids are given out again after `pueue clean`)
CREATE TABLE IF NOT EXISTS pueue_restarts (
    pueue_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    restarts INTEGER NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (pueue_id, created_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS controller (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER,
    pid_create_time REAL,
    started_at REAL,
    heartbeat_at REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    busy_with TEXT,
    busy_since REAL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    worker_id TEXT,
    task_id INTEGER,
    message TEXT NOT NULL,
    fields TEXT,
    severity TEXT  -- warning or critical: an alert (reconciler.severity); NULL: info
);
CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id);
CREATE INDEX IF NOT EXISTS events_by_worker ON events (worker_id);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind);
CREATE INDEX IF NOT EXISTS events_alerts ON events (id) WHERE severity IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_counts (
    status TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS task_counts_on_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS task_counts_on_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1 WHERE status = OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS task_counts_on_update AFTER UPDATE OF status ON tasks
        WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE task_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO task_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
"""

# Schema version -> the columns a store of the version before it lacks: (table, column, decl).
_MIGRATIONS: dict[int, tuple[tuple[str, str, str], ...]] = {
    2: (("events", "fields", "TEXT"),),
    3: (("attempts", "stop_signalled_at", "REAL"), ("controller", "busy_with", "TEXT"),
        ("controller", "busy_since", "REAL")),
    4: (("attempts", "rescued", "TEXT"), ("attempts", "phases", "TEXT")),
    6: (("attempts", "report_is_error", "INTEGER"), ("attempts", "cost_usd", "REAL"),
        ("attempts", "input_tokens", "INTEGER"), ("attempts", "output_tokens", "INTEGER"),
        ("attempts", "turns", "INTEGER"), ("attempts", "session_id", "TEXT")),
    7: (("events", "severity", "TEXT"),),
}


def _add_column(db: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` unless the column is there already (a store
    whose schema was created after the column was introduced)."""
    columns = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}  # name
    if column not in columns:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

# Schema version -> statements that fill what that version added from what is there.
_DATA_STEPS: dict[int, tuple[str, ...]] = {
    # tasks per status, kept by the task_counts_* triggers from now on
    5: ("DELETE FROM task_counts",
        "INSERT INTO task_counts (status, n) SELECT status, COUNT(*) FROM tasks"
        " GROUP BY status"),
    # the severity of the events already logged (reconciler.severity says the same)
    7: ("UPDATE events SET severity = CASE json_extract(fields, '$.to')"
        " WHEN 'failed' THEN 'critical' WHEN 'dead' THEN 'warning' END"
        " WHERE kind = 'worker.health'",
        "UPDATE events SET severity = 'warning' WHERE kind >= 'attempt.' AND kind < 'attempt/'"
        " AND json_extract(fields, '$.task_status') = 'failed'",
        "UPDATE events SET severity = 'warning'"
        " WHERE kind IN ('pool.paused', 'pool.over_budget', 'alert.delivery_failed')"),
    # attempts_ended covers what this index held, and more
    8: ("DROP INDEX IF EXISTS attempts_by_status_end",),
}


def statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (a trigger's body holds ``;`` too)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:60]}")
    return found


def create_or_upgrade(db: sqlite3.Connection, version: int) -> None:
    """Bring a store of schema ``version`` (0: a new file) to ``SCHEMA_VERSION``, inside
    the caller's transaction; sets ``user_version`` last."""
    everything = statements(SCHEMA)
    tables = [s for s in everything if s.upper().startswith("CREATE TABLE")]
    for statement in tables:
        db.execute(statement)
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for table, column, decl in _MIGRATIONS.get(step, ()):
            _add_column(db, table, column, decl)
    for statement in everything:
        if statement not in tables:
            db.execute(statement)
    for step in range(max(version, 0) + 1, SCHEMA_VERSION + 1):
        for statement in _DATA_STEPS.get(step, ()):
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
