"""The operations layer against real tmux, processes and SQLite: the races and words
that a new user's walk found wrong (issue 6's bugs 1-7), each reproduced."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from reconciler.actions import DrainWorker, Plan, StartWorker, StopWorker, Wait
from reconciler.errors import LockHeldError
from reconciler.liveness import CONTROLLER_STALE_AFTER, controller_alive
from reconciler.lock import pool_lock, take_lock
from reconciler.model import Observation
from reconciler.operations import apply, controller_pass
from reconciler.paths import pool_paths
from reconciler.pool import Pool
from reconciler.proctree import create_time_of
from reconciler.report import render
from reconciler.report.plan import plan_document
from reconciler.report.status import status_document
from reconciler.spec import load_spec
from reconciler.store.sqlite import Store
from tests.e2e import (
    add_task,
    diff,
    events,
    pool_dir,
    reconcile_json,
    running_attempt,
    show_task,
    state_dir,
    status,
    worker_pid,
    workers,
)
from tests.helpers import (
    gone,
    one_error_line,
    reconcile,
    reconcile_background,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.e2e


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), message=f"pid {pid} to die")


def test_a_failed_process_worker_is_released_once_and_diff_renders_it(
        host: Path, git_repo: Path) -> None:
    """Bug 1: ``diff`` and ``apply`` crashed (KeyError 'release') once a ``runtime: process``
    worker was failed, and the release was planned again on every pass."""
    spec = write_spec(host, replicas=1, runtime="process")
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, "[seconds=60]")
    agent = running_attempt(spec, task)["pid"]
    with Store(pool_dir(host) / "store.db") as store:
        store.set_health("w-1", "healthy", "failed", "test: budget exhausted")
    _kill(worker_pid(spec, "w-1"))  # its agent lives on, in a session of its own
    pending = diff(spec)
    assert pending.returncode == 2 and "Traceback" not in pending.stderr, pending.stderr
    assert f"- release w-1: failed: kill what it left running, requeue its task (requeues " \
           f"task {task})" in pending.stdout
    reconcile("apply", "-f", str(spec), check=True)
    wait_for(lambda: gone(agent), message="the failed worker's agent to be killed")
    settled = diff(spec, "-o", "json")
    assert settled.returncode == 0, settled.stdout  # released once: nothing left to do
    assert workers(spec)["w-1"]["health"] == "failed"
    assert show_task(spec, task)["status"] == "queued"


def test_apply_during_a_delete_fails_clearly_and_is_not_undone(host: Path,
                                                               git_repo: Path) -> None:
    """Bug 2: ``delete`` held the lock only while stopping the controller, so an apply
    during the drain reported success and was then silently undone."""
    spec = write_spec(host, replicas=1, extra={"worker": {"stopGrace": "30s"},
                                               "controller": {"enabled": True}})
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, "[seconds=6]")
    running_attempt(spec, task)
    deleting = reconcile_background("delete", "-f", str(spec))
    try:
        wait_for(lambda: status(spec)["deleting"] is not None, message="delete to begin")
        # delete holds the controller's lock once it stopped: status must not read that
        # as a running controller
        wait_for(lambda: status(spec)["controller"]["running"] is False,
                 message="status to see the controller stopped")
        assert deleting.poll() is None, "the delete should still wait for the busy worker"
        refused = reconcile("apply", "-f", str(spec), "--lock-timeout", "1s")
        line = one_error_line(refused)
        assert "delete" in line and "lock" in line, line
        assert deleting.wait(timeout=60) == 0
    finally:
        if deleting.poll() is None:
            deleting.kill()
    after = status(spec)
    assert after["workers"] == [] and after["deleting"] is None
    assert reconcile_json("task", "show", task, "-f", str(spec))["status"] == "succeeded"


def test_delete_stops_workers_it_cannot_see_through_tmux(host: Path, git_repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path_factory: pytest.TempPathFactory
                                                        ) -> None:
    """``tmux -L`` finds a server under ``$TMUX_TMPDIR``: a delete run with another one
    saw no window, forgot the workers' records and said "deleted" while they kept
    taking tasks.  Their pids (checked with their start times) tell the truth."""
    spec = write_spec(host, replicas=2)
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    pids = [worker_pid(spec, w) for w in ("w-1", "w-2")]
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path_factory.mktemp("other-tmux")))
    assert {w["id"] for w in status(spec)["workers"] if w["pid"]} == {"w-1", "w-2"}
    reconcile("delete", "-f", str(spec), check=True)
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=30,
             message="the workers to be stopped")
    assert status(spec)["workers"] == []


def test_a_controller_pass_works_toward_the_generation_applied_while_it_waited(
        host: Path, git_repo: Path) -> None:
    """Bug 3: the controller read the spec before taking the lock, so a pass that waited
    for an apply acted on the older spec (and drained the worker the apply started)."""
    older = load_spec(write_spec(host, replicas=0, filename="a.yaml"))
    newer = load_spec(write_spec(host, replicas=1, filename="b.yaml"))
    paths = pool_paths(state_dir(host), older.name)
    apply(Pool(paths, older))
    taken, release = threading.Event(), threading.Event()

    def apply_newer_while_holding_the_lock() -> None:
        with pool_lock(paths.lock, what="test", timeout=5):
            taken.set()
            release.wait(10)
        apply(Pool(paths, newer))

    holder = threading.Thread(target=apply_newer_while_holding_the_lock)
    holder.start()
    taken.wait(5)
    with Store(paths.store) as store:
        with pytest.raises(LockHeldError):  # the controller waits its turn ...
            controller_pass(Pool(paths, older), store)
        release.set()
        holder.join(30)
        result = controller_pass(Pool(paths, older), store)  # ... then sees the newest
    assert result is not None
    assert result.plan.generation == 2 and result.spec.replicas == 1
    assert not [a for a in result.plan.actions if isinstance(a, (DrainWorker, StopWorker))]


def test_operator_restart_gives_a_fresh_budget_that_the_next_crash_does_not_exhaust(
        host: Path, git_repo: Path) -> None:
    """Bug 4: ``restart`` promised a fresh budget, but its own restart was counted, so
    status showed "1 recent" and the next crash failed the worker again."""
    spec = write_spec(host, replicas=1, extra={
        "restartPolicy": {"maxRestarts": 1, "backoff": "100ms", "window": "10m"}})
    reconcile("apply", "-f", str(spec), "--wait", check=True)

    def crash_and_apply() -> None:
        _kill(worker_pid(spec, "w-1"))
        wait_for(lambda: reconcile("apply", "-f", str(spec), "--wait", "--timeout", "5s",
                                   ).returncode == 0 or workers(spec)["w-1"]["health"]
                 == "failed", timeout=60, message="a restart or a failure")

    crash_and_apply()  # restart 1 of 1
    crash_and_apply()  # over budget
    assert workers(spec)["w-1"]["health"] == "failed"
    said = reconcile("restart", "w-1", "-f", str(spec), check=True).stdout
    assert "restarted now" in said and "not counted" in said
    after = workers(spec)["w-1"]
    assert after["recent_restarts"] == 0 and after["pid"], after
    assert events(spec, "worker.budget_reset")
    crash_and_apply()  # the fresh budget's first restart: not failed
    assert workers(spec)["w-1"]["health"] != "failed"
    assert workers(spec)["w-1"]["recent_restarts"] == 1


def test_one_controller_start_records_one_started_event(host: Path, git_repo: Path) -> None:
    """Bug 5: the launching executor and the controller itself both recorded
    ``controller.started``."""
    spec = write_spec(host, replicas=0, extra={"controller": {"enabled": True,
                                                               "interval": "200ms"}})
    reconcile("apply", "-f", str(spec), check=True)

    def looped() -> bool:  # registered itself, then heartbeat from its loop
        with Store(pool_dir(host) / "store.db") as store:
            record = store.controller()
        return bool(record and record.heartbeat_at and record.started_at
                    and record.heartbeat_at > record.started_at)

    wait_for(looped, message="the controller to run its loop")
    assert len(events(spec, "controller.started")) == 1
    reconcile("delete", "-f", str(spec), check=True)


def test_waiting_actions_are_shown_in_text_and_json(host: Path, git_repo: Path) -> None:
    """Bug 6: a restart waiting for its backoff, and a drain in progress, appeared
    neither in ``diff``'s text nor in its JSON."""
    spec = write_spec(host, replicas=1, extra={"restartPolicy": {"backoff": "30s"}})
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    _kill(worker_pid(spec, "w-1"))
    reconcile("apply", "-f", str(spec), "--wait", check=True)  # a first crash: at once
    _kill(worker_pid(spec, "w-1"))
    reconcile("apply", "-f", str(spec), check=True)  # records the death; the backoff starts
    text = diff(spec)
    assert text.returncode == 2 and "(restart backoff)]" in text.stdout, text.stdout
    document = reconcile("diff", "-f", str(spec), "-o", "json")
    (action,) = json.loads(document.stdout)["actions"]
    assert action["action"] == "restart" and action["waiting"]["until"] > 0
    assert "restart backoff" in action["waiting"]["why"]


