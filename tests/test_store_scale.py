"""History does not slow anything down (issue 9): every query a controller pass or a read
command makes walks an index (a dashboard refresh's and ``report``'s too, issue 10),
``queue_counts`` reads a counter table its triggers keep exact, events are read newest
first through an index, and older stores are upgraded.

The figures at 100,000 tasks / 1,000,000 events are ``benchmarks/bench_store.py``'s;
here each query's plan is checked (``EXPLAIN QUERY PLAN``), and each result against
what a plain scan of the same rows gives.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from reconciler.model import ATTEMPT_STATUSES, AgentReport, QueueCounts, RetryPolicy
from reconciler.paths import pool_paths
from reconciler.pool import Pool
from reconciler.report.dashboard import TreeMeter, snapshot
from reconciler.store import events as event_sql
from reconciler.store import schema
from reconciler.store import tasks as task_sql
from reconciler.store.sqlite import Store
from reconciler.store.workers import RESTART_HISTORY_SQL
from tests.test_store_contract import claim, register


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as s:
        yield s


def plan_of(store: Store, sql: str) -> str:
    rows = store._db.execute(f"EXPLAIN QUERY PLAN {sql}", (1,) * sql.count("?")).fetchall()
    return " / ".join(str(r[3]) for r in rows)


# the query, and the index its plan must name (None: a table of a few rows)
HOT_QUERIES = [
    pytest.param(task_sql.QUEUE_COUNTS_SQL, None, id="queue-counts"),
    pytest.param(task_sql.CLAIM_SQL, "tasks_by_claim_order", id="claim"),
    pytest.param(task_sql.NEXT_DUE_SQL, "tasks_by_status", id="next-claim-at"),
    pytest.param(task_sql.LATEST_ATTEMPT_AT_SQL, "attempts_by_worktree", id="attempt-worktrees"),
    pytest.param(task_sql.RUNNING_ATTEMPTS_SQL, "attempts_by_status", id="running-attempts"),
    pytest.param(task_sql.SPEND_SINCE_SQL, "attempts_cost_by_end", id="spend-today"),
    pytest.param(task_sql.COMPLETED_SINCE_SQL, "attempts_ended", id="dashboard-completed"),
    pytest.param(task_sql.MEAN_RUN_SINCE_SQL, "attempts_ended", id="dashboard-mean-run"),
    pytest.param(RESTART_HISTORY_SQL, "restarts_by_worker", id="restart-history"),
    pytest.param(task_sql.TASK_STATUSES_SQL, "PRIMARY KEY", id="task-wait"),
    pytest.param(task_sql.OPEN_TASK_IDS_SQL, "tasks_by_status", id="open-task-ids"),
    pytest.param(task_sql.TASKS_OF_STATUS_SQL, "tasks_by_status", id="task-list-status"),
    pytest.param(event_sql.LATEST_EVENTS_SQL, "PRIMARY KEY", id="events"),
    pytest.param(event_sql.EVENTS_OF_TASK_SQL, "events_by_task", id="events-task"),
    pytest.param(event_sql.EVENTS_OF_WORKER_SQL, "events_by_worker", id="events-worker"),
    pytest.param(event_sql.EVENTS_OF_KIND_SQL, "events_by_kind", id="events-kind"),
    pytest.param(event_sql.NEXT_KIND_SQL, "events_by_kind", id="events-next-kind"),
    pytest.param(event_sql.ALERTS_NEWEST_SQL, "events_alerts", id="alerts"),
    pytest.param(event_sql.ALERTS_AFTER_SQL, "events_alerts", id="alerts-to-send"),
    pytest.param(task_sql.OLDEST_QUEUED_SQL, "tasks_by_status", id="report-oldest-queued"),
    pytest.param(task_sql.REPORT_ATTEMPTS_SQL, "attempts_ended", id="report-attempts"),
    pytest.param(task_sql.REPORT_TASKS_SINCE_SQL, "tasks_by_creation", id="report-tasks-since"),
    pytest.param(task_sql.REPORT_TASKS_OF_SQL, "PRIMARY KEY", id="report-tasks-of"),
]


@pytest.mark.parametrize(("sql", "index"), HOT_QUERIES)
def test_hot_queries_never_scan_the_history(store: Store, sql: str, index: str | None) -> None:
    plan = plan_of(store, sql)
    for table in ("tasks", "attempts", "events", "restarts r"):
        assert f"SCAN {table}" not in plan.replace("SCAN tasks USING", ""), plan
    if index is not None:
        assert index in plan, plan
    if "LIMIT" in sql:  # read in index order, stopping at the limit: nothing to sort
        assert "TEMP B-TREE" not in plan, plan


def test_the_unfiltered_page_reads_the_rowid_in_order(store: Store) -> None:
    """``task list`` without ``--status``: down the table in id order, stopping at the
    page's end (a SCAN, but one that reads only the rows it shows)."""
    assert plan_of(store, task_sql.TASKS_SQL) == "SCAN tasks"


