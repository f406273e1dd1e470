"""Wake-ups instead of polling: bells (named pipes), the pidfd watch of the controller,
and the idle worker's sleep until a queued task is due.

The end-to-end tests give the controller a resync interval of an hour, so only an
event can explain a reaction within the test's time.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.controller import ExitWatch
from reconciler.model import Observation, RetryPolicy, RuntimeInstance, WorkerRow
from reconciler.store.sqlite import Store
from reconciler.wakeup import Bell, controller_bell, ring, ring_workers, worker_bell
from tests.e2e import add_task, apply, events, replaced, show_task, worker_pid
from tests.helpers import reconcile, wait_for, write_spec


def readable(bell: Bell, timeout: float = 0.0) -> bool:
    ready, _, _ = select.select([bell], [], [], timeout)
    return bool(ready)


def test_a_ring_wakes_the_listener_until_it_clears(tmp_path: Path) -> None:
    bell = Bell(controller_bell(tmp_path))
    try:
        assert stat.S_IMODE(bell.path.stat().st_mode) == 0o600
        assert not readable(bell)
        assert ring(bell.path) and ring(bell.path)
        assert readable(bell, 1.0)
        assert bell.clear() == 2
        assert not readable(bell)  # cleared, and no end-of-file either
    finally:
        bell.close()


def test_ringing_nobody_is_false_and_never_blocks(tmp_path: Path) -> None:
    path = controller_bell(tmp_path)
    assert not ring(path)  # no pipe at all
    Bell(path).close()  # a pipe nobody listens on any more
    started = time.monotonic()
    assert not ring(path)
    assert time.monotonic() - started < 1.0


def test_a_ring_never_writes_into_a_regular_file(tmp_path: Path) -> None:
    path = controller_bell(tmp_path)
    path.parent.mkdir()
    path.write_text("keep")
    assert not ring(path)
    assert path.read_text() == "keep"


def test_a_full_pipe_drops_the_ring_without_blocking(tmp_path: Path) -> None:
    bell = Bell(controller_bell(tmp_path))
    try:
        for _ in range(70_000):  # past a pipe's 64 KiB
            ring(bell.path)
        assert readable(bell)
    finally:
        bell.close()


def test_closing_leaves_a_successors_bell_alone(tmp_path: Path) -> None:
    old = Bell(worker_bell(tmp_path, "w-1"))
    old.path.unlink()
    new = Bell(worker_bell(tmp_path, "w-1"))  # the replacement made its own
    try:
        old.close(unlink=True)
        assert new.path.exists() and ring(new.path) and readable(new, 1.0)
    finally:
        new.close(unlink=True)
    assert not new.path.exists()


def test_without_named_pipes_a_bell_still_wakes_its_own_process(tmp_path: Path) -> None:
    """A filesystem that refuses FIFOs (here: a bell path under a regular file) must not
    stop a worker from starting: its stops still wake it, others' rings are lost."""
    (tmp_path / "bells").write_text("not a directory")
    bell = Bell(worker_bell(tmp_path, "w-1"))
    try:
        assert not bell.shared
        bell.ring()
        assert readable(bell, 1.0) and bell.clear() == 1
        assert not ring(bell.path)
    finally:
        bell.close(unlink=True)
    assert (tmp_path / "bells").read_text() == "not a directory"


def test_ring_workers_rings_every_worker_and_not_the_controller(tmp_path: Path) -> None:
    bells = [Bell(worker_bell(tmp_path, w)) for w in ("w-1", "w-2")]
    controller = Bell(controller_bell(tmp_path))
    try:
        assert ring_workers(tmp_path) == 2
        assert all(readable(b, 1.0) for b in bells)
        assert not readable(controller)
    finally:
        for bell in (*bells, controller):
            bell.close()


