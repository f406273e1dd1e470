"""A finished result the store refused is kept on disk and recorded later (issue 7 item 3).

Real SQLite and, end to end, a real pool: a worker that kept its result and
then died must not have its attempt judged lost and its task run again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from reconciler import pending
from reconciler.model import Claim, RetryPolicy
from reconciler.store.sqlite import Store
from tests.e2e import add_task, pool_dir, running_attempt, show_task, worker_pid
from tests.helpers import gone, reconcile, wait_for, write_spec


def _claimed(tmp_path: Path) -> tuple[Store, Path]:
    root = tmp_path / "pool"
    root.mkdir(mode=0o700)
    store = Store(root / "store.db")
    store.add_tasks([("t", "p", 0)])
    return store, root


def test_a_kept_result_is_recorded_once_the_store_takes_it(tmp_path: Path) -> None:
    store, root = _claimed(tmp_path)
    claim = store.claim_task("w-1", 60)
    assert claim is not None
    kept = pending.save(root, claim, status="succeeded", exit_code=0, error=None,
                        output_tail="done", resume_at=None, ended_at=123.0)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    assert pending.flush(root, store, RetryPolicy()) == 0

    assert store.task(claim.task.id).status == "succeeded"
    (attempt,) = store.attempts(claim.task.id)
    assert (attempt.status, attempt.ended_at, attempt.output_tail) == ("succeeded", 123.0,
                                                                       "done")
    assert not kept.exists()
    store.close()


def test_a_kept_result_whose_lease_was_lost_is_dropped_not_recorded(tmp_path: Path) -> None:
    store, root = _claimed(tmp_path)
    claim = store.claim_task("w-1", 60)
    assert claim is not None
    kept = pending.save(root, claim, status="succeeded", exit_code=0, error=None,
                        output_tail="", resume_at=None, ended_at=None)
    store.requeue_attempts_of("w-1", "worker gone", consume=False)

    assert pending.flush(root, store, RetryPolicy(max_attempts=3)) == 0

    assert store.task(claim.task.id).status == "queued"
    assert not kept.exists()
    store.close()


@pytest.mark.e2e
def test_a_dead_worker_s_kept_result_is_recorded_not_rerun(host: Path,
                                                           git_repo: Path) -> None:
    """The worker finished its task, could not record it, kept it, and died.  Before,
    the next pass ended the attempt as lost and ran the task again."""
    spec = write_spec(host, replicas=1, runtime="process",
                      extra={"tasks": {"maxAttempts": 3}})
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, "[seconds=60]")
    attempt = running_attempt(spec, task)
    pid = worker_pid(spec, "w-1")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), message="the worker to die")
    store_path = pool_dir(host) / "store.db"
    with sqlite3.connect(store_path) as db:
        token = db.execute("SELECT lease_token FROM attempts WHERE id = ?",
                           (attempt["id"],)).fetchone()[0]
    with Store(store_path) as store:
        row = store.task(int(task))
        pending.save(pool_dir(host), Claim(row, attempt["id"], 1, token),
                     status="succeeded", exit_code=0, error=None, output_tail="kept",
                     resume_at=None, ended_at=None)

    reconcile("apply", "-f", str(spec), "--wait", check=True)

    shown = show_task(spec, task)
    assert shown["status"] == "succeeded", shown
    assert [a["status"] for a in shown["attempt_details"]] == ["succeeded"]
    assert not list(pending.directory(pool_dir(host)).glob("*.json"))
    reconcile("delete", "-f", str(spec), "--force", check=True)