HISTORY = ("SCAN tasks", "SCAN attempts", "SCAN events")


def plans_of_what_runs(store: Store, action: Callable[[], object]) -> list[str]:
    """The plan of every SELECT that ``action`` runs (its parameters bound), each after
    its statement."""
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        action()
    finally:
        store._db.set_trace_callback(None)
    return [f"{sql}: " + " / ".join(str(r[3]) for r in store._db.execute(
        f"EXPLAIN QUERY PLAN {sql}")) for sql in statements if sql.startswith("SELECT")]


def _history(store: Store) -> None:
    """Tasks ended, running, queued and failed (one created two hours ago), a restart,
    and events."""
    register(store, "w-1")
    register(store, "w-2")
    store.add_tasks([("older", "p", 0)], now=time.time() - 7200)  # run in a 1 h window
    store.add_tasks([(f"t{i}", "p", 0) for i in range(5)])
    store.finish_attempt(claim(store, "w-1"), "succeeded",
                         report=AgentReport(cost_usd=0.5, input_tokens=10))
    store.finish_attempt(claim(store, "w-1"), "failed", error="boom")
    claim(store, "w-2")
    spec_id = store.record_applied_spec(source_path=None, source_sha256="s", git_commit=None,
                                        document_hash="h", document="{}", summary="spec")
    store.register_worker("w-1", runtime="process", pid=None, pid_create_time=None,
                          spec_id=spec_id, template_hash="t", template_digests={},
                          restarted=True, counted=True, reason="crashed")
    _events(store)


def test_a_dashboard_refresh_reads_no_history(tmp_path: Path) -> None:
    """Every query of one dashboard snapshot (``status``'s reads with it) walks an
    index or reads a table of a few rows: none scans tasks, attempts or events."""
    pool = Pool(pool_paths(tmp_path / "state", "p").create(), None)
    with Store(pool.paths.store) as store:
        _history(store)
        now = time.time()
        plans = plans_of_what_runs(store, lambda: snapshot(pool, store, TreeMeter(), now))
    assert any("FROM attempts" in p for p in plans) and any("FROM events" in p for p in plans)
    for plan in plans:
        assert not any(scan in plan for scan in HISTORY), plan


@pytest.mark.parametrize("window", [3600.0, 1e9])
def test_the_report_reads_no_history_outside_its_window(store: Store, window: float) -> None:
    """``report``'s reads each walk an index, whatever the window (the whole history
    too: then the index ranges cover every row, but no query scans a table)."""
    _history(store)
    plans = plans_of_what_runs(store, lambda: (
        store.report_rows(time.time() - window), store.queue_counts(),
        store.oldest_queued_at(), store.worker_lives(time.time() - window, time.time())))
    # attempts, tasks, restarts, counts, the oldest queued, starts and ends, deaths
    assert len(plans) >= 7, plans
    for plan in plans:
        assert not any(scan in plan for scan in HISTORY), plan


def test_the_report_lists_every_status_an_attempt_may_have(store: Store) -> None:
    """``REPORT_ATTEMPTS_SQL`` reads ``ended_at >= ?`` as one index range per status, so
    it must list every status the schema allows."""
    sql = store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'attempts'").fetchone()
    allowed = re.search(r"CHECK \(status IN \(([^)]*)\)\)", sql[0])
    assert allowed is not None
    assert sorted(re.findall(r"'(\w+)'", allowed.group(1))) == sorted(ATTEMPT_STATUSES)
    assert f"status IN ({', '.join(repr(s) for s in ATTEMPT_STATUSES)})" in \
        task_sql.REPORT_ATTEMPTS_SQL


