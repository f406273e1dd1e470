"""The SQLite task store on real files and real processes; the pool lock; task files."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from reconciler.commands import wait_for_tasks
from reconciler.errors import LockHeldError, PoolError, StoreError, TaskError
from reconciler.lock import pool_lock
from reconciler.paths import PoolPaths
from reconciler.store import schema as store_schema
from reconciler.store.sqlite import Store
from reconciler.store.tasks import LATEST_ATTEMPT_AT_SQL, QUEUE_COUNTS_SQL, RUNNING_ATTEMPTS_SQL
from reconciler.taskfile import NewTask, read_task_file
from tests.helpers import ROOT, write_spec
from tests.test_store_contract import LEASE, claim, register


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


def python(code: str, *args: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter (its own process and SQLite connections)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout




# ------------------------------------------------------------- concurrency across processes

CLAIM_LOOP = """
    import json, sys, time
    from pathlib import Path
    from reconciler.store.sqlite import Store
    db, worker, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = Store(Path(db))
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    claimed = []
    while (c := store.claim_task(worker, 60.0)) is not None:
        claimed.append(c.task.id)
        assert store.finish_attempt(c, "succeeded", exit_code=0) == "succeeded"
    store.close()
    print(json.dumps(claimed))
"""


def test_concurrent_claims_are_atomic(store: Store, db_path: Path, tmp_path: Path) -> None:
    ids = store.add_tasks([(f"task {i}", "p", i % 3) for i in range(200)])
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLAIM_LOOP), str(db_path),
                               f"w-{n}", str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    for proc in procs:  # start all four claim loops at once
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    claimed: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        claimed.extend(json.loads(out))

    assert sorted(claimed) == sorted(ids), "a task was claimed twice or never"
    assert all(t.status == "succeeded" and t.attempts == 1 for t in store.tasks())
    per_task = Counter(a.task_id for a in store.attempts())
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}
    assert {a.status for a in store.attempts()} == {"succeeded"}
    assert store.queue_counts().succeeded == 200


# --------------------------------------------------------------------------- validation


def test_task_text_with_nul_or_huge_priority_is_refused(store: Store) -> None:
    with pytest.raises(TaskError, match="NUL"):
        store.add_tasks([("t", "a\x00b", 0)])
    with pytest.raises(TaskError, match="out of range"):
        store.add_tasks([("t", "p", 10**20)])
    assert store.tasks() == []


# --------------------------------------------------------------------------- permissions


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_are_private(db_path: Path) -> None:
    s = Store(db_path)
    s.add_tasks([("t", "p", 0)])
    wal, shm = (db_path.with_name(db_path.name + x) for x in ("-wal", "-shm"))
    assert wal.exists() and shm.exists()
    assert (mode(db_path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    s.close()

    # the last close removed the WAL; another process recreates it private too
    assert not wal.exists()
    modes = python("""
        import os, stat, sys
        from pathlib import Path
        from reconciler.store.sqlite import Store
        s = Store(Path(sys.argv[1]))
        s.add_tasks([("u", "p", 0)])
        for suffix in ("", "-wal", "-shm"):
            print(oct(stat.S_IMODE(os.stat(sys.argv[1] + suffix).st_mode)))
        s.close()
    """, str(db_path))
    assert modes.split() == ["0o600"] * 3


def test_pool_directories_are_private(tmp_path: Path) -> None:
    paths = PoolPaths(tmp_path / "state", "pool").create()
    for directory in (paths.state_dir, paths.state_dir / "pools", paths.root, paths.logs,
                      paths.prompts):
        assert mode(directory) == 0o700, directory


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    """Issue 7, item 10: an existing directory was chmod'ed to 0700 (a state directory
    pointed at /tmp would have broken the host)."""
    paths = PoolPaths(tmp_path / "state", "pool")
    paths.logs.mkdir(parents=True, mode=0o755)
    paths.logs.chmod(0o755)
    paths.create()
    assert mode(paths.logs) == 0o755  # readable by others is the operator's choice
    assert mode(paths.prompts) == 0o700  # what we create is private


@pytest.mark.parametrize("loose", [pytest.param(0o1777, id="like-tmp"),
                                   pytest.param(0o777, id="world-writable"),
                                   pytest.param(0o775, id="group-writable")])
def test_a_state_directory_others_can_write_to_is_refused(tmp_path: Path, loose: int) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(loose)
    with pytest.raises(PoolError, match="others could write there"):
        PoolPaths(state, "pool").create()
    assert mode(state) == loose and not (state / "pools").exists()
    spec = write_spec(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state),
                           "task", "add", "-f", str(spec), "--title", "t"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "others could write there" in proc.stderr


# --------------------------------------------------------------------------- history, events


def test_applied_spec_history_roundtrip(store: Store) -> None:
    doc_a = {"apiVersion": "reconciler/v1", "spec": {"replicas": 2}}
    doc_b = {"apiVersion": "reconciler/v1", "spec": {"replicas": 3}}
    first = store.record_applied_spec(source_path="/x/workers.yaml", source_sha256="sa",
                                      git_commit="abc123", document_hash="ha",
                                      document=json.dumps(doc_a), summary="2 replicas",
                                      now=10.0)
    second = store.record_applied_spec(source_path=None, source_sha256="sb", git_commit=None,
                                       document_hash="hb", document=json.dumps(doc_b),
                                       summary="3 replicas", now=20.0)
    third = store.record_applied_spec(source_path=None, source_sha256="sa", git_commit=None,
                                      document_hash="ha", document=json.dumps(doc_a),
                                      summary="back to 2", now=30.0)

    history = store.history()
    assert [h.id for h in history] == [first, second, third]
    assert (history[0].applied_at, history[0].source_path, history[0].git_commit,
            history[0].document_hash, history[0].summary) == (
        10.0, "/x/workers.yaml", "abc123", "ha", "2 replicas")
    assert store.latest_spec_id("ha") == third
    assert store.latest_spec_id("hb") == second
    assert store.latest_spec_id("nope") is None
    assert store.spec_document(second) == doc_b
    with pytest.raises(StoreError, match="missing"):
        store.spec_document(999)


def test_events_last_n_in_order(store: Store) -> None:
    for i in range(10):
        store.add_event("test.event", f"event {i}", now=float(i))
    last = store.events(last=3)
    assert [e.message for e in last] == ["event 7", "event 8", "event 9"]
    assert [e.id for e in last] == sorted(e.id for e in last)
    assert [e.message for e in store.events()] == [f"event {i}" for i in range(10)]
    after = store.events(after_id=last[0].id)
    assert [e.message for e in after] == ["event 8", "event 9"]
    assert [e.message for e in store.events(after_id=last[0].id, last=1)] == ["event 9"]


# --------------------------------------------------------------------------- schema


def connect(db_path: Path) -> closing[sqlite3.Connection]:
    """A plain connection of the test's own, closed at the end of its ``with`` block."""
    return closing(sqlite3.connect(db_path, isolation_level=None))