def test_an_idle_worker_sleeps_until_a_retry_is_due(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        assert store.next_claim_at() is None  # nothing queued
        (task,) = store.add_tasks([("t", "p", 0)])
        assert store.next_claim_at() is None  # claimable now: no reason to sleep
        claim = store.claim_task("w-1", 30)
        assert claim is not None
        now = time.time()
        store.finish_attempt(claim, "failed", exit_code=1, error="boom",
                             policy=RetryPolicy(3, 60.0, frozenset({"failed"}), frozenset()),
                             now=now)
        due = store.next_claim_at(now)
        assert due is not None and now + 30 <= due <= now + 90
        assert store.task(task).status == "queued"


def test_the_exit_watch_sees_a_process_exit_at_once(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        row = WorkerRow(id="w-1", runtime="process", tmux_socket=None, pid=child.pid,
                        pid_create_time=None, spec_id=1, template_hash=None,
                        template_digests={}, state="idle", current_task=None,
                        started_at=time.time(), heartbeat_at=None, restarts=0,
                        drain_requested=False, exited_at=None, exit_code=None,
                        removed=False)
        seen = Observation("p", time.time(), (RuntimeInstance("w-1", "process", child.pid,
                                                               True),), (row,))
        with selectors.DefaultSelector() as selector:
            watch = ExitWatch(selector)
            watch.update(seen)
            assert selector.select(0) == []
            os.kill(child.pid, signal.SIGKILL)
            (key, _), = selector.select(10)
            assert key.data == ("w-1", child.pid)
            watch.exited(key.data)
            assert watch.seen_alive_after_exit(seen)  # the observers lag: look again soon
            watch.update(seen)  # an exit already seen is not watched again
            assert selector.select(0) == []
            watch.close()
    finally:
        child.kill()
        child.wait()


@pytest.mark.e2e
def test_a_crash_wakes_the_controller_without_any_poll(host: Path, git_repo: Path) -> None:
    """With a resync interval of an hour and no other worker heartbeating, only the
    exit itself can make the controller replace the worker."""
    spec = write_spec(host, replicas=1, extra={"controller": {"enabled": True,
                                                              "interval": "1h"}})
    apply(spec)
    old = worker_pid(spec, "w-1")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: replaced(spec, "w-1", old), timeout=30, message="w-1 replaced")
    restarts = [e for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"]
    assert restarts, "the replacement was not the controller's restart"


@pytest.mark.e2e
def test_a_restarted_workers_first_heartbeat_is_recorded_at_once(host: Path,
                                                                  git_repo: Path) -> None:
    """An idle worker restarted by ``reconcile restart`` rings on its first heartbeat: the
    controller records it up then, not at its next resync (it lagged up to 10s)."""
    spec = write_spec(host, replicas=1, extra={"controller": {"enabled": True,
                                                              "interval": "1h"}})
    apply(spec)
    old = worker_pid(spec, "w-1")
    reconcile("restart", "w-1", "-f", str(spec), check=True)
    wait_for(lambda: replaced(spec, "w-1", old), timeout=30, message="w-1 restarted")
    wait_for(lambda: any(e["worker_id"] == "w-1" and "first heartbeat" in e["message"]
                         and e["at"] > restarted_at(spec)
                         for e in events(spec, "worker.health")),
             timeout=10, message="the controller to record the first heartbeat")


def restarted_at(spec: Path) -> float:
    return max(float(e["at"]) for e in events(spec, "worker.restarted")
               if e["worker_id"] == "w-1")


@pytest.mark.e2e
def test_a_task_wakes_an_idle_worker_and_its_end_wakes_the_controller(
        host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1, extra={"controller": {"enabled": True,
                                                              "interval": "1h"}})
    apply(spec)
    task = add_task(spec, "work [seconds=1]")
    wait_for(lambda: show_task(spec, task)["status"] == "succeeded", timeout=30,
             message="the task to be done")
    # the worker rang on claiming and on finishing: the controller recorded both then,
    # not at its next deadline (a heartbeat growing 15s old) or its resync (an hour)
    wait_for(lambda: [e["message"] for e in events(spec, "worker.health")
                      if e["worker_id"] == "w-1"][-2:] == [
        f"healthy → working: running task {task}", "working → healthy: task finished"],
        timeout=5, message="the controller to record the task's start and end")