def test_report_rows_give_what_a_scan_gives(store: Store) -> None:
    """The report's rows are those of ``ended_at >= ?`` and ``created_at >= ?`` read
    plainly: the attempts of every outcome that ended in the window, by id, and the
    tasks they ran or created in it."""
    register(store, "w-1")
    for created in (100.0, 200.0, 300.0, 400.0, 500.0):
        store.add_tasks([("t", "p", 0)], now=created)
    for outcome, start, end in [("succeeded", 210.0, 250.0), ("timeout", 260.0, 320.0),
                                ("rate_limited", 330.0, 340.0), ("failed", 350.0, 450.0)]:
        store.finish_attempt(claim(store, "w-1", now=start), outcome, now=end, resume_at=end,
                             policy=RetryPolicy(max_attempts=1))
    claim(store, "w-1", now=460.0)  # running: no end yet
    store.requeue_attempts_of("w-1", "gone", consume=True, now=470.0)  # lost at 470
    for since in (0.0, 300.0, 330.0, 460.0, 1000.0):
        attempts, tasks, _ = store.report_rows(since)
        ended = store._db.execute("SELECT id, task_id FROM attempts WHERE ended_at >= ?"
                                  " ORDER BY id", (since,)).fetchall()
        assert [(a.id, a.task_id) for a in attempts] == [tuple(r) for r in ended]
        named = store._db.execute(
            "SELECT id FROM tasks WHERE created_at >= ? OR id IN"
            " (SELECT task_id FROM attempts WHERE ended_at >= ?) ORDER BY id",
            (since, since)).fetchall()
        assert list(tasks) == [r[0] for r in named]
        for task_id, task in tasks.items():
            row = store.task(task_id)
            assert task == (row.id, row.status, row.created_at, row.attempts)
    assert {a.status for a in store.report_rows(0.0)[0]} == \
        {"succeeded", "timeout", "rate_limited", "failed", "lost"}


def table_counts(store: Store) -> QueueCounts:
    rows = store._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")
    return QueueCounts(**{status: n for status, n in rows})


def test_queue_counts_follow_every_change_of_status(store: Store) -> None:
    register(store, "w-1")
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(6)])
    assert store.queue_counts() == table_counts(store) == QueueCounts(queued=6)
    first = claim(store, "w-1")
    assert store.finish_attempt(first, "succeeded") == "succeeded"
    second = claim(store, "w-1")
    store.finish_attempt(second, "failed", error="boom")
    store.cancel_task(ids[5])
    running = claim(store, "w-1")
    assert store.queue_counts() == table_counts(store)
    store.retry_task(ids[5])
    store.requeue_attempts_of("w-1", "gone", consume=False)
    assert running.task.id not in {t.id for t in store.tasks("running")}
    store._db.execute("DELETE FROM tasks WHERE id = ?", (ids[4],))  # by hand: a trigger too
    counts = store.queue_counts()
    assert counts == table_counts(store)
    assert counts == QueueCounts(queued=3, succeeded=1, failed=1)


def _store_of_version(path: Path, version: int) -> None:
    """A store as schema ``version`` left it: v7 had no tasks_by_creation index; v4 no
    task_counts, no events or tasks_by_status indexes either; v3 also no
    attempts.rescued / phases (nor their index)."""
    dropped: tuple[str, ...] = ("tasks_by_creation",)
    if version < 5:
        dropped += ("task_counts", "events_by_", "tasks_by_status")
    if version < 4:
        dropped += ("attempts_rescued",)
    kept = [s for s in schema.statements(schema.SCHEMA) if not any(d in s for d in dropped)]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in kept:
            db.execute(statement)
        if version < 4:
            db.execute("ALTER TABLE attempts DROP COLUMN rescued")
            db.execute("ALTER TABLE attempts DROP COLUMN phases")
        db.executemany("INSERT INTO tasks (title, prompt, status, created_at, updated_at)"
                       " VALUES ('t', 'p', ?, 0, 0)",
                       [("queued",)] * 3 + [("succeeded",)] * 2 + [("failed",)])
        db.execute(f"PRAGMA user_version = {version}")