def user_version(db_path: Path) -> int:
    with connect(db_path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_opening_a_current_store_writes_nothing(store: Store, db_path: Path) -> None:
    """A write on open (even of an unchanged user_version) would wake every watcher."""
    before = store.data_version()
    Store(db_path).close()
    assert store.data_version() == before
    assert user_version(db_path) == store_schema.SCHEMA_VERSION == 9


def _version_1_store(db_path: Path) -> None:
    """A store as schema version 1 left it: events without ``fields``, no attempt indexes."""
    schema = store_schema.SCHEMA
    for new in (",\n    fields TEXT", "CREATE INDEX IF NOT EXISTS attempts_by_worktree",
                "CREATE INDEX IF NOT EXISTS attempts_by_status"):
        assert new in schema
    v1 = "\n".join(line for line in schema.replace(",\n    fields TEXT", "").splitlines()
                   if "attempts_by_worktree" not in line and "attempts_by_status" not in line)
    with connect(db_path) as db:
        db.executescript(v1)
        db.execute("INSERT INTO events (at, kind, message) VALUES (1.0, 'old.event', 'v1')")
        db.execute("PRAGMA user_version = 1")


def test_version_1_store_is_migrated_once(db_path: Path) -> None:
    _version_1_store(db_path)

    with Store(db_path) as store:
        assert user_version(db_path) == store_schema.SCHEMA_VERSION
        store.add_event("new.event", "v2", fields={"n": 1})
        assert [(e.kind, e.fields) for e in store.events()] == [
            ("old.event", {}), ("new.event", {"n": 1})]
        before = store.data_version()
        Store(db_path).close()  # already migrated: nothing runs, nothing is written
        assert store.data_version() == before
    with connect(db_path) as db:
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"attempts_by_worktree", "attempts_by_status"} <= indexes