def test_a_scale_down_ends_stopped_not_dead(host: Path, git_repo: Path) -> None:
    """Bug 7: a planned stop (scale-down, roll) showed the worker as ``dead``, so anything
    alerting on ``dead`` raised false alarms."""
    spec = write_spec(host, replicas=2)
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    smaller = write_spec(host, replicas=1)
    reconcile("apply", "-f", str(smaller), "--wait", check=True)
    wait_for(lambda: "w-2" not in workers(spec), message="w-2 to be stopped")
    transitions = [e["fields"] for e in events(spec, "worker.health")
                   if e["worker_id"] == "w-2"]
    assert transitions and transitions[-1]["to"] == "stopped", transitions
    assert all(t["to"] != "dead" for t in transitions), transitions


def test_an_interrupted_delete_is_named_by_status_and_finished_by_a_second_delete(
        host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    with Store(pool_dir(host) / "store.db") as store:  # as a Ctrl-C'd delete leaves it
        store.set_deleting("reconcile delete")
    named = status(spec)
    assert named["deleting"]["state"] == "interrupted" and not named["ok"]
    assert any("was interrupted" in p for p in named["problems"])
    reconcile("delete", "-f", str(spec), check=True)
    finished = status(spec)
    assert finished["deleting"] is None and finished["workers"] == []


def test_plan_renderings_include_waits(capsys: pytest.CaptureFixture[str]) -> None:
    wait = Wait(StartWorker("w-1", "not running"), "in 3s (restart backoff)", until=10.0)
    the_plan = Plan("p", (wait,), at=7.0)
    render.render_plan(the_plan, title="t")
    assert "[in 3s (restart backoff)]" in capsys.readouterr().out
    assert plan_document(the_plan)["actions"][0]["waiting"] == {
        "until": 10.0, "why": "in 3s (restart backoff)"}


def test_a_controller_in_a_long_pass_is_shown_busy_not_down(tmp_path: Path) -> None:
    """Issue 7 item 5: a controller whose pass ran past the heartbeat's staleness (it
    waited out agents one after another) was reported down, with ``apply`` failing on
    the lock.  Now it records what the pass does, and is shown busy with it."""
    lock = tmp_path / "controller.lock"
    fd = take_lock(lock, 1.0)
    assert fd is not None
    now = time.time()
    try:
        with Store(tmp_path / "store.db") as store:
            store.register_controller(os.getpid(), create_time_of(os.getpid()),
                                      now=now - CONTROLLER_STALE_AFTER - 5)
            assert controller_alive(lock, store.controller(), now) is False  # stale: down
            store.set_controller_busy("restart w-1; release w-2", now=now - 70)
            info = store.controller()
            assert info is not None and info.busy_with == "restart w-1; release w-2"
            assert controller_alive(lock, info, now) is True
            observed = Observation("testpool", now, controller_alive=True, controller=info)
            document = status_document(observed, now, None, controller=info)
            assert document["controller"]["busy"] == {"with": "restart w-1; release w-2",
                                                      "since": now - 70}
            assert controller_alive(lock, info, now + 600) is False  # stuck: hung
            store.set_controller_busy(None)
            assert controller_alive(lock, store.controller(), now) is False
    finally:
        os.close(fd)