@pytest.mark.parametrize("version", [3, 4, 7])
def test_an_older_store_is_upgraded_with_its_counts(tmp_path: Path, version: int) -> None:
    path = tmp_path / "store.db"
    _store_of_version(path, version)
    with Store(path) as store:
        assert store.queue_counts() == QueueCounts(queued=3, succeeded=2, failed=1)
        store.add_tasks([("new", "p", 0)])
        assert store.queue_counts().queued == 4
        names = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master")}
        version_now = store._db.execute("PRAGMA user_version").fetchone()[0]
    assert {"events_by_task", "events_by_worker", "events_by_kind", "tasks_by_status",
            "attempts_rescued", "task_counts_on_update", "tasks_by_creation"} <= names
    assert version_now == schema.SCHEMA_VERSION


def test_statements_keep_a_trigger_whole() -> None:
    found = schema.statements(schema.SCHEMA)
    trigger = next(s for s in found if "task_counts_on_update" in s)
    assert trigger.endswith("END;") and trigger.count(";") == 3
    with pytest.raises(ValueError, match="incomplete"):
        schema.statements("CREATE TABLE x (a")


# ---------------------------------------------------------------------------- events


def _events(store: Store) -> None:
    kinds = ["task.queued", "attempt.started", "attempt.succeeded", "attempts_x",
             "worker.health", "worker.restarted", "attempt.failed"]
    for i in range(140):
        store.add_event(kinds[i * 5 % len(kinds)], f"e{i}", worker_id=f"w-{1 + i % 3}",
                        task_id=None if i % 4 == 0 else 1 + i % 5)


FILTERS = [
    {}, {"kind": "attempt"}, {"kind": "attempt."}, {"kind": "worker.health"}, {"kind": "zzz"},
    {"task_id": 2}, {"worker_id": "w-2"}, {"worker_id": "w-2", "kind": "attempt"},
    {"task_id": 3, "worker_id": "w-1"}, {"task_id": 4, "kind": "attempt.s"},
]


@pytest.mark.parametrize("where", FILTERS, ids=lambda w: ",".join(map(str, w.items())) or "-")
@pytest.mark.parametrize(("after_id", "last"), [(0, None), (0, 7), (60, 5), (60, None)])
def test_find_events_gives_what_a_scan_gives(store: Store, where: dict[str, object],
                                             after_id: int, last: int | None) -> None:
    _events(store)
    everything = store.events()
    expected = [e for e in everything if e.id > after_id
                and e.kind.startswith(str(where.get("kind", "")))
                and where.get("worker_id", e.worker_id) == e.worker_id
                and where.get("task_id", e.task_id) == e.task_id]
    expected = expected if last is None else expected[-last:] if last else []
    found = store.find_events(**where, after_id=after_id, last=last)  # type: ignore[arg-type]
    assert found == expected


def test_a_kind_reads_only_its_newest_rows(store: Store) -> None:
    """One query per kind starting with the prefix (attempt.failed, .started, .succeeded,
    attempts_x), each stopping at the limit: the rows read do not grow with the log."""
    _events(store)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.find_events(kind="attempt", last=3)
    store._db.set_trace_callback(None)
    per_kind = [s for s in statements if s.startswith("SELECT * FROM events WHERE kind =")]
    assert len(per_kind) == 4 and all(s.endswith("LIMIT 3") for s in per_kind), statements


# ---------------------------------------------------------------------------- tasks


def test_iter_tasks_streams_what_tasks_returns(store: Store) -> None:
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(task_sql.STREAM_CHUNK + 20)])
    store.cancel_task(ids[3])
    assert list(store.iter_tasks()) == store.tasks()
    assert [t.id for t in store.iter_tasks(limit=4)] == ids[:4]
    assert [t.id for t in store.iter_tasks("cancelled")] == [ids[3]]
    assert [t.id for t in store.tasks("queued", limit=2)] == [ids[0], ids[1]]


def test_open_task_ids_leave_the_finished_out(store: Store) -> None:
    register(store, "w-1")
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(4)])
    store.finish_attempt(claim(store, "w-1"), "succeeded")
    claim(store, "w-1")
    store.cancel_task(ids[3])
    assert store.open_task_ids() == [ids[1], ids[2]]