def test_store_of_a_newer_reconciler_is_refused(db_path: Path) -> None:
    with connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer reconciler"):
        Store(db_path)
    assert user_version(db_path) == 99


def test_store_is_a_context_manager(db_path: Path) -> None:
    with Store(db_path) as store:
        store.add_tasks([("t", "p", 0)])
    with pytest.raises(StoreError, match="closed"):
        store.tasks()


# --------------------------------------------------------------------------- query plans


@pytest.mark.parametrize(("sql", "uses"), [
    pytest.param(QUEUE_COUNTS_SQL, "SCAN task_counts", id="queue-counts"),
    pytest.param(LATEST_ATTEMPT_AT_SQL, "USING INDEX attempts_by_worktree",
                 id="attempt-worktrees"),
    pytest.param(RUNNING_ATTEMPTS_SQL, "USING INDEX attempts_by_status", id="running-attempts"),
])
def test_per_pass_queries_use_an_index(store: Store, db_path: Path, sql: str,
                                       uses: str) -> None:
    """Each pass runs these; a table scan would grow with the pool's whole history."""
    with connect(db_path) as db:
        plan = " / ".join(r[3] for r in db.execute(
            f"EXPLAIN QUERY PLAN {sql}", ("/w",) if "?" in sql else ()))
    assert uses in plan, plan


def _attempt_at(store: Store, worktree: str, status: str) -> None:
    store.add_tasks([("t", "p", 0)])
    c = claim(store)
    assert store.update_attempt(c, branch="b", worktree=worktree, log_path="/l")
    assert store.finish_attempt(c, status, error=None if status == "succeeded" else "x")


def test_attempt_worktrees_reads_only_the_given_paths(store: Store) -> None:
    _attempt_at(store, "/w/a", "failed")
    _attempt_at(store, "/w/a", "succeeded")  # the latest attempt at a path counts
    _attempt_at(store, "/w/b", "failed")
    _attempt_at(store, "/w/old", "failed")

    assert store.attempt_worktrees(["/w/a", "/w/b", "/w/unknown"]) == {
        "/w/a": "succeeded", "/w/b": "failed"}
    assert store.attempt_worktrees([]) == {}
    assert store.attempt_worktrees() == {  # the old call still reads every path
        "/w/a": "succeeded", "/w/b": "failed", "/w/old": "failed"}


# --------------------------------------------------------------------------- events with fields


def test_events_carry_structured_fields(store: Store) -> None:
    store.add_event("plain", "no fields")
    store.add_event("rich", "with fields", fields={"to": "dead", "n": [1, 2]})
    assert [e.fields for e in store.events()] == [{}, {"to": "dead", "n": [1, 2]}]


def restart_registered(store: Store, worker: str, *, template_hash: str = "t",
                       **facts: Any) -> None:
    """Register ``worker``, then record its restart with ``facts`` (counted, reason...)."""
    register(store, worker)
    spec_id = store.latest_spec_id("h")
    assert spec_id is not None
    store.register_worker(worker, runtime="process", pid=None, pid_create_time=None,
                          spec_id=spec_id, template_hash=template_hash, template_digests={},
                          restarted=True, **facts)


