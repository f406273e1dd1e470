"""The SQLite task store on real files and real processes; the pool lock; task files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import LockHeldError, StoreError, TaskError
from reconciler.lock import pool_lock
from reconciler.model import Claim, RetryPolicy
from reconciler.paths import PoolPaths
from reconciler.store.sqlite import Store
from reconciler.taskfile import NewTask, read_task_file
from tests.helpers import ROOT

LEASE = 60.0


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


def claim(store: Store, worker: str = "w-1", now: float | None = None) -> Claim:
    c = store.claim_task(worker, LEASE, now=now)
    assert c is not None, "expected a runnable task"
    return c


def register(store: Store, worker: str) -> None:
    spec_id = store.record_applied_spec(source_path=None, source_sha256="s", git_commit=None,
                                        document_hash="h", document="{}", summary="spec")
    store.register_worker(worker, runtime="process", pid=None, pid_create_time=None,
                          spec_id=spec_id, template_hash="t", template_digests={},
                          restarted=False)


# --------------------------------------------------------------------------- claim order


def test_claim_order_is_priority_then_oldest(store: Store) -> None:
    store.add_tasks([("low", "p", 0)], now=1.0)
    store.add_tasks([("high-old", "p", 5)], now=2.0)
    store.add_tasks([("mid", "p", 1)], now=3.0)
    store.add_tasks([("high-new", "p", 5)], now=4.0)

    order = [claim(store, now=10.0).task.title for _ in range(4)]

    assert order == ["high-old", "high-new", "mid", "low"]
    assert store.claim_task("w-1", LEASE, now=10.0) is None
    assert store.queue_counts().running == 4


def test_claim_respects_not_before(store: Store) -> None:
    urgent, other = store.add_tasks([("urgent", "p", 9), ("other", "p", 0)], now=1.0)
    first = claim(store, now=10.0)
    assert first.task.id == urgent
    assert store.finish_attempt(first, "failed", error="flaky", policy=RetryPolicy(max_attempts=2,
                                backoff=100.0), now=10.0) == "queued"
    not_before = store.task(urgent).not_before
    assert not_before > 10.0

    # the retry waits: the lower-priority task goes first, then nothing is runnable
    assert claim(store, now=11.0).task.id == other
    assert store.claim_task("w-1", LEASE, now=not_before - 0.01) is None
    retry = claim(store, now=not_before)
    assert (retry.task.id, retry.attempt_number) == (urgent, 2)


# --------------------------------------------------------------------------- concurrency

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


# --------------------------------------------------------------------------- fencing


def test_finish_with_wrong_token_is_rejected(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    real = claim(store)
    forged = dataclasses.replace(real, lease_token="0" * 32)

    assert store.finish_attempt(forged, "succeeded", exit_code=0) is None
    assert store.update_attempt(forged, branch="b", worktree="/w", log_path="/l") is False

    assert store.task(task_id).status == "running"
    (attempt,) = store.attempts(task_id)
    assert (attempt.status, attempt.exit_code, attempt.branch) == ("running", None, None)
    # the holder still can
    assert store.update_attempt(real, branch="b", worktree="/w", log_path="/l") is True
    assert store.finish_attempt(real, "succeeded", exit_code=0) == "succeeded"
    assert store.task(task_id).branch == "b"


def test_requeued_attempt_is_fenced(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    old = claim(store, "w-1")

    assert store.requeue_attempts_of("w-1", "worker w-1 died", consume=False) == [task_id]
    assert store.task(task_id).status == "queued"
    assert store.finish_attempt(old, "succeeded", exit_code=0) is None
    assert store.update_attempt(old, branch="late", worktree="/w", log_path="/l") is False
    task = store.task(task_id)
    assert (task.status, task.branch, task.last_error) == ("queued", None, "worker w-1 died")
    assert [a.status for a in store.attempts(task_id)] == ["lost"]

    new = claim(store, "w-2")
    assert new.attempt_number == 2
    assert store.finish_attempt(old, "failed", error="late") is None
    assert store.finish_attempt(new, "succeeded", exit_code=0) == "succeeded"
    assert [a.status for a in store.attempts(task_id)] == ["lost", "succeeded"]


@pytest.mark.parametrize(("consume", "max_attempts", "expected", "budget_used"), [
    pytest.param(True, 1, "failed", 1, id="crash-uses-the-last-attempt"),
    pytest.param(True, 2, "queued", 1, id="crash-with-attempts-left"),
    pytest.param(False, 1, "queued", 0, id="operator-stop-is-free"),
])
def test_lost_attempts_and_the_attempt_budget(store: Store, consume: bool, max_attempts: int,
                                              expected: str, budget_used: int) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    claim(store, "w-1")
    store.requeue_attempts_of("w-1", "worker w-1 died", consume=consume,
                              policy=RetryPolicy(max_attempts=max_attempts))
    task = store.task(task_id)
    assert (task.status, task.attempts, task.last_error) == (expected, budget_used,
                                                             "worker w-1 died")
    if expected == "queued":  # the next attempt still gets a number of its own
        assert claim(store, "w-2").attempt_number == 2


def test_task_text_with_nul_or_huge_priority_is_refused(store: Store) -> None:
    with pytest.raises(TaskError, match="NUL"):
        store.add_tasks([("t", "a\x00b", 0)])
    with pytest.raises(TaskError, match="out of range"):
        store.add_tasks([("t", "p", 10**20)])
    assert store.tasks() == []


# --------------------------------------------------------------------------- retries


def test_retries_back_off_then_fail_with_last_error(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)], now=0.0)
    backoff = 10.0
    now = 1000.0
    for number in (1, 2):
        c = claim(store, now=now)
        assert c.attempt_number == number
        status = store.finish_attempt(c, "failed", exit_code=1, error=f"boom {number}",
                                      policy=RetryPolicy(max_attempts=3, backoff=backoff), now=now)
        assert status == "queued"
        task = store.task(task_id)
        delay = backoff * 2 ** (number - 1)
        assert now + 0.8 * delay <= task.not_before <= now + 1.2 * delay
        assert task.last_error == f"boom {number}"
        now = task.not_before

    last = claim(store, now=now)
    policy = RetryPolicy(max_attempts=3, backoff=backoff)
    assert store.finish_attempt(last, "timeout", error="timed out after 5s", policy=policy,
                                now=now) == "failed"
    task = store.task(task_id)
    assert (task.status, task.attempts, task.last_error) == ("failed", 3, "timed out after 5s")
    assert [a.status for a in store.attempts(task_id)] == ["failed", "failed", "timeout"]
    assert store.claim_task("w-1", LEASE, now=now + 10_000) is None


def test_backoff_jitter_stays_within_bounds(store: Store) -> None:
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(40)], now=0.0)
    for _ in ids:
        store.finish_attempt(claim(store, now=1.0), "failed", error="x",
                             policy=RetryPolicy(max_attempts=5, backoff=4.0), now=1.0)
    delays = [store.task(i).not_before - 1.0 for i in ids]
    assert all(3.2 <= d <= 4.8 for d in delays), delays
    assert len(set(delays)) > 1, "no jitter"


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_task_at_once(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    assert store.cancel_task(task_id) == "cancelled"
    assert store.task(task_id).status == "cancelled"
    assert store.claim_task("w-1", LEASE) is None


def test_cancel_running_task_is_requested_through_heartbeat(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store)
    assert store.heartbeat("w-1", c, LEASE) == (False, False)

    assert store.cancel_task(task_id) == "running"
    task = store.task(task_id)
    assert (task.status, task.cancel_requested) == ("running", True)
    assert store.heartbeat("w-1", c, LEASE) == (False, True)

    assert store.finish_attempt(c, "cancelled", error="cancelled by operator") == "cancelled"
    assert store.task(task_id).status == "cancelled"


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_task_is_an_error(store: Store, final: str) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    store.finish_attempt(claim(store), final, error=None if final == "succeeded" else "x")
    assert store.task(task_id).status == final
    with pytest.raises(TaskError, match=f"already {final}"):
        store.cancel_task(task_id)
    assert store.task(task_id).status == final


def test_cancel_unknown_task_is_an_error(store: Store) -> None:
    with pytest.raises(TaskError, match="no task with id 42"):
        store.cancel_task(42)


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_reports_drain_and_extends_lease(store: Store) -> None:
    register(store, "w-1")
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store, "w-1", now=100.0)
    assert store.attempts(task_id)[0].lease_expires_at == 100.0 + LEASE

    assert store.heartbeat("w-1", c, 30.0, now=150.0) == (False, False)
    assert store.attempts(task_id)[0].lease_expires_at == 180.0
    assert store.workers()[0].heartbeat_at == 150.0

    store.request_drain("w-1", "spec changed")
    assert store.heartbeat("w-1", c, 30.0, now=160.0) == (True, False)
    assert store.heartbeat("w-1", None, 30.0, now=170.0) == (True, False)
    assert store.attempts(task_id)[0].lease_expires_at == 190.0


def test_heartbeat_with_a_fenced_claim_does_not_extend(store: Store) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store, "w-1", now=100.0)
    forged = dataclasses.replace(c, lease_token="f" * 32)
    store.heartbeat("w-1", forged, LEASE, now=150.0)
    assert store.attempts(task_id)[0].lease_expires_at == 100.0 + LEASE


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


def test_existing_loose_pool_directories_are_tightened(tmp_path: Path) -> None:
    paths = PoolPaths(tmp_path / "state", "pool")
    paths.logs.mkdir(parents=True, mode=0o755)
    paths.logs.chmod(0o755)
    paths.create()
    assert mode(paths.logs) == 0o700


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


@pytest.mark.parametrize(("status", "exit_code", "policy", "expected"), [
    pytest.param("timeout", None, RetryPolicy(3, 0.0, frozenset({"failed"})), "failed",
                 id="timeout-not-in-retryOn"),
    pytest.param("failed", 2, RetryPolicy(3, 0.0, no_retry_exit_codes=frozenset({2})),
                 "failed", id="non-retryable-exit-code"),
    pytest.param("failed", 1, RetryPolicy(3, 0.0, no_retry_exit_codes=frozenset({2})),
                 "queued", id="retryable-exit-code"),
])
def test_retry_policy_decides_what_is_retried(store: Store, status: str, exit_code: int | None,
                                              policy: RetryPolicy, expected: str) -> None:
    store.add_tasks([("t", "p", 0)])
    assert store.finish_attempt(claim(store, "w-1"), status, exit_code=exit_code,
                                error="boom", policy=policy) == expected


def test_rate_limited_attempt_is_free_and_pauses_claiming(store: Store) -> None:
    store.add_tasks([("a", "p", 5), ("b", "p", 0)], now=0.0)
    first = claim(store, "w-1", now=1.0)
    assert store.finish_attempt(first, "rate_limited", exit_code=75, error="limit",
                                policy=RetryPolicy(1), resume_at=100.0, now=2.0) == "queued"
    task = store.task(first.task.id)
    assert (task.status, task.attempts, task.not_before) == ("queued", 0, 100.0)
    assert store.paused_until() == 100.0
    assert store.claim_task("w-2", 30, now=50.0) is None  # even task b waits
    resumed = store.claim_task("w-2", 30, now=100.5)
    assert resumed is not None and resumed.task.id == first.task.id
    assert resumed.attempt_number == 2