def test_health_attempt_and_start_events_record_their_facts(store: Store) -> None:
    restart_registered(store, "w-1", counted=True, reason="exited (exit 1)")
    store.set_health("w-1", "recovering", "healthy", "heartbeating")
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store, "w-1")
    store.finish_attempt(c, "failed", exit_code=2, error="boom")

    fields = {e.kind: dict(e.fields) for e in store.events()}
    assert fields["worker.started"] == {"counted": False, "reason": ""}
    assert fields["worker.restarted"] == {"counted": True, "reason": "exited (exit 1)"}
    assert fields["worker.health"] == {"from": "recovering", "to": "healthy",
                                       "reason": "heartbeating"}
    assert fields["attempt.started"] == {"attempt": 1, "status": "running",
                                         "task_status": "running"}
    assert fields["attempt.failed"] == {"attempt": 1, "status": "failed",
                                        "task_status": "failed", "exit_code": 2}
    assert store.task(task_id).status == "failed"


def test_lost_attempt_event_records_its_facts(store: Store) -> None:
    store.add_tasks([("t", "p", 0)])
    claim(store, "w-1")
    store.requeue_attempts_of("w-1", "worker w-1 died", consume=True)
    (lost,) = [e for e in store.events() if e.kind == "attempt.lost"]
    assert lost.fields == {"attempt": 1, "status": "lost", "task_status": "failed",
                           "consumed": True}


# --------------------------------------------------------------------------- workers


def test_removed_worker_is_stopped_not_dead(store: Store) -> None:
    register(store, "w-1")
    store.set_health("w-1", "recovering", "healthy", "heartbeating")
    store.mark_worker_removed("w-1", "scaled down", now=50.0)

    (row,) = store.workers(include_removed=True)
    assert (row.removed, row.state, row.health, row.health_since) == (
        True, "stopped", "stopped", 50.0)
    last = store.events()[-1]
    assert (last.kind, last.fields) == (
        "worker.health", {"from": "healthy", "to": "stopped", "reason": "scaled down"})


def test_budget_reset_is_never_silent(store: Store) -> None:
    restart_registered(store, "w-1", template_hash="t2", reset_budget=True,
                       reason="spec changed")
    resets = [e for e in store.events() if e.kind == "worker.budget_reset"]
    assert [(e.worker_id, e.fields) for e in resets] == [("w-1", {"reason": "spec changed"})]


def test_forget_worker_process_clears_its_pid(store: Store) -> None:
    register(store, "w-1")
    store.set_worker_process("w-1", 4242, 12.5)
    store.forget_worker_process("w-1")
    (row,) = store.workers()
    assert (row.pid, row.pid_create_time) == (None, None)


def test_worker_heartbeat_is_the_latest_beat(store: Store) -> None:
    register(store, "w-1")
    assert store.worker_heartbeat("w-1") is None
    store.heartbeat("w-1", None, LEASE, now=123.0)
    assert store.worker_heartbeat("w-1") == 123.0
    assert store.worker_heartbeat("w-9") is None


# --------------------------------------------------------------------------- controller, pool


def test_controller_launch_then_register_records_one_start(store: Store) -> None:
    store.record_controller_launch(4242, 1.5, now=10.0)
    info = store.controller()
    assert info is not None
    assert (info.pid, info.pid_create_time, info.started_at, info.heartbeat_at) == (
        4242, 1.5, 10.0, 10.0)
    assert [e for e in store.events() if e.kind == "controller.started"] == []

    store.register_controller(4242, 1.5, now=11.0)
    starts = [e for e in store.events() if e.kind == "controller.started"]
    assert [e.fields for e in starts] == [{"pid": 4242}]


def test_latest_spec_is_the_newest_generation(store: Store) -> None:
    assert store.latest_spec() is None
    store.record_applied_spec(source_path=None, source_sha256="a", git_commit=None,
                              document_hash="ha", document='{"n": 1}', summary="one")
    second = store.record_applied_spec(source_path=None, source_sha256="b", git_commit=None,
                                       document_hash="hb", document='{"n": 2}', summary="two")
    assert store.latest_spec() == (second, {"n": 2})


def test_deleting_mark_survives_until_cleared(store: Store, db_path: Path) -> None:
    assert store.deleting() is None
    store.set_deleting("reconcile delete", now=100.0)
    store.set_deleting("reconcile delete (again)", now=200.0)  # the first start stays
    with Store(db_path) as other:  # an interrupted delete is visible to the next command
        assert other.deleting() == 100.0
    store.set_deleting(None, now=300.0)
    assert store.deleting() is None
    store.set_deleting(None, now=400.0)  # nothing to clear: no event
    kinds = [e.kind for e in store.events()]
    assert kinds == ["pool.deleting", "pool.deleting", "pool.deleting_cleared"]
    assert store.events()[0].fields == {"reason": "reconcile delete"}


# --------------------------------------------------------------------------- WAL regression

OPEN_AND_CLOSE = """
    import sys
    from pathlib import Path
    from reconciler.store.sqlite import Store
    s = Store(Path(sys.argv[1]))
    print(len(s.tasks()))
    s.close()
"""

READ_TITLES = """
    import json, sqlite3, sys
    db = sqlite3.connect(sys.argv[1])
    print(json.dumps([r[0] for r in db.execute("SELECT title FROM tasks ORDER BY id")]))
    db.close()
"""


@pytest.mark.parametrize("second_open", [True, False], ids=["second-open", "second-closed"])
def test_second_store_in_process_keeps_wal_alive(db_path: Path, second_open: bool) -> None:
    first = Store(db_path)
    try:
        first.add_tasks([("one", "p", 0)])
        second = Store(db_path)
        if not second_open:
            second.close()
        # another process opens and closes its own connection: if this process had
        # lost its locks, that close would checkpoint and delete the WAL under `first`
        assert python(OPEN_AND_CLOSE, str(db_path)).strip() == "1"

        first.add_tasks([("two", "p", 0)])

        assert json.loads(python(READ_TITLES, str(db_path))) == ["one", "two"]
        if second_open:
            assert [t.title for t in second.tasks()] == ["one", "two"]
            second.close()
    finally:
        first.close()


# --------------------------------------------------------------------------- pool lock

HOLD_LOCK = """
    import sys
    from pathlib import Path
    from reconciler.lock import pool_lock
    with pool_lock(Path(sys.argv[1]), what="apply"):
        print("held", flush=True)
        sys.stdin.readline()
"""


def test_pool_lock_held_elsewhere_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "apply.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(lock)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError) as caught, pool_lock(lock, what="delete",
                                                               timeout=0.5):
            pytest.fail("acquired a lock another process holds")
        assert f"pid {holder.pid}" in caught.value.message
        assert "reconcile apply" in caught.value.message
        assert str(lock) in (caught.value.hint or "")
    finally:
        _, err = holder.communicate("\n", timeout=30)
    assert holder.returncode == 0, err
    assert mode(lock) == 0o600

    # released when the holder is done
    with pool_lock(lock, what="apply", timeout=5):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_pool_lock_released_when_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "apply.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(lock)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    holder.stdout.close()
    assert holder.stdin is not None
    holder.stdin.close()
    with pool_lock(lock, what="apply", timeout=10):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


# --------------------------------------------------------------------------- task files


def test_task_file_list_with_prompt_file_relative_to_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "batch"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "second.md").write_text("Do the second thing.\n")
    tasks = folder / "tasks.yaml"
    tasks.write_text(textwrap.dedent("""\
        - title: First
          prompt: do the first thing
          priority: 3
        - title: Second
          promptFile: prompts/second.md
        - title: Third
    """))
    monkeypatch.chdir(tmp_path)  # promptFile must not depend on the working directory

    assert read_task_file(tasks) == [
        NewTask("First", "do the first thing", 3),
        NewTask("Second", "Do the second thing.\n", 0),
        NewTask("Third", "Third", 0),
    ]


def test_task_file_mapping_with_tasks_key(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks:\n  - title: Only\n    priority: -1\n")
    assert read_task_file(tasks) == [NewTask("Only", "Only", -1)]


def test_task_file_json_is_accepted(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"tasks": [{"title": "A", "prompt": "a"}]}))
    assert read_task_file(tasks) == [NewTask("A", "a", 0)]


@pytest.mark.parametrize(("text", "line", "problem"), [
    pytest.param("- title: ok\n- title: bad\n  prio: 2\n", 3, "unknown key `prio`",
                 id="unknown-key"),
    pytest.param("- title: ok\n- prompt: no title here\n", 2, "`title` must be a string",
                 id="missing-title"),
    pytest.param("tasks:\n  - title: ok\n    priority: high\n", 3, "`priority` must be",
                 id="priority-string"),
    pytest.param("- title: ok\n  priority: 1.5\n", 2, "`priority` must be",
                 id="priority-float"),
    pytest.param("- title: ok\n  priority: true\n", 2, "`priority` must be",
                 id="priority-bool"),
    pytest.param("- title: '   '\n", 1, "must not be empty", id="blank-title"),
    pytest.param("- title: ok\n  promptFile: missing.md\n", 2, "cannot read promptFile",
                 id="missing-prompt-file"),
    pytest.param("- title: ok\n  prompt: [1, 2]\n", 2, "`prompt` must be a string",
                 id="prompt-list"),
    pytest.param("- title: ok\n- just a string\n", 2, "expected a mapping",
                 id="item-not-mapping"),
    pytest.param("- title: ok\n  key: [unclosed\n", 3, "", id="yaml-syntax"),
])
def test_task_file_errors_name_file_line_and_column(tmp_path: Path, text: str, line: int,
                                                    problem: str) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(text)
    with pytest.raises(TaskError) as caught:
        read_task_file(tasks)
    message = caught.value.message
    assert re.match(rf"{re.escape(str(tasks))}:{line}:\d+: ", message), message
    assert problem in message


@pytest.mark.parametrize("text", [
    pytest.param("[]\n", id="empty-list"),
    pytest.param("title: not a list\n", id="mapping-without-tasks"),
    pytest.param("tasks: 3\n", id="tasks-not-a-list"),
    pytest.param("", id="empty-file"),
])
def test_task_file_must_hold_a_list(tmp_path: Path, text: str) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(text)
    with pytest.raises(TaskError, match="expected a non-empty list"):
        read_task_file(tasks)


def test_task_file_missing(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no such file"):
        read_task_file(tmp_path / "absent.yaml")




def test_a_truncated_store_beside_the_pools_logs_is_refused_not_started_afresh(
        tmp_path: Path) -> None:
    """Issue 7, item 6: a store.db truncated to 0 bytes was silently treated as a new
    store, losing every task and the history (and `status` exited 0)."""
    paths = PoolPaths(tmp_path / "state", "p").create()
    with Store(paths.store) as store:
        store.add_tasks([("t", "p", 0)] * 3)
    (paths.logs / "task-1-a1.log").write_text("output\n")
    paths.store.write_bytes(b"")
    with pytest.raises(StoreError, match="truncated or replaced"):
        Store(paths.store)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir",
                           str(paths.state_dir), "status", "--pool", "p"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "truncated or replaced" in proc.stderr
    assert paths.store.stat().st_size == 0  # nothing was written into it


def test_a_new_store_in_a_fresh_pool_is_created(tmp_path: Path) -> None:
    paths = PoolPaths(tmp_path / "state", "p").create()
    (paths.logs / "worker.log").write_text("a log written before the first task\n")
    with Store(paths.store) as store:  # created now: nothing could have been lost
        assert store.queue_counts().total == 0


def test_waiting_for_many_tasks_costs_one_query_per_poll_and_none_when_nothing_changed(
        store: Store) -> None:
    """Issue 9: `task wait` read each task with its own query on every poll (a whole core
    for a large wait); now one query, and only after another process wrote."""
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(1000)])
    assert store.task_statuses([ids[0], ids[-1], 10**9]) == {ids[0]: "queued",
                                                              ids[-1]: "queued"}
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        assert wait_for_tasks(store, list(ids), 0.45, show=False) is False
    finally:
        store._db.set_trace_callback(None)
    reads = [s for s in statements if "FROM tasks" in s]
    assert len(reads) == 1, reads[:3]  # nothing changed after the first look
